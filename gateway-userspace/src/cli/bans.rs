//! `gateway ban | unban | bans`: temporary or permanent bans, enforced in the kernel at once.

use std::time::Duration;

use super::paging::{PageArgs, Pager, print_more};
use crate::{
    api::{BANS_PATH, Ban, BanList, BanRequest, Done, UNBAN_PATH, UnbanRequest},
    control::Client,
};

pub async fn ban(client: &Client, cidr: &str, duration: Option<Duration>) -> anyhow::Result<()> {
    let request = BanRequest {
        cidr: cidr.to_owned(),
        duration_secs: duration.map(|duration| duration.as_secs_f64()),
        comment: None,
    };
    request
        .validate()
        .map_err(|invalid| super::refused(invalid, &[("duration_secs", "--for")]))?;
    let ban: Ban = client.post(BANS_PATH, &request).await?;
    match ban.expires_in_secs {
        Some(secs) => println!("banned {} for {}", ban.cidr, human(secs)),
        None => println!("banned {} until unbanned", ban.cidr),
    }
    Ok(())
}

pub async fn unban(client: &Client, cidr: &str) -> anyhow::Result<()> {
    let request = UnbanRequest {
        cidr: cidr.to_owned(),
    };
    request
        .validate()
        .map_err(|invalid| super::refused(invalid, &[]))?;
    let _: Done = client.post(UNBAN_PATH, &request).await?;
    println!("unbanned {cidr}");
    Ok(())
}

/// Prints the bans a page at a time, in address order: a table, or with `json` one ban
/// per line.
pub async fn list(client: &Client, json: bool, page: &PageArgs) -> anyhow::Result<()> {
    let mut pager = Pager::new(client, BANS_PATH, page)?;
    let mut first = true;
    while let Some(list) = pager.next::<BanList>().await? {
        if json {
            for ban in &list.bans {
                println!("{}", serde_json::to_string(ban)?);
            }
            continue;
        }
        if first {
            if list.bans.is_empty() {
                println!("no bans");
                return Ok(());
            }
            println!("{:<44} {:<16} REASON", "SOURCE", "EXPIRES IN");
            first = false;
        }
        for ban in &list.bans {
            let expires = ban
                .expires_in_secs
                .map_or_else(|| "never".to_owned(), human);
            let reason = ban.comment.as_deref().unwrap_or("-");
            println!("{:<44} {expires:<16} {reason}", ban.cidr);
        }
    }
    print_more(&pager, "gateway bans");
    Ok(())
}

/// Whole seconds, humanly: "9m 59s".
fn human(secs: f64) -> String {
    humantime::format_duration(Duration::from_secs(secs.ceil() as u64)).to_string()
}

//! `gateway firewall ...`: the operator's run-time allow and deny rules. They reach the
//! kernel at once and persist across restarts (the daemon's state file).

use std::{path::Path, time::Duration};

use anyhow::Context as _;

use crate::control::{
    Client,
    api::{
        Done, IMPORT_PATH, ImportRequest, ImportResult, REMOVE_RULE_PATH, RULES_PATH,
        RemoveRuleRequest, RuleAction, RuleEntry, RuleList, RuleRequest,
    },
};

pub async fn add(
    client: &Client,
    action: RuleAction,
    cidr: &str,
    ttl: Option<Duration>,
    comment: Option<String>,
) -> anyhow::Result<()> {
    let request = RuleRequest {
        cidr: cidr.to_owned(),
        action,
        comment,
        ttl_secs: ttl.map(|ttl| ttl.as_secs_f64()),
    };
    let rule: RuleEntry = client.post(RULES_PATH, &request).await?;
    match ttl {
        Some(ttl) => println!(
            "{} {} for {}",
            rule.action,
            rule.cidr,
            humantime::format_duration(ttl)
        ),
        None => println!("{} {}", rule.action, rule.cidr),
    }
    Ok(())
}

pub async fn remove(client: &Client, cidr: &str) -> anyhow::Result<()> {
    let request = RemoveRuleRequest {
        cidr: cidr.to_owned(),
    };
    let _: Done = client.post(REMOVE_RULE_PATH, &request).await?;
    println!("removed {cidr}");
    Ok(())
}

pub async fn import(
    client: &Client,
    action: RuleAction,
    file: &Path,
    comment: Option<String>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let request = ImportRequest {
        action,
        text,
        comment,
    };
    let result: ImportResult = client
        .post(IMPORT_PATH, &request)
        .await
        .with_context(|| format!("importing {}", file.display()))?;
    println!("imported {} rules from {}", result.imported, file.display());
    Ok(())
}

pub async fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let list: RuleList = client.get(RULES_PATH).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!("policy: {}", list.policy);
    println!(
        "{:<44} {:<6} {:<20} {:>12} {:>10}  COMMENT",
        "SOURCE", "ACTION", "ORIGIN", "HITS", "EXPIRES"
    );
    for rule in &list.rules {
        let origin = rule.key.clone().unwrap_or_else(|| rule.origin.clone());
        let hits = rule
            .hits
            .map_or_else(|| "-".to_owned(), |hits| hits.to_string());
        let expires = rule.expires_in_secs.map_or_else(
            || "never".to_owned(),
            |secs| humantime::format_duration(Duration::from_secs(secs.ceil() as u64)).to_string(),
        );
        println!(
            "{:<44} {:<6} {:<20} {:>12} {:>10}  {}",
            rule.cidr,
            rule.action,
            origin,
            hits,
            expires,
            rule.comment.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

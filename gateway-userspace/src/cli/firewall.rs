//! `gateway firewall ...`: the operator's run-time allow and deny rules. They reach the
//! kernel at once and persist across restarts (the daemon's state file).

use std::{path::Path, time::Duration};

use anyhow::Context as _;

use super::paging::{PageArgs, Pager, print_more};
use crate::{
    api::{
        Done, EXPLAIN_PATH, Explanation, IMPORT_LINES_TYPE, IMPORT_PATH, ImportResult,
        PROMOTE_PATH, RATE_LIMITS_PATH, RATE_LIMITS_RESET_PATH, REMOVE_RULE_PATH, RULES_PATH,
        RateLimits, RawLimits, RemoveRuleRequest, RuleAction, RuleEntry, RuleList, RuleRequest,
        import_lines::{ImportLines, ImportQuery, LinesError},
        valid,
    },
    control::Client,
};

pub async fn add(
    client: &Client,
    action: RuleAction,
    cidr: &str,
    ttl: Option<Duration>,
    comment: Option<String>,
    shadow: bool,
) -> anyhow::Result<()> {
    let request = RuleRequest {
        cidr: cidr.to_owned(),
        action,
        comment,
        ttl_secs: ttl.map(|ttl| ttl.as_secs_f64()),
        shadow,
    };
    request.validate().map_err(|invalid| {
        super::refused(
            invalid,
            &[
                ("ttl_secs", "--ttl"),
                ("comment", "--comment"),
                ("shadow", "--shadow"),
            ],
        )
    })?;
    let rule: RuleEntry = client.post(RULES_PATH, &request).await?;
    if rule.shadow {
        println!(
            "shadow {} (counts what it would drop; `gateway firewall promote {}` makes it drop)",
            rule.cidr, rule.cidr
        );
        return Ok(());
    }
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

pub async fn promote(client: &Client, cidr: &str) -> anyhow::Result<()> {
    let request = RemoveRuleRequest {
        cidr: cidr.to_owned(),
    };
    let _: Done = client.post(PROMOTE_PATH, &request).await?;
    println!("promoted {cidr}: it drops now");
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
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    // Checked here first: a bad line or comment is named before anything is sent, and the
    // count lets the daemon refuse an import that cannot fit before reading it.
    let refused = |invalid| super::refused(invalid, &[("comment", "--comment")]);
    let context = || format!("importing {}", file.display());
    valid::comment("comment", comment.as_deref())
        .map_err(refused)
        .with_context(context)?;
    let mut lines = ImportLines::new(usize::MAX);
    let counted = lines.push(&text).and_then(|()| lines.finish());
    let lines = match counted {
        Ok(nets) => nets.len(),
        Err(LinesError::Invalid(invalid)) => return Err(refused(invalid)).with_context(context),
        Err(LinesError::TooMany { most }) => {
            anyhow::bail!("{}: more than {most} networks", file.display())
        }
    };
    let query = ImportQuery {
        action,
        comment,
        lines: Some(lines),
    };
    let result: ImportResult = client
        .post_raw(
            &format!("{IMPORT_PATH}?{}", query.encode()),
            IMPORT_LINES_TYPE,
            text.into(),
        )
        .await
        .with_context(context)?;
    println!("imported {} rules from {}", result.imported, file.display());
    Ok(())
}

/// Prints the rules a page at a time: a table, or with `json` one rule per line.
pub async fn list(client: &Client, json: bool, page: &PageArgs) -> anyhow::Result<()> {
    let mut pager = Pager::new(client, RULES_PATH, page)?;
    let mut first = true;
    while let Some(list) = pager.next::<RuleList>().await? {
        if json {
            for rule in &list.rules {
                println!("{}", serde_json::to_string(rule)?);
            }
            continue;
        }
        if first {
            println!("policy: {}", list.policy);
            println!(
                "{:<44} {:<6} {:<20} {:>12} {:>10}  COMMENT",
                "SOURCE", "ACTION", "ORIGIN", "HITS", "EXPIRES"
            );
            first = false;
        }
        for rule in &list.rules {
            print_rule(rule);
        }
    }
    print_more(&pager, "gateway firewall list");
    Ok(())
}

fn print_rule(rule: &RuleEntry) {
    let origin = rule.key.clone().unwrap_or_else(|| rule.origin.clone());
    let hits = rule
        .hits
        .map_or_else(|| "-".to_owned(), |hits| hits.to_string());
    let expires = rule.expires_in_secs.map_or_else(
        || "never".to_owned(),
        |secs| humantime::format_duration(Duration::from_secs(secs.ceil() as u64)).to_string(),
    );
    let action = if rule.shadow { "shadow" } else { &rule.action };
    println!(
        "{:<44} {:<6} {:<20} {:>12} {:>10}  {}",
        rule.cidr,
        action,
        origin,
        hits,
        expires,
        rule.comment.as_deref().unwrap_or("")
    );
}

pub async fn explain(client: &Client, address: &str, json: bool) -> anyhow::Result<()> {
    let path = format!("{EXPLAIN_PATH}?address={address}");
    let explanation: Explanation = client.get(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&explanation)?);
        return Ok(());
    }
    let Explanation {
        address,
        verdict,
        reason,
        because,
        ban,
        rule,
        policy,
        protected_ports,
        rate,
        l7,
        known_good_expires_in_secs,
        under_attack,
    } = explanation;
    println!("{address}: {verdict} ({reason})");
    println!("  because: {because}");
    if let Some(ban) = ban {
        let left = ban.expires_in_secs.map_or_else(
            || "until unbanned".to_owned(),
            |secs| {
                let left = Duration::from_secs(secs.ceil() as u64);
                format!("{} left", humantime::format_duration(left))
            },
        );
        let why = ban
            .comment
            .map(|comment| format!(" ({comment})"))
            .unwrap_or_default();
        println!("  ban:     {}, {left}{why}", ban.cidr);
    }
    match rule {
        Some(rule) => println!(
            "  rule:    {} {} ({}){}",
            rule.cidr,
            rule.action,
            rule.key.unwrap_or(rule.origin),
            rule.comment
                .map(|comment| format!(": {comment}"))
                .unwrap_or_default()
        ),
        None => println!("  rule:    none matches"),
    }
    println!("  policy:  {policy}, {protected_ports}");
    if let Some(rate) = rate {
        let budget =
            |available: Option<u64>, burst: Option<u64>, what: &str| match (available, burst) {
                (Some(available), Some(burst)) => format!("{available} of {burst} {what}"),
                _ => format!("unlimited {what}"),
            };
        println!(
            "  rate:    class {}: {}, {} available{}",
            rate.class,
            budget(rate.packets_available, rate.packet_burst, "packets"),
            budget(rate.syns_available, rate.syn_burst, "SYNs"),
            if rate.tracked { "" } else { " (not seen yet)" }
        );
    }
    let known = match known_good_expires_in_secs {
        Some(secs) => format!(
            "known-good, {} left",
            humantime::format_duration(Duration::from_secs(secs.ceil() as u64))
        ),
        None => "not known-good".to_owned(),
    };
    let mode = if under_attack {
        "under-attack mode ON"
    } else {
        "under-attack mode off"
    };
    println!("  attack:  {mode}; {known}");
    if let Some(l7) = l7 {
        print_l7(&l7);
    }
    Ok(())
}

/// The defender's view of a source: trigger progress and its recent requests.
fn print_l7(l7: &crate::api::SourceView) {
    let never = if l7.never_ban {
        ", never banned (defend.never_ban)"
    } else {
        ""
    };
    println!("  l7:      counted as {}{never}", l7.counted_as);
    for progress in &l7.progress {
        println!("           {progress}");
    }
    if l7.recent.is_empty() {
        println!("  recent:  no requests seen");
        return;
    }
    println!("  recent:  (oldest first)");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    for decision in &l7.recent {
        let ago = Duration::from_secs((now - decision.at).max(0.0).round() as u64);
        let signals = if decision.signals.is_empty() {
            String::new()
        } else {
            format!(" [{}]", decision.signals.join(", "))
        };
        println!(
            "           {} ago {} {} route={} identity={}{signals}",
            humantime::format_duration(ago),
            decision.status,
            decision.path,
            decision.route.as_deref().unwrap_or("none"),
            decision.identity.as_deref().unwrap_or("none"),
        );
    }
}

pub async fn show_rate_limits(client: &Client, json: bool) -> anyhow::Result<()> {
    let limits: RateLimits = client.get(RATE_LIMITS_PATH).await?;
    print_rate_limits(&limits, json)
}

/// `limits: None` goes back to the config's default limits.
pub async fn set_rate_limits(client: &Client, limits: Option<RawLimits>) -> anyhow::Result<()> {
    let limits: RateLimits = match limits {
        Some(limits) => client.post(RATE_LIMITS_PATH, &limits).await?,
        None => client.post(RATE_LIMITS_RESET_PATH, &()).await?,
    };
    print_rate_limits(&limits, false)
}

fn print_rate_limits(limits: &RateLimits, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(limits)?);
        return Ok(());
    }
    let describe = |limits: &RawLimits| {
        let pair = |rate: Option<u64>, burst: Option<u64>, unit: &str| match (rate, burst) {
            (Some(rate), Some(burst)) => format!("{rate} {unit}/s (burst {burst})"),
            (Some(rate), None) => format!("{rate} {unit}/s"),
            _ => format!("unlimited {unit}"),
        };
        format!(
            "{}, {}, {}",
            pair(limits.packets_per_second, limits.burst, "packets"),
            pair(limits.bytes_per_second, limits.burst_bytes, "bytes"),
            pair(limits.syn_per_second, limits.syn_burst, "SYNs")
        )
    };
    println!(
        "default ({}): {}",
        limits.default_origin,
        describe(&limits.default)
    );
    for class in &limits.classes {
        println!(
            "class {} [{}]: {}",
            class.name,
            class.cidrs.join(", "),
            describe(&class.limits)
        );
    }
    Ok(())
}

//! `bench cluster -- --catch-up`: how long a node joining a cluster takes to catch up with
//! N rules and N/10 bans already in Redis (10k, 100k and 1M rules by default), with the
//! firewall's store alone (`xdp.mode = "off"`) and with the XDP maps written too (`skb` on a
//! veth). Each row is one real gateway started against a real redis-server, both in a
//! namespace made here; the time is the catch-up the gateway logs (`took_ms`, from the first
//! page read to the last batch applied), and the time from its start to filtering with
//! everything (which adds process start and the first connection to Redis).

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gateway::api::RuleAction;
use gateway::{api::replication::Change, cluster::events::Event};
use gateway_tests::{Gateway, NetNs, VethLink, redis::RedisServer};

/// How long one catch-up may take before the bench gives up on it.
const JOIN_TIMEOUT: Duration = Duration::from_secs(600);

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut sizes = vec![10_000usize, 100_000, 1_000_000];
    for (arg, value) in crate::options::pairs(args)? {
        match arg {
            "--sizes" => sizes = crate::options::sizes(value)?,
            _ => bail!("unknown option {arg} (catch-up takes --sizes N,N,...)"),
        }
    }
    let ns = NetNs::new("bcatch");
    let peer = NetNs::new("bcpeer");
    let link = VethLink::new(&ns, &peer, "bcatch");
    let redis = RedisServer::start(Some(&ns), "127.0.0.1", 6379);
    println!("catch-up of a joining node: N rules and N/10 bans in Redis, one gateway each row");
    println!(
        "{:>10} {:>10} {:<22} {:>12} {:>14} {:>14} {:>12}",
        "rules", "bans", "firewall", "catch-up s", "entries/s", "start->done s", "daemon CPU s"
    );
    for (round, &size) in sizes.iter().enumerate() {
        let prefix = format!("bench{}r{round}", std::process::id());
        let bans = size / 10;
        seed(&redis, &prefix, size, bans);
        for (name, xdp) in [
            ("store (xdp off)", "mode = \"off\""),
            (
                "store + XDP maps (skb)",
                &*format!("mode = \"skb\"\ninterfaces = [\"{}\"]", link.a.name),
            ),
        ] {
            let config = format!(
                "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{{dir}}/state.json\"\n\
                 [access_log]\nenabled = false\n\
                 [xdp]\n{xdp}\nmax_rules_v4 = {}\nmax_bans = {}\n\
                 [cluster]\nredis = \"{}\"\nnode = \"bench\"\nkey_prefix = \"{prefix}\"\n",
                size + 1_000,
                bans + 1_000,
                redis.url(),
            );
            let started = Instant::now();
            let gateway = Gateway::start(Some(&ns), &config);
            let line = wait_caught_up(&gateway)?;
            let joined = started.elapsed();
            // User + system, start to done: steadier than the wall clock on a shared machine.
            let cpu = crate::cpu::tree_cpu_seconds(gateway.pid());
            let applied = field(&line, "applied").context("no applied= in the log")?;
            let took = Duration::from_millis(field(&line, "took_ms").context("no took_ms=")?);
            if applied != (size + bans) as u64 {
                bail!(
                    "{name}: applied {applied} of {} entries:\n{line}",
                    size + bans
                );
            }
            println!(
                "{size:>10} {bans:>10} {name:<22} {:>12.2} {:>14.0} {:>14.2} {cpu:>12.2}",
                took.as_secs_f64(),
                applied as f64 / took.as_secs_f64().max(1e-3),
                joined.as_secs_f64()
            );
            drop(gateway);
        }
        redis.cli(&["FLUSHALL"]);
    }
    Ok(())
}

/// `rules` deny rules and `bans` permanent bans, as another node would have written them.
fn seed(redis: &RedisServer, prefix: &str, rules: usize, bans: usize) {
    let record = |key: &str, cidr: String, change: Change| {
        let event = Event {
            origin: "seed".to_owned(),
            change,
        };
        let text = serde_json::to_string(&event).expect("events serialize");
        vec!["HSET".to_owned(), key.to_owned(), cidr, text]
    };
    let (rules_key, bans_key) = (format!("{prefix}:rules"), format!("{prefix}:bans"));
    let address = |base: u32, n: usize| std::net::Ipv4Addr::from(base + n as u32).to_string();
    let rules = (0..rules).map(|n| {
        let cidr = format!("{}/32", address(0x0a00_0000, n));
        let change = Change::AddRule {
            cidr: cidr.clone(),
            action: RuleAction::Deny,
            comment: Some("blocklist".to_owned()),
            expires_at: None,
            shadow: false,
        };
        record(&rules_key, cidr, change)
    });
    let bans = (0..bans).map(|n| {
        let cidr = format!("{}/32", address(0x6440_0000, n));
        let change = Change::Ban {
            cidr: cidr.clone(),
            expires_at: None,
            comment: Some("auto".to_owned()),
        };
        record(&bans_key, cidr, change)
    });
    redis.pipe(rules.chain(bans));
}

/// The log line saying the gateway caught up (without terminal colours).
fn wait_caught_up(gateway: &Gateway) -> anyhow::Result<String> {
    let start = Instant::now();
    while start.elapsed() < JOIN_TIMEOUT {
        let log = plain(&gateway.log());
        if let Some(line) = log
            .lines()
            .find(|line| line.contains("caught up from Redis"))
        {
            return Ok(line.to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no catch-up within {JOIN_TIMEOUT:?}:\n{}", gateway.log())
}

/// `text` without ANSI escape sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            let _ = out.write_char(c);
        }
    }
    out
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

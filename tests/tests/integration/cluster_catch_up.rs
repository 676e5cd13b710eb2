//! Catch-up at scale: two real gateways (loopback, `xdp.mode = "off"`) and a real
//! redis-server. Node A holds tens of thousands of rules (an import) and bans (caught up from
//! the cluster, plus its own); node B joins and must end with exactly A's rules and bans,
//! while A keeps adding and removing both during B's catch-up. Expired entries in Redis are
//! applied nowhere and deleted.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    time::{Duration, Instant},
};

use gateway::{api::replication::Change, cluster::events::Event};
use gateway_tests::{
    Gateway,
    cluster_lab::wait_log,
    json_lines,
    redis::{RedisServer, redis_available},
};

const RULES: u32 = 50_000;
/// Bans another node ("seed") left in Redis: A and B both catch up with them.
const SEEDED_BANS: u32 = 20_000;
/// Of those, already expired (every 10th), and lifted by A during B's catch-up (every 7th
/// of the first 2,000 that are not expired).
fn seeded_expired(n: u32) -> bool {
    n % 10 == 3
}
fn lifted_during_catch_up(n: u32) -> bool {
    n < 2_000 && n.is_multiple_of(7) && !seeded_expired(n)
}
/// How long each step may take before the test fails (debug build, shared machine).
const STEP: Duration = Duration::from_secs(120);

/// The network of seeded ban `n`, written as the nodes write it (canonical).
fn seeded_ban(n: u32) -> String {
    let net: ipnet::IpNet = if n.is_multiple_of(5) {
        let address = std::net::Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(n) << 64));
        ipnet::Ipv6Net::new(address, 64).unwrap().into()
    } else {
        let address = std::net::Ipv4Addr::from(0xac10_0000 + n);
        ipnet::Ipv4Net::new(address, 32).unwrap().into()
    };
    net.to_string()
}

fn config(redis: &RedisServer, node: &str, prefix: &str) -> String {
    format!(
        "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{{dir}}/state.json\"\n\
         [xdp]\nmode = \"off\"\nmax_rules_v4 = 200000\nmax_rules_v6 = 1000\nmax_bans = 200000\n\
         [cluster]\nredis = \"{}\"\nnode = \"{node}\"\nkey_prefix = \"{prefix}\"\n",
        redis.url()
    )
}

fn ok(gateway: &Gateway, args: &[&str]) -> String {
    let output = gateway.cli(args);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "gateway {args:?}: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// Every operator rule as (cidr, action, shadow, comment).
fn rules(gateway: &Gateway) -> BTreeSet<String> {
    let list = json_lines(&ok(gateway, &["firewall", "list", "--json"]));
    list.as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule["origin"] == "operator")
        .map(|rule| {
            format!(
                "{} {} {} {}",
                rule["cidr"], rule["action"], rule["shadow"], rule["comment"]
            )
        })
        .collect()
}

/// Every ban as (cidr, comment, permanent or not).
fn bans(gateway: &Gateway) -> BTreeSet<String> {
    let list = json_lines(&ok(gateway, &["bans", "--json"]));
    list.as_array()
        .unwrap()
        .iter()
        .map(|ban| {
            format!(
                "{} {} {}",
                ban["cidr"],
                ban["comment"],
                ban["expires_in_secs"].is_null()
            )
        })
        .collect()
}

fn hash_len(redis: &RedisServer, key: &str) -> usize {
    redis.cli(&["HLEN", key]).parse().unwrap_or(0)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < STEP,
            "{what} did not happen within {STEP:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_joining_node_converges_to_the_same_rules_and_bans_while_changes_keep_coming() {
    let test = "a_joining_node_converges_to_the_same_rules_and_bans_while_changes_keep_coming";
    if !redis_available(test) {
        return;
    }
    let redis = RedisServer::on_loopback();
    let prefix = format!("catchup{}", std::process::id());
    let (bans_key, rules_key) = (format!("{prefix}:bans"), format!("{prefix}:rules"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    // Another node's bans, in Redis as it writes them: permanent, for an hour, expired.
    redis.pipe((0..SEEDED_BANS).map(|n| {
        let expires_at = match n % 10 {
            3 => Some(now - 60.0),
            0 | 5 => Some(now + 3600.0),
            _ => None,
        };
        let event = Event {
            origin: "seed".to_owned(),
            change: Change::Ban {
                cidr: seeded_ban(n),
                expires_at,
                comment: Some(format!("seed {}", n % 3)),
            },
        };
        let text = serde_json::to_string(&event).unwrap();
        vec!["HSET".into(), bans_key.clone(), seeded_ban(n), text]
    }));

    // A joins (catching up with the seeded bans), imports the rules and bans a few itself.
    let a = Gateway::start(None, &config(&redis, "node-a", &prefix));
    wait_log(&a, "caught up from Redis", STEP);
    let dir = tempfile::tempdir().unwrap();
    let mut list = String::new();
    for n in 0..RULES {
        let [_, x, y, z] = n.to_be_bytes();
        writeln!(list, "10.{x}.{y}.{z}").unwrap();
    }
    let file = dir.path().join("rules.txt");
    std::fs::write(&file, list).unwrap();
    let file = file.to_string_lossy();
    ok(
        &a,
        &[
            "firewall",
            "import",
            &file,
            "--action",
            "deny",
            "--comment",
            "blocklist",
        ],
    );
    for n in 0..20 {
        ok(&a, &["ban", &format!("198.18.0.{n}"), "--for", "2h"]);
    }
    ok(&a, &["firewall", "deny", "203.0.113.0/24", "--shadow"]);
    ok(&a, &["firewall", "allow", "192.0.2.0/28"]);
    // Everything A has is in Redis before B starts (pipelined publishing).
    let expected_bans = (SEEDED_BANS - SEEDED_BANS / 10) as usize + 20;
    wait_until("A's import reaching Redis", || {
        hash_len(&redis, &rules_key) == RULES as usize + 2
    });
    assert_eq!(bans(&a).len(), expected_bans);

    // B joins. While it catches up, A keeps changing: lifts seeded bans, bans more, adds,
    // promotes and removes rules.
    let b = Gateway::start(None, &config(&redis, "node-b", &prefix));
    let mut during = 0;
    let mut lifted = Vec::new();
    let mut changes = (0..2_000u32).filter(|&n| lifted_during_catch_up(n));
    let mut step = 0u32;
    let start = Instant::now();
    while step < 40 {
        assert!(start.elapsed() < STEP, "A's changes took too long");
        let caught_up = b.log().contains("caught up from Redis");
        match step % 4 {
            0 | 1 => {
                if let Some(n) = changes.next() {
                    ok(&a, &["unban", &seeded_ban(n)]);
                    lifted.push(seeded_ban(n));
                }
            }
            2 => {
                ok(&a, &["ban", &format!("198.19.0.{step}")]);
            }
            _ => {
                ok(&a, &["firewall", "deny", &format!("100.64.{step}.0/24")]);
                ok(&a, &["firewall", "remove", &format!("10.0.0.{step}")]);
            }
        }
        if !caught_up {
            during += 1;
        }
        step += 1;
    }
    ok(&a, &["firewall", "promote", "203.0.113.0/24"]);
    wait_log(&b, "caught up from Redis", STEP);
    let joined = b.log();
    let joined = joined
        .lines()
        .find(|line| line.contains("caught up from Redis"));
    eprintln!("B: {}", joined.unwrap_or_default());
    eprintln!(
        "{during} of 40 changes on A were made before B had caught up ({} lifted bans)",
        lifted.len()
    );

    // B ends with exactly A's rules and bans.
    let (rules_a, bans_a) = (rules(&a), bans(&a));
    // The import and two more; ten added and ten removed during B's catch-up.
    assert_eq!(rules_a.len(), RULES as usize + 2);
    let start = Instant::now();
    loop {
        let (rules_b, bans_b) = (rules(&b), bans(&b));
        if rules_b == rules_a && bans_b == bans_a {
            break;
        }
        assert!(
            start.elapsed() < STEP,
            "B never matched A: rules only at A {:?}, only at B {:?}; bans only at A {:?}, only \
             at B {:?}\nB's log:\n{}",
            rules_a.difference(&rules_b).take(5).collect::<Vec<_>>(),
            rules_b.difference(&rules_a).take(5).collect::<Vec<_>>(),
            bans_a.difference(&bans_b).take(5).collect::<Vec<_>>(),
            bans_b.difference(&bans_a).take(5).collect::<Vec<_>>(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Lifted during B's catch-up: lifted at both, and in Redis.
    for cidr in &lifted {
        assert!(
            !bans_a
                .iter()
                .any(|ban| ban.contains(&format!("\"{cidr}\"")))
        );
        assert_eq!(redis.cli(&["HEXISTS", &bans_key, cidr]), "0", "{cidr}");
    }
    assert!(
        rules_a
            .iter()
            .any(|rule| rule.starts_with("\"203.0.113.0/24\" \"deny\" false"))
    );
    // Expired entries were applied nowhere, and are gone from Redis.
    let expired = (0..SEEDED_BANS)
        .filter(|&n| seeded_expired(n))
        .map(seeded_ban);
    for cidr in expired.take(50) {
        assert_eq!(redis.cli(&["HEXISTS", &bans_key, &cidr]), "0", "{cidr}");
    }
    assert_eq!(
        bans_a.len(),
        expected_bans - lifted.len() + 10,
        "seeded, A's own, less the lifted, plus those banned during B's catch-up"
    );
}

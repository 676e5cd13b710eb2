//! Listings a page at a time: `gateway firewall list` and `gateway bans` with `--limit`,
//! `--after` and `--json` (one entry per line), streamed in pages when no limit is given, and
//! the admin API refusing a bad cursor or limit with a 400 that names it.

use std::{fmt::Write as _, process::Command};

use gateway_tests::{Gateway, json_lines};

/// XDP off: listings do not need the kernel (rules are kept, bans enforced at accept).
const CONFIG: &str = "[admin]\nsocket = \"{admin_socket}\"\nstate_file = \"{dir}/state.json\"\n\
                      [xdp]\nmode = \"off\"\n[firewall]\ndeny = [\"203.0.113.0/24\"]";

/// Imported rules: more than two of the CLI's 1000-entry pages.
const IMPORTED: u32 = 2_345;

struct Run {
    entries: Vec<String>,
    stderr: String,
}

/// `gateway args...`, asserting success; the `cidr` of each JSON line, and stderr.
fn listing(gateway: &Gateway, args: &[&str]) -> Run {
    let output = gateway.cli(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "gateway {args:?}: {stderr}");
    let entries = json_lines(&String::from_utf8_lossy(&output.stdout))
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["cidr"].as_str().expect("a cidr").to_owned())
        .collect();
    Run { entries, stderr }
}

/// The cursor a `--limit` run printed, if more follow.
fn cursor(run: &Run) -> Option<String> {
    let line = run
        .stderr
        .lines()
        .find(|line| line.starts_with("more follow: "))?;
    Some(line.rsplit(' ').next().unwrap().to_owned())
}

/// Follows the cursor from the start with pages of `limit`; every page but the last says
/// where to go on. Bounded by the number of entries.
fn walk(gateway: &Gateway, command: &[&str], limit: usize, total: usize) -> Vec<String> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..=total / limit + 1 {
        let limit_text = limit.to_string();
        let mut args: Vec<&str> = command.to_vec();
        args.extend(["--json", "--limit", &limit_text]);
        if let Some(after) = &after {
            args.extend(["--after", after]);
        }
        let run = listing(gateway, &args);
        assert!(
            run.entries.len() <= limit,
            "{} > {limit}",
            run.entries.len()
        );
        all.extend(run.entries.iter().cloned());
        match cursor(&run) {
            Some(next) => {
                assert_eq!(run.entries.len(), limit, "only a full page has a next one");
                assert_eq!(
                    Some(&next),
                    run.entries.last(),
                    "the cursor is the last entry"
                );
                after = Some(next);
            }
            None => return all,
        }
    }
    panic!("{command:?} --limit {limit} did not end after {total} entries");
}

fn rules_expected() -> Vec<String> {
    std::iter::once("203.0.113.0/24".to_owned())
        .chain((0..IMPORTED).map(|n| format!("10.1.{}.{}/32", n / 256, n % 256)))
        .collect()
}

fn start_with_rules() -> (Gateway, tempfile::TempDir) {
    let gateway = Gateway::start(None, CONFIG);
    let dir = tempfile::tempdir().unwrap();
    let mut list = String::new();
    for n in 0..IMPORTED {
        writeln!(list, "10.1.{}.{}", n / 256, n % 256).unwrap();
    }
    let file = dir.path().join("list.txt");
    std::fs::write(&file, list).unwrap();
    let output = gateway.cli(&[
        "firewall",
        "import",
        file.to_str().unwrap(),
        "--action",
        "deny",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (gateway, dir)
}

#[test]
fn rules_list_in_pages_in_order_to_the_last_page() {
    let (gateway, _dir) = start_with_rules();
    let expected = rules_expected();
    let total = expected.len();

    // No limit: every rule, in order, streamed page by page; nothing more to follow.
    let all = listing(&gateway, &["firewall", "list", "--json"]);
    assert_eq!(all.entries, expected);
    assert_eq!(cursor(&all), None, "{}", all.stderr);

    // Following the cursor gives the same listing, whatever the page size.
    for limit in [1, 7, 999, 1000, 1001, total - 1, total, total + 5, 20_000] {
        if limit == 1 {
            // A page of one, a few steps only (bounded).
            let first = listing(&gateway, &["firewall", "list", "--json", "--limit", "1"]);
            assert_eq!(first.entries, expected[..1]);
            assert_eq!(cursor(&first).as_deref(), Some(expected[0].as_str()));
            continue;
        }
        assert_eq!(
            walk(&gateway, &["firewall", "list"], limit, total),
            expected,
            "--limit {limit}"
        );
    }

    // From the middle, and the last page: what is left, with no cursor.
    let after = &expected[total - 3];
    let tail = listing(
        &gateway,
        &[
            "firewall", "list", "--json", "--after", after, "--limit", "10",
        ],
    );
    assert_eq!(tail.entries, expected[total - 2..]);
    assert_eq!(cursor(&tail), None);
    let past_the_end = listing(
        &gateway,
        &[
            "firewall",
            "list",
            "--json",
            "--after",
            &expected[total - 1],
        ],
    );
    assert!(past_the_end.entries.is_empty());
    // An address for a cursor means its /32, as everywhere else.
    let short = listing(
        &gateway,
        &[
            "firewall", "list", "--json", "--after", "10.1.0.4", "--limit", "2",
        ],
    );
    assert_eq!(short.entries, ["10.1.0.5/32", "10.1.0.6/32"]);

    // The table pages too: the policy and the header once, then rows.
    let output = gateway.cli(&["firewall", "list", "--limit", "1500"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(table.matches("policy:").count(), 1, "{table}");
    assert_eq!(table.matches("SOURCE").count(), 1);
    assert_eq!(table.lines().count(), 2 + 1500);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!(
            "more follow: gateway firewall list --after {}",
            expected[1499]
        )),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn bans_list_in_pages_in_address_order() {
    let gateway = Gateway::start(None, CONFIG);
    // Banned out of order: listed in address order, IPv4 first.
    let mut addresses: Vec<String> = (0..23u32)
        .map(|n| format!("198.51.100.{}", (n * 37) % 250 + 1))
        .chain((1..=4u32).map(|n| format!("2001:db8::{n:x}")))
        .collect();
    for address in &addresses {
        let output = gateway.cli(&["ban", address, "--for", "1h"]);
        assert!(output.status.success(), "ban {address}");
    }
    addresses.sort_by_key(|address| address.parse::<std::net::IpAddr>().unwrap());
    let expected: Vec<String> = addresses
        .iter()
        .map(|address| {
            let len = if address.contains(':') { 128 } else { 32 };
            format!("{address}/{len}")
        })
        .collect();

    let all = listing(&gateway, &["bans", "--json"]);
    assert_eq!(all.entries, expected);
    for limit in [2, 5, 26, 27, 28, 1000] {
        assert_eq!(
            walk(&gateway, &["bans"], limit, expected.len()),
            expected,
            "--limit {limit}"
        );
    }
    let output = gateway.cli(&["bans", "--limit", "3"]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert_eq!(table.lines().count(), 1 + 3, "{table}");
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!(
        "more follow: gateway bans --after {}",
        expected[2]
    )));
}

/// `GET path` on the admin socket with real curl: (status, body).
fn curl(gateway: &Gateway, path: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(gateway.socket())
        .arg(format!("http://localhost{path}"))
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("a status line");
    (status.trim().parse().expect("a status"), body.to_owned())
}

#[test]
fn a_bad_cursor_or_limit_is_a_400_that_names_it() {
    let gateway = Gateway::start(None, CONFIG);
    for path in ["/v1/rules", "/v1/bans"] {
        for (query, field) in [
            ("after=bogus", "after"),
            ("after=10.0.0.300", "after"),
            ("after=10.0.0.0/33", "after"),
            ("after=fd00::/129", "after"),
            ("after=", "after"),
            ("after=%ZZ", "after"),
            ("after=10.0.0.1%00", "after"),
            ("limit=5&after=10.0.0.1/x", "after"),
            ("limit=0", "limit"),
            ("limit=-1", "limit"),
            ("limit=abc", "limit"),
            ("limit=10001", "limit"),
            ("limit=99999999999999999999999", "limit"),
        ] {
            let (status, body) = curl(&gateway, &format!("{path}?{query}"));
            assert_eq!(status, 400, "{path}?{query}: {body}");
            assert!(body.contains(field), "{path}?{query}: {body}");
        }
    }
    // The CLI says the same, and refuses --limit 0 itself.
    for args in [
        &["firewall", "list", "--after", "bogus"][..],
        &["bans", "--after", "10.0.0.300"],
    ] {
        let output = gateway.cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains("after"), "{args:?}: {stderr}");
    }
    for args in [
        &["firewall", "list", "--limit", "0"][..],
        &["bans", "--limit", "0"],
    ] {
        let output = gateway.cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains("--limit"), "{args:?}: {stderr}");
    }
    // A cursor that was a rule once, now removed: told to list from the start.
    let output = gateway.cli(&["firewall", "list", "--after", "192.0.2.1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("list from the start"), "{stderr}");
}

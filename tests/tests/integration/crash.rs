//! `kill -9` of the daemon in the middle of firewall changes: after a restart every change
//! the CLI saw acknowledged is there (listing, explain, and the kernel, by sending packets),
//! and nothing half-done is visible: an import is all or nothing.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{gateway_bin, lab::*};

/// Longest a CLI call may take once the daemon is gone or done.
const CLI_WAIT: Duration = Duration::from_secs(30);

/// `gateway args...` against `socket`, started, not waited for.
fn spawn_cli(socket: &Path, args: &[&str]) -> Child {
    Command::new(gateway_bin())
        .args(args)
        .env("GATEWAY_SOCKET", socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning the gateway CLI")
}

/// Waits (bounded) for a CLI call; true if it exited successfully: the change was
/// acknowledged.
fn acknowledged(mut child: Child) -> bool {
    let deadline = Instant::now() + CLI_WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for the CLI") {
            return status.success();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a CLI call did not return within {CLI_WAIT:?} of the daemon's death");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn cli_json(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let output = lab.gateway().cli(args);
    assert!(
        output.status.success(),
        "gateway {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

/// A listing printed as JSON lines.
fn lines(lab: &Lab, args: &[&str]) -> Vec<serde_json::Value> {
    let output = lab.gateway().cli(args);
    assert!(
        output.status.success(),
        "gateway {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    match gateway_tests::json_lines(&String::from_utf8_lossy(&output.stdout)) {
        serde_json::Value::Array(entries) => entries,
        _ => unreachable!("json_lines gives an array"),
    }
}

/// SIGKILL of the daemon's own process (never by name): nothing of its shutdown runs.
fn kill_daemon(lab: &mut Lab) {
    lab.gateway.take().expect("a running daemon").kill();
}

#[test]
fn an_import_killed_midway_is_all_or_nothing_after_restart() {
    let Some(mut lab) = Lab::new("crashimp") else {
        return;
    };
    let config = "deny = [\"203.0.113.0/24\"]";
    let dir = tempfile::tempdir().unwrap();
    // The denied client address comes last: if any of the import reached the kernel
    // after the restart, all of it did, and this line with it.
    const LINES: u32 = 30_000;
    let mut list = String::new();
    for n in 0..LINES - 1 {
        let [_, a, b, c] = n.to_be_bytes();
        writeln!(list, "10.{}.{b}.{c}", 100 + a).unwrap();
    }
    writeln!(list, "{DENIED_V4}").unwrap();
    let file = dir.path().join("list.txt");
    std::fs::write(&file, &list).unwrap();
    let file = file.to_str().unwrap().to_owned();

    // Kill at several points: before the request is read, while it is parsed or
    // committed, while the maps fill, and (`None`) right after it answered, so one round
    // commits however slow the machine is.
    let mut outcomes = Vec::new();
    for delay_ms in [
        Some(0u64),
        Some(40),
        Some(150),
        Some(400),
        Some(700),
        Some(1000),
        None,
    ] {
        lab.start(config);
        let socket: PathBuf = lab.gateway().socket().to_owned();
        let import = spawn_cli(&socket, &["firewall", "import", &file, "--action", "deny"]);
        let acked = match delay_ms {
            Some(delay_ms) => {
                thread::sleep(Duration::from_millis(delay_ms));
                kill_daemon(&mut lab);
                acknowledged(import)
            }
            None => {
                let acked = acknowledged(import);
                kill_daemon(&mut lab);
                assert!(acked, "an import left to finish was not acknowledged");
                acked
            }
        };

        lab.start(config);
        let rules = lines(&lab, &["firewall", "list", "--json"]).len();
        let imported = match rules {
            1 => false,
            n if n == 1 + LINES as usize => true,
            n => panic!(
                "after a kill {delay_ms:?} ms into an import, {n} rules are listed: half an import"
            ),
        };
        assert!(
            imported || !acked,
            "the import was acknowledged but is gone after the restart"
        );
        let explained = cli_json(&lab, &["firewall", "explain", DENIED_V4, "--json"]);
        assert_eq!(
            explained["verdict"],
            if imported { "drop" } else { "pass" },
            "{explained}"
        );
        // The kernel agrees with the listing: the last line drops, or nothing does.
        let receiver = lab.udp_receiver(SERVER_V4, 5000);
        let arrived = lab.udp_exchange(&receiver, (DENIED_V4, 1), (ALLOWED_V4, 1));
        let expected: Vec<IpAddr> = if imported {
            vec![ip(ALLOWED_V4)]
        } else {
            vec![ip(DENIED_V4), ip(ALLOWED_V4)]
        };
        assert_eq!(arrived, expected, "imported: {imported}");
        drop(receiver);
        outcomes.push((delay_ms, acked, imported));

        // The next round starts from an empty store.
        drop(lab.gateway.take());
        std::fs::remove_file(lab.store_file()).unwrap();
    }
    eprintln!("(delay ms, acknowledged, imported): {outcomes:?}");
    assert!(
        outcomes.iter().any(|&(_, _, imported)| imported),
        "no round got as far as committing the import: {outcomes:?}"
    );
}

#[test]
fn a_burst_of_bans_killed_midway_keeps_every_acknowledged_ban() {
    let Some(mut lab) = Lab::new("crashban") else {
        return;
    };
    lab.start("");
    let socket: PathBuf = lab.gateway().socket().to_owned();
    // The denied client first, then as many documentation addresses as fit before the kill.
    let targets: Vec<String> = std::iter::once(DENIED_V4.to_owned())
        .chain((1..=250u32).map(|n| format!("192.0.2.{n}")))
        .chain((0..2000u32).map(|n| format!("198.51.{}.{}", n / 250, n % 250 + 1)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let burst = {
        let stop = stop.clone();
        let targets = targets.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut acked = Vec::new();
            let mut sent = Vec::new();
            for target in targets.iter().take(2000) {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                sent.push(target.clone());
                if acknowledged(spawn_cli(&socket, &["ban", target, "--for", "1h"])) {
                    acked.push(target.clone());
                } else {
                    break;
                }
            }
            (sent, acked)
        })
    };
    // Let a good number of bans through, then kill during the burst.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !burst.is_finished() && Instant::now() < deadline {
        let listed = lab.gateway().cli(&["bans", "--json"]);
        let count = String::from_utf8_lossy(&listed.stdout).lines().count();
        if count >= 20 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    kill_daemon(&mut lab);
    stop.store(true, Ordering::Relaxed);
    let (sent, acked) = burst.join().expect("the burst thread");
    assert!(
        acked.len() >= 20,
        "only {} bans acknowledged before the kill",
        acked.len()
    );

    lab.start("");
    let bans = lines(&lab, &["bans", "--json"]);
    let listed: Vec<String> = bans
        .iter()
        .map(|ban| {
            ban["cidr"]
                .as_str()
                .unwrap()
                .trim_end_matches("/32")
                .to_owned()
        })
        .collect();
    for ban in &acked {
        assert!(
            listed.contains(ban),
            "{ban} was acknowledged but is gone after the kill"
        );
    }
    for ban in &listed {
        assert!(sent.contains(ban), "{ban} is banned but was never sent");
    }
    assert!(
        listed.len() <= acked.len() + 1,
        "at most the one call in flight may have landed unacknowledged: {} listed, {} acknowledged",
        listed.len(),
        acked.len()
    );
    // Every acknowledged ban keeps its expiry, and the kernel drops the first one.
    for ban in &bans {
        let left = ban["expires_in_secs"].as_f64().expect("a 1 h ban");
        assert!(left > 3000.0 && left <= 3600.0, "{ban}");
    }
    let last = acked.last().unwrap();
    let explained = cli_json(&lab, &["firewall", "explain", last, "--json"]);
    assert_eq!(explained["reason"], "dropped-banned", "{explained}");
    let receiver = lab.udp_receiver(SERVER_V4, 5000);
    assert_eq!(
        lab.udp_exchange(&receiver, (DENIED_V4, 2), (ALLOWED_V4, 1)),
        [ip(ALLOWED_V4)]
    );
    assert_eq!(lab.count("dropped-banned").0, 2);
}

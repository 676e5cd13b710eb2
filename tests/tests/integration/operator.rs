//! The operator's run-time firewall: rules and bans added through the CLI reach the kernel at
//! once, persist in the state file, and come back after a restart; imports are all or nothing.

use std::{
    fmt::Write as _,
    net::IpAddr,
    process::Output,
    time::{Duration, Instant},
};

use gateway_tests::{gateway_cmd, lab::*};

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs the CLI against the lab's gateway and returns its output, asserting success.
fn ok(lab: &Lab, args: &[&str]) -> String {
    let output = lab.gateway().cli(args);
    assert!(
        output.status.success(),
        "gateway {args:?}: {}",
        output_text(&output)
    );
    output_text(&output)
}

/// Runs the CLI expecting failure; returns its output.
fn fails(lab: &Lab, args: &[&str]) -> String {
    let output = lab.gateway().cli(args);
    assert!(
        !output.status.success(),
        "gateway {args:?} should fail: {}",
        output_text(&output)
    );
    output_text(&output)
}

/// `gateway firewall list --json` (one rule per line) as `{"rules": [...]}`.
fn rules(lab: &Lab) -> serde_json::Value {
    serde_json::json!({
        "rules": gateway_tests::json_lines(&ok(lab, &["firewall", "list", "--json"]))
    })
}

#[test]
fn operator_rules_and_bans_reach_the_kernel_and_survive_a_restart() {
    let Some(mut lab) = Lab::new("operator") else {
        return;
    };
    let config = "deny = [\"203.0.113.0/24\"]";
    lab.start(config);
    let receiver = lab.udp_receiver(SERVER_V4, 5000);
    let receiver6 = lab.udp_receiver(SERVER_V6, 5000);

    assert_eq!(
        ok(
            &lab,
            &["firewall", "deny", DENIED_V4, "--comment", "scanner"]
        )
        .trim(),
        format!("deny {DENIED_V4}/32")
    );
    assert_eq!(
        lab.udp_exchange(&receiver, (DENIED_V4, 2), (ALLOWED_V4, 0)),
        Vec::<IpAddr>::new()
    );
    assert_eq!(lab.count("dropped-deny").0, 2);
    ok(&lab, &["ban", DENIED_V6]);
    ok(&lab, &["ban", "192.0.2.9", "--for", "1h"]);
    ok(
        &lab,
        &["firewall", "deny", "198.51.100.0/24", "--ttl", "1h"],
    );

    let listing = rules(&lab);
    let rules_list = listing["rules"].as_array().unwrap();
    assert_eq!(rules_list.len(), 3, "{listing}");
    assert_eq!(rules_list[0]["origin"], "config");
    assert_eq!(rules_list[0]["key"], "firewall.deny[0]");
    assert_eq!(rules_list[1]["cidr"], format!("{DENIED_V4}/32"));
    assert_eq!(rules_list[1]["origin"], "operator");
    assert_eq!(rules_list[1]["comment"], "scanner");
    assert_eq!(rules_list[1]["hits"], 2);
    let table = ok(&lab, &["firewall", "list"]);
    assert!(
        table.contains("firewall.deny[0]") && table.contains("scanner"),
        "{table}"
    );

    // The store holds them (no JSON state file any more).
    assert!(lab.store_file().exists());
    assert!(!lab.state_file().exists());

    // Restart: everything the operator added is back, in the kernel too.
    lab.start(config);
    let listing = rules(&lab);
    assert_eq!(listing["rules"].as_array().unwrap().len(), 3, "{listing}");
    assert_eq!(
        listing["rules"][1]["hits"], 0,
        "counters start over with the program"
    );
    assert!(
        lab.gateway()
            .log()
            .contains("operator rules and bans restored"),
        "{}",
        lab.gateway().log()
    );
    assert_eq!(
        lab.udp_exchange(&receiver, (DENIED_V4, 1), (ALLOWED_V4, 0)),
        Vec::<IpAddr>::new()
    );
    assert_eq!(
        lab.udp_exchange(&receiver6, (DENIED_V6, 1), (ALLOWED_V6, 0)),
        Vec::<IpAddr>::new()
    );
    assert_eq!(lab.count("dropped-banned").0, 1);
    let bans = gateway_tests::json_lines(&ok(&lab, &["bans", "--json"]));
    let bans = bans.as_array().unwrap();
    assert_eq!(bans.len(), 2);
    let left = bans[0]["expires_in_secs"]
        .as_f64()
        .expect("the 1 h ban keeps its expiry");
    assert!(left > 3000.0 && left <= 3600.0, "{left}");

    // Removing and unbanning are saved too.
    ok(&lab, &["firewall", "remove", DENIED_V4]);
    ok(&lab, &["unban", DENIED_V6]);
    lab.start(config);
    assert_eq!(rules(&lab)["rules"].as_array().unwrap().len(), 2);
    assert_eq!(
        lab.udp_exchange(&receiver, (DENIED_V4, 1), (ALLOWED_V4, 0)),
        [ip(DENIED_V4)]
    );
    assert_eq!(
        lab.udp_exchange(&receiver6, (DENIED_V6, 1), (ALLOWED_V6, 0)),
        [ip(DENIED_V6)]
    );
}

#[test]
fn rules_with_a_ttl_expire() {
    let Some(mut lab) = Lab::new("ttl") else {
        return;
    };
    lab.start("");
    let receiver = lab.udp_receiver(SERVER_V4, 5000);
    assert_eq!(
        ok(&lab, &["firewall", "deny", DENIED_V4, "--ttl", "1s"]).trim(),
        format!("deny {DENIED_V4}/32 for 1s")
    );
    assert_eq!(
        lab.udp_exchange(&receiver, (DENIED_V4, 1), (ALLOWED_V4, 0)),
        Vec::<IpAddr>::new()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab
        .udp_exchange(&receiver, (DENIED_V4, 1), (ALLOWED_V4, 0))
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the 1 s rule never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(rules(&lab)["rules"].as_array().unwrap().len(), 0);
    assert!(lab.gateway().log().contains("operator rule expired"));
}

#[test]
fn imports_are_all_or_nothing_and_errors_say_what_to_do() {
    let Some(mut lab) = Lab::new("import") else {
        return;
    };
    lab.start("deny = [\"203.0.113.0/24\"]");
    let dir = tempfile::tempdir().unwrap();

    // 99,999 addresses plus the config's rule fill the default 100,000-rule map exactly.
    let mut list = String::from("# a blocklist\n\n");
    for n in 0..99_998u32 {
        let [_, a, b, c] = n.to_be_bytes();
        writeln!(list, "10.{a}.{b}.{c}").unwrap();
    }
    writeln!(list, "{DENIED_V4}").unwrap();
    let big = dir.path().join("big.txt");
    std::fs::write(&big, &list).unwrap();
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, "192.0.2.1\n192.0.2.2 # fine\n192.0.2.300\n").unwrap();
    let one_more = dir.path().join("one.txt");
    std::fs::write(&one_more, "192.0.2.1\n").unwrap();

    let error = fails(
        &lab,
        &[
            "firewall",
            "import",
            bad.to_str().unwrap(),
            "--action",
            "deny",
        ],
    );
    assert!(
        error.contains("line 3: \"192.0.2.300\" is not an IP address or CIDR"),
        "{error}"
    );
    assert!(error.contains("nothing was imported"), "{error}");
    assert_eq!(rules(&lab)["rules"].as_array().unwrap().len(), 1);

    let imported = ok(
        &lab,
        &[
            "firewall",
            "import",
            big.to_str().unwrap(),
            "--action",
            "deny",
            "--comment",
            "blocklist",
        ],
    );
    assert!(imported.contains("imported 99999 rules"), "{imported}");
    let receiver = lab.udp_receiver(SERVER_V4, 5000);
    assert_eq!(
        lab.udp_exchange(&receiver, (DENIED_V4, 1), (ALLOWED_V4, 0)),
        Vec::<IpAddr>::new()
    );

    let full = fails(
        &lab,
        &[
            "firewall",
            "import",
            one_more.to_str().unwrap(),
            "--action",
            "deny",
        ],
    );
    assert!(
        full.contains("do not fit the maps") && full.contains("raise"),
        "{full}"
    );
    assert_eq!(rules(&lab)["rules"].as_array().unwrap().len(), 100_000);

    // Errors an operator can meet.
    let config_rule = fails(&lab, &["firewall", "remove", "203.0.113.0/24"]);
    assert!(
        config_rule
            .contains("comes from the config file (firewall.deny[0]): edit the file and reload"),
        "{config_rule}"
    );
    let duplicate = fails(&lab, &["firewall", "deny", "10.0.0.7"]);
    assert!(
        duplicate.contains("10.0.0.7/32 is already in an operator rule"),
        "{duplicate}"
    );
    let unknown = fails(&lab, &["firewall", "remove", "192.0.2.77"]);
    assert!(
        unknown.contains("no operator rule for 192.0.2.77/32"),
        "{unknown}"
    );
    let bad_ttl = fails(
        &lab,
        &["firewall", "deny", "192.0.2.78", "--ttl", "tomorrow"],
    );
    assert!(bad_ttl.contains("--ttl"), "{bad_ttl}");
    let missing = fails(
        &lab,
        &[
            "firewall",
            "import",
            "/nonexistent/list.txt",
            "--action",
            "deny",
        ],
    );
    assert!(
        missing.contains("reading /nonexistent/list.txt"),
        "{missing}"
    );
}

#[test]
fn a_corrupt_state_file_stops_the_start() {
    let Some(mut lab) = Lab::new("corrupt") else {
        return;
    };
    std::fs::write(lab.state_file(), "{\"version\": 1, \"rules\": [").unwrap();
    let config = format!(
        "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{}\"\n[xdp]\nmode = \"native\"\ninterfaces = [\"{}\"]",
        lab.state_file().display(),
        lab.link.a.name
    );
    let log = gateway_tests::run_expect_failure(Some(&lab.server), &config);
    assert!(
        log.contains("is not valid: fix it or move it away"),
        "{log}"
    );
    std::fs::remove_file(lab.state_file()).unwrap();
    lab.start("");
}

#[test]
fn a_damaged_store_stops_the_start_naming_the_file_and_the_way_out() {
    let Some(mut lab) = Lab::new("damaged") else {
        return;
    };
    lab.start("");
    for (cidr, _) in (0..50).map(|index| (format!("10.9.{index}.0/24"), ())) {
        lab.gateway().cli(&["firewall", "deny", &cidr]);
    }
    drop(lab.gateway.take());
    let pristine = std::fs::read(lab.store_file()).unwrap();
    let config = format!(
        "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{}\"\n[xdp]\nmode = \"native\"\ninterfaces = [\"{}\"]",
        lab.state_file().display(),
        lab.link.a.name
    );
    // Garbage over the head, and zeros over the whole: both refused.
    let mut garbage = pristine.clone();
    garbage[..4096.min(pristine.len())].fill(0x5a);
    for damaged in [garbage, vec![0; pristine.len()]] {
        std::fs::write(lab.store_file(), &damaged).unwrap();
        let log = gateway_tests::run_expect_failure(Some(&lab.server), &config);
        let path = lab.store_file().display().to_string();
        assert!(
            log.contains(&format!("the firewall store {path} is damaged")),
            "{log}"
        );
        assert!(log.contains("move it away"), "{log}");
    }
    // Moved away: it starts empty.
    std::fs::remove_file(lab.store_file()).unwrap();
    lab.start("");
}

#[test]
fn completions_and_help() {
    let bash = gateway_cmd(&["completions", "bash"]);
    assert!(bash.status.success());
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(
        script.contains("_gateway") && script.contains("firewall"),
        "{script}"
    );
    let help = gateway_cmd(&["firewall", "--help"]);
    let help = output_text(&help);
    for command in ["allow", "deny", "remove", "list", "import"] {
        assert!(help.contains(command), "{command}: {help}");
    }
    let daemon_down = gateway_cmd(&["firewall", "list", "--socket", "/nonexistent/admin.sock"]);
    assert!(output_text(&daemon_down).contains("the gateway daemon is not running"));
}

#[test]
fn explain_says_what_the_kernel_does_and_why() {
    let Some(mut lab) = Lab::new("explain") else {
        return;
    };
    lab.start(&format!(
        "deny = [\"{DENIED_V4}\"]\n[firewall.rate_limit]\npackets_per_second = 1\nburst = 5\n\
         [[firewall.rate_limit.classes]]\nname = \"partners\"\ncidrs = [\"{ALLOWED_V4}\"]\n\
         packets_per_second = 1\nburst = 50"
    ));
    let explain = |address: &str| -> serde_json::Value {
        serde_json::from_str(&ok(&lab, &["firewall", "explain", address, "--json"])).unwrap()
    };

    let denied = explain(DENIED_V4);
    assert_eq!(denied["verdict"], "drop");
    assert_eq!(denied["reason"], "dropped-deny");
    assert_eq!(denied["rule"]["key"], "firewall.deny[0]");
    let text = ok(&lab, &["firewall", "explain", DENIED_V4]);
    assert!(
        text.contains("the most specific rule denies it: 10.99.0.3/32 (firewall.deny[0])"),
        "{text}"
    );

    ok(&lab, &["ban", DENIED_V4, "--for", "10m"]);
    let banned = explain(DENIED_V4);
    assert_eq!(banned["reason"], "dropped-banned");
    let left = banned["ban"]["expires_in_secs"].as_f64().unwrap();
    assert!(left > 590.0 && left <= 600.0, "{left}");

    // A rate-limited source: its class and how much of its burst is left.
    let fresh = explain(ALLOWED_V4);
    assert_eq!(fresh["verdict"], "pass");
    assert_eq!(fresh["rate"]["class"], "partners");
    assert_eq!(fresh["rate"]["packets_available"], 50);
    assert_eq!(fresh["rate"]["tracked"], false);
    let receiver = lab.udp_receiver(SERVER_V4, 5000);
    lab.udp_exchange(&receiver, (ALLOWED_V4, 3), (ALLOWED_V4, 0));
    let used = explain(ALLOWED_V4);
    assert_eq!(used["rate"]["tracked"], true);
    // Four packets spent (three and the sentinel); at most a token or two refilled since.
    let available = used["rate"]["packets_available"].as_u64().unwrap();
    assert!((46..=48).contains(&available), "{used}");

    let clean = explain("10.99.0.77");
    assert_eq!(clean["reason"], "passed");
    assert_eq!(
        clean["because"],
        "no rule matches and the policy is deny-list"
    );
    assert_eq!(clean["rate"]["class"], "default");
    assert_eq!(clean["rate"]["packet_burst"], 5);

    let bad = fails(&lab, &["firewall", "explain", "10.99.0.300"]);
    assert!(
        bad.contains("\"10.99.0.300\" is not an IP address"),
        "{bad}"
    );
}

#[test]
fn shadow_rules_count_then_promote_makes_them_drop() {
    let Some(mut lab) = Lab::new("shadow") else {
        return;
    };
    lab.start("");
    let receiver = lab.udp_receiver(SERVER_V4, 5000);
    let added = ok(&lab, &["firewall", "deny", DENIED_V4, "--shadow"]);
    assert!(added.contains("shadow 10.99.0.3/32"), "{added}");
    assert_eq!(
        lab.udp_exchange(&receiver, (DENIED_V4, 4), (ALLOWED_V4, 0)),
        vec![ip(DENIED_V4); 4]
    );
    let listing = rules(&lab);
    assert_eq!(listing["rules"][0]["shadow"], true);
    assert_eq!(
        listing["rules"][0]["hits"], 4,
        "counted what it would drop: {listing}"
    );
    assert!(ok(&lab, &["firewall", "list"]).contains("shadow"));
    let explained = ok(&lab, &["firewall", "explain", DENIED_V4]);
    assert!(
        explained.contains("shadow rule 10.99.0.3/32 would deny it"),
        "{explained}"
    );
    let shadow_allow = fails(&lab, &["firewall", "allow", ALLOWED_V4, "--shadow"]);
    assert!(
        shadow_allow.contains("only deny rules can be shadow"),
        "{shadow_allow}"
    );

    ok(&lab, &["firewall", "promote", DENIED_V4]);
    assert_eq!(
        lab.udp_exchange(&receiver, (DENIED_V4, 2), (ALLOWED_V4, 0)),
        Vec::<IpAddr>::new()
    );
    assert_eq!(lab.count("dropped-deny").0, 2);
    let again = fails(&lab, &["firewall", "promote", DENIED_V4]);
    assert!(again.contains("is not a shadow rule"), "{again}");
    // Persisted as promoted.
    lab.start("");
    assert_eq!(rules(&lab)["rules"][0]["shadow"], false);
}

#[test]
fn rate_limits_set_at_run_time_apply_at_once_and_persist() {
    let Some(mut lab) = Lab::new("ratelimit") else {
        return;
    };
    lab.start("");
    assert!(ok(&lab, &["firewall", "rate-limit", "show"]).contains("default (off)"));
    let set = ok(
        &lab,
        &[
            "firewall",
            "rate-limit",
            "set",
            "--packets-per-second",
            "1",
            "--burst",
            "3",
        ],
    );
    assert!(
        set.contains("default (operator): 1 packets/s (burst 3)"),
        "{set}"
    );
    let receiver = lab.udp_receiver(SERVER_V4, 5000);
    let arrived = lab.udp_exchange(&receiver, (DENIED_V4, 10), (ALLOWED_V4, 0));
    assert_eq!(arrived, vec![ip(DENIED_V4); 3], "the burst, then drops");
    assert_eq!(lab.count("dropped-rate-limited").0, 7);

    let bad = fails(&lab, &["firewall", "rate-limit", "set", "--burst", "3"]);
    assert!(
        bad.contains("default.burst: needs packets_per_second as well"),
        "{bad}"
    );

    lab.start("");
    let shown: serde_json::Value =
        serde_json::from_str(&ok(&lab, &["firewall", "rate-limit", "show", "--json"])).unwrap();
    assert_eq!(
        shown["default_origin"], "operator",
        "kept across a restart: {shown}"
    );
    assert_eq!(shown["default"]["burst"], 3);

    assert!(ok(&lab, &["firewall", "rate-limit", "reset"]).contains("default (off)"));
    let receiver = lab.udp_receiver(SERVER_V4, 5001);
    let arrived = lab.udp_exchange(&receiver, (DENIED_V4, 10), (ALLOWED_V4, 0));
    assert_eq!(arrived.len(), 10);
}

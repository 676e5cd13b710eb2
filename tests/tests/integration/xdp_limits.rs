//! Kernel rate limits and bans with real traffic between namespaces: a burst over the rate,
//! a SYN flood while established traffic flows, and bans set and lifted through the CLI.

use std::{
    io::{Read as _, Write as _},
    net::IpAddr,
    process::Output,
    time::{Duration, Instant},
};

use gateway_tests::{
    Frame, RawSocket,
    lab::*,
    traffic::{accept_timeout, recv_until_sentinel, tcp_connect_from, tcp_listener, udp_sender},
};

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_burst_over_the_rate_passes_about_rate_plus_burst() {
    let Some(mut lab) = Lab::new("burst") else {
        return;
    };
    const RATE: u64 = 100;
    const BURST: u64 = 50;
    const SENT: u64 = 1000;
    lab.start(&format!(
        "[firewall.rate_limit]\npackets_per_second = {RATE}\nburst = {BURST}"
    ));
    let receiver = lab.udp_receiver(SERVER_V4, 5000);
    let to = addr(SERVER_V4, 5000);
    let flooder = udp_sender(&lab.client, addr(DENIED_V4, 0));
    let started = Instant::now();
    for _ in 0..SENT {
        flooder.send_to(b"flood", to).unwrap();
    }
    let elapsed = started.elapsed();
    // Another source has its own bucket: its datagrams and the sentinel all arrive.
    let other = udp_sender(&lab.client, addr(ALLOWED_V4, 0));
    for _ in 0..10 {
        other.send_to(b"other", to).unwrap();
    }
    other.send_to(b"sentinel", to).unwrap();
    let arrived = recv_until_sentinel(&receiver, b"sentinel", SENTINEL_WAIT);
    let from_flooder = arrived
        .iter()
        .filter(|(from, _)| from.ip() == ip(DENIED_V4))
        .count() as u64;
    let from_other = arrived
        .iter()
        .filter(|(from, _)| from.ip() == ip(ALLOWED_V4))
        .count();
    assert_eq!(from_other, 10);

    // Tolerance: the burst, plus what the rate refills while the flood lasts, plus one for
    // the refill boundary.
    let refill = (RATE as f64 * elapsed.as_secs_f64()).ceil() as u64;
    assert!(
        (BURST..=BURST + refill + 1).contains(&from_flooder),
        "{from_flooder} of {SENT} passed in {elapsed:?}; expected {BURST}..={}",
        BURST + refill + 1
    );
    assert_eq!(lab.count("dropped-rate-limited").0, SENT - from_flooder);
    let stats = lab.gateway().stats();
    assert_eq!(
        stats["xdp"]["top_sources"][0]["address"], DENIED_V4,
        "{stats}"
    );
    // Per-source drops are sampled 1 in N (16) and scaled back: N * Binomial(n, 1/N), standard
    // deviation sqrt((N - 1) n); allow 5 of them (about 250 here, on some 950 drops).
    let dropped = SENT - from_flooder;
    let estimate = stats["xdp"]["top_sources"][0]["packets"].as_u64().unwrap();
    let sample = u64::from(gateway_common::DROP_SAMPLE_ONE_IN);
    let bound = 5.0 * ((sample - 1) as f64 * dropped as f64).sqrt();
    assert!(
        estimate % sample == 0 && (estimate.abs_diff(dropped) as f64) <= bound,
        "{estimate} for {dropped} drops"
    );

    // The live views: `top` (one refresh) and `stats --watch` (bounded by `timeout`).
    let top = lab.gateway().cli(&["top", "--iterations", "1"]);
    let top = output_text(&top);
    assert!(
        top.contains("dropped-rate-limited") && top.contains("TOP DROPPED SOURCES"),
        "{top}"
    );
    // The same estimate as `stats` (no traffic since).
    let total = estimate.to_string();
    assert!(
        top.lines()
            .any(|line| line.starts_with(DENIED_V4) && line.ends_with(&total)),
        "{top}"
    );
    assert!(!top.contains('\x1b'), "no escape codes in a pipe: {top:?}");
    let socket = lab.gateway().socket().to_str().unwrap().to_owned();
    let watch = std::process::Command::new("timeout")
        .args(["2.5"])
        .arg(gateway_tests::gateway_bin())
        .args(["stats", "--watch", "--json", "--socket", &socket])
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&watch.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON document per line"))
        .collect();
    assert!(lines.len() >= 2, "refreshes every second: {lines:?}");
}

#[test]
fn a_syn_flood_is_cut_while_established_traffic_flows() {
    let Some(mut lab) = Lab::new("synflood") else {
        return;
    };
    const SYNS: u64 = 500;
    lab.start("[firewall.rate_limit]\nsyn_per_second = 10\nsyn_burst = 10");
    // An established connection from another source, before the flood.
    let listener = tcp_listener(&lab.server, addr(SERVER_V4, 8080));
    let mut client = tcp_connect_from(
        &lab.client,
        addr(ALLOWED_V4, 0),
        addr(SERVER_V4, 8080),
        CONNECT_TIMEOUT,
    )
    .expect("connects before the flood");
    let mut served = accept_timeout(&listener, CONNECT_TIMEOUT).expect("accepted");
    served.set_read_timeout(Some(CONNECT_TIMEOUT)).unwrap();

    // SYNs from the flooder, each from a new port, as raw frames.
    let raw = RawSocket::open_in(&lab.client, &lab.link.b.name);
    let started = Instant::now();
    for port in 0..SYNS {
        let frame = Frame::tcp(ip(DENIED_V4), ip(SERVER_V4), 20000 + port as u16, 8080)
            .syn()
            .macs(lab.link.a.mac, lab.link.b.mac)
            .build();
        raw.send(&frame);
    }
    let elapsed = started.elapsed();

    // Established traffic flows during and after the flood.
    for round in 0..20u8 {
        client.write_all(&[round]).unwrap();
        let mut byte = [0u8; 1];
        served.read_exact(&mut byte).unwrap();
        assert_eq!(byte[0], round);
    }
    // And a new connection from another source still gets through.
    lab.tcp_works(ALLOWED_V4, addr(SERVER_V4, 8081));

    let (dropped, _) = lab.count("dropped-syn-rate-limited");
    let refill = (10.0 * elapsed.as_secs_f64()).ceil() as u64;
    assert!(
        (SYNS - 10 - refill - 1..=SYNS - 10).contains(&dropped),
        "{dropped} of {SYNS} SYNs dropped in {elapsed:?}"
    );
}

#[test]
fn bans_from_the_cli_drop_at_once_and_expire() {
    let Some(mut lab) = Lab::new("ban") else {
        return;
    };
    lab.start("");
    let receiver = lab.udp_receiver(SERVER_V4, 5000);
    assert_eq!(
        lab.udp_exchange(&receiver, (DENIED_V4, 1), (ALLOWED_V4, 0)),
        [ip(DENIED_V4)]
    );

    let ban = lab.gateway().cli(&["ban", DENIED_V4, "--for", "2s"]);
    assert!(ban.status.success(), "{}", output_text(&ban));
    assert_eq!(
        output_text(&ban).trim(),
        format!("banned {DENIED_V4}/32 for 2s")
    );
    let ban6 = lab.gateway().cli(&["ban", DENIED_V6]);
    assert!(ban6.status.success(), "{}", output_text(&ban6));

    assert_eq!(
        lab.udp_exchange(&receiver, (DENIED_V4, 3), (ALLOWED_V4, 0)),
        Vec::<IpAddr>::new()
    );
    assert_eq!(lab.count("dropped-banned").0, 3);
    let receiver6 = lab.udp_receiver(SERVER_V6, 5000);
    let arrived = lab.udp_exchange(&receiver6, (DENIED_V6, 2), (ALLOWED_V6, 0));
    assert!(arrived.is_empty(), "{DENIED_V6} is banned");

    let bans = lab.gateway().cli(&["bans"]);
    let listing = output_text(&bans);
    assert!(listing.contains(&format!("{DENIED_V4}/32")), "{listing}");
    assert!(
        listing.contains("fd00:99::3/128") && listing.contains("never"),
        "{listing}"
    );
    let json = gateway_tests::json_lines(&String::from_utf8_lossy(
        &lab.gateway().cli(&["bans", "--json"]).stdout,
    ));
    assert_eq!(json.as_array().unwrap().len(), 2, "{json}");

    // The temporary ban expires by itself; poll (bounded) until the source passes again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if lab.udp_exchange(&receiver, (DENIED_V4, 1), (ALLOWED_V4, 0)) == [ip(DENIED_V4)] {
            break;
        }
        assert!(Instant::now() < deadline, "the 2 s ban never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Gone from the listing at once (it no longer matches), and swept from the map within
    // the daemon's one-second sweep.
    assert!(!output_text(&lab.gateway().cli(&["bans"])).contains(DENIED_V4));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.gateway().log().contains("ban expired") {
        assert!(
            Instant::now() < deadline,
            "never swept:\n{}",
            lab.gateway().log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Lifting the permanent ban, and the errors an operator can meet.
    let unban = lab.gateway().cli(&["unban", DENIED_V6]);
    assert!(unban.status.success(), "{}", output_text(&unban));
    let again = lab.gateway().cli(&["unban", DENIED_V6]);
    assert!(!again.status.success());
    assert!(
        output_text(&again).contains("fd00:99::3/128 is not banned"),
        "{}",
        output_text(&again)
    );
    let bad = lab.gateway().cli(&["ban", "10.99.0.300"]);
    assert!(!bad.status.success());
    assert!(
        output_text(&bad).contains("\"10.99.0.300\" is not an IP address or CIDR"),
        "{}",
        output_text(&bad)
    );
    let host_bits = lab.gateway().cli(&["ban", "10.99.0.3/24"]);
    assert!(
        output_text(&host_bits).contains("did you mean 10.99.0.0/24?"),
        "{}",
        output_text(&host_bits)
    );
    let bad_duration = lab.gateway().cli(&["ban", DENIED_V4, "--for", "soon"]);
    assert!(!bad_duration.status.success());
    assert!(
        output_text(&bad_duration).contains("--for"),
        "{}",
        output_text(&bad_duration)
    );
    let arrived = lab.udp_exchange(&receiver6, (DENIED_V6, 1), (ALLOWED_V6, 0));
    assert_eq!(arrived, [ip(DENIED_V6)]);
}

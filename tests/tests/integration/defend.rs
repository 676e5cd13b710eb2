//! L7 signals drive the kernel: answers the proxy gives a source (401s, trap paths) get that
//! source banned in XDP while other sources are still served; never-ban sources are never
//! banned; with XDP off the accept stage enforces the bans. Real daemon, real namespaces,
//! real packets.
//!
//! The "invalid JWTs" of the issue are 401s told by the upstream here (`x-upstream-status`):
//! the trigger is status-based, so it counts the gateway's own 401s the same way once the
//! auth stage answers them.

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    process::Output,
    time::{Duration, Instant},
};

use gateway_tests::{
    Gateway, Side,
    lab::*,
    traffic::{tcp_connect_attempt, tcp_connect_from, udp_sender},
    upstream::Upstream,
};

const PORT: u16 = 8080;
/// A third client address, listed in `defend.never_ban`.
const TRUSTED_V4: &str = "10.99.0.4";
/// How long the defender may take to act on a report.
const BAN_WAIT: Duration = Duration::from_secs(5);

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn cli_json(gateway: &Gateway, args: &[&str]) -> serde_json::Value {
    let output = gateway.cli(args);
    assert!(
        output.status.success(),
        "gateway {args:?}: {}",
        output_text(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `gateway bans --json` (one ban per line) as `{"bans": [...]}`.
fn bans_of(gateway: &Gateway) -> serde_json::Value {
    let output = gateway.cli(&["bans", "--json"]);
    assert!(
        output.status.success(),
        "gateway bans: {}",
        output_text(&output)
    );
    serde_json::json!({ "bans": gateway_tests::json_lines(&String::from_utf8_lossy(&output.stdout)) })
}

/// Adds `TRUSTED_V4` to the client side, with a static neighbour on the server side.
fn add_trusted_client(lab: &Lab) {
    lab.link.add_addr(Side::B, &format!("{TRUSTED_V4}/24"));
    let mac = lab.link.b.mac.map(|b| format!("{b:02x}")).join(":");
    lab.server.ip(&[
        "neigh",
        "replace",
        TRUSTED_V4,
        "lladdr",
        &mac,
        "dev",
        &lab.link.a.name,
        "nud",
        "permanent",
    ]);
}

/// Listeners on the server's IPv4 and IPv6 addresses, one route to `upstream`, and `defend`.
fn proxy_config(upstream: &Upstream, defend: &str) -> String {
    format!(
        "[[listeners]]\nname = \"v4\"\naddress = \"{SERVER_V4}:{PORT}\"\n\
         [[listeners]]\nname = \"v6\"\naddress = \"[{SERVER_V6}]:{PORT}\"\n\
         [[upstreams]]\nname = \"api\"\ntargets = [{{ address = \"{}\" }}]\n\
         [[routes]]\nname = \"api\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"api\"\n\
         {defend}",
        upstream.address()
    )
}

fn server(ip_text: &str) -> SocketAddr {
    addr(
        if ip_text.contains(':') {
            SERVER_V6
        } else {
            SERVER_V4
        },
        PORT,
    )
}

/// One HTTP/1.1 request from `from` (the upstream answers `status`); the response's status,
/// or the I/O error that ended the exchange.
fn request(lab: &Lab, from: &str, path: &str, status: u16) -> std::io::Result<u16> {
    request_with(lab, from, path, &format!("x-upstream-status: {status}\r\n"))
}

/// [`request`] with `headers` (each line ending in CRLF) instead of an upstream status.
fn request_with(lab: &Lab, from: &str, path: &str, headers: &str) -> std::io::Result<u16> {
    let to = server(from);
    let mut stream = tcp_connect_from(&lab.client, addr(from, 0), to, CONNECT_TIMEOUT)?;
    stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: api\r\n{headers}connection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let head = String::from_utf8_lossy(&response);
    head.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("no HTTP response: {head:?}"),
            )
        })
}

fn served(lab: &Lab, from: &str, path: &str, status: u16) {
    match request(lab, from, path, status) {
        Ok(got) => assert_eq!(got, status, "{from} {path}"),
        Err(error) => panic!(
            "{from} {path} must be served: {error}\n{}",
            lab.gateway().log()
        ),
    }
}

/// A connect from `from` to the proxy that XDP drops (no answer at all).
fn connect_dropped(lab: &Lab, from: &str) {
    let attempt = tcp_connect_attempt(
        &lab.client,
        addr(from, 0),
        server(from),
        DROPPED_CONNECT_WAIT,
    );
    let error = attempt
        .result
        .as_ref()
        .expect_err("a banned source must not connect");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::TimedOut,
        "{from}: {error}"
    );
}

/// Waits (bounded) until `gateway bans --json` lists `cidr`; returns that ban.
fn wait_for_ban(gateway: &Gateway, cidr: &str) -> serde_json::Value {
    let deadline = Instant::now() + BAN_WAIT;
    loop {
        let bans = bans_of(gateway);
        if let Some(ban) = bans["bans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|ban| ban["cidr"] == cidr)
        {
            return ban.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{cidr} not banned within {BAN_WAIT:?}: {bans}\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ban_count(gateway: &Gateway) -> usize {
    bans_of(gateway)["bans"].as_array().unwrap().len()
}

const TRIGGERS: &str = "[defend]\nnever_ban = [\"10.99.0.4/32\"]\n\
    [[defend.triggers]]\nsignal = \"auth-failure\"\ncount = 3\nwindow = \"1m\"\nban = \"10m\"\n\
    [[defend.triggers]]\nsignal = \"trap\"\npaths = [\"/.env\", \"/wp-admin/*\"]\nban = \"1h\"\n";

#[test]
fn repeated_401s_ban_the_source_in_xdp_while_another_is_served() {
    let Some(mut lab) = Lab::new("defend401") else {
        return;
    };
    let upstream = lab.server.enter(|| Upstream::start("api"));
    lab.start(&format!(
        "protected_ports = [\"{PORT}/tcp\"]\n{}",
        proxy_config(&upstream, TRIGGERS)
    ));
    served(&lab, ALLOWED_V4, "/hello", 200);
    served(&lab, DENIED_V4, "/login", 401);
    served(&lab, DENIED_V4, "/login", 401);
    // Two failures: counted, not banned.
    let explained = cli_json(lab.gateway(), &["firewall", "explain", DENIED_V4, "--json"]);
    assert_eq!(explained["verdict"], "pass", "{explained}");
    assert_eq!(
        explained["l7"]["progress"][0], "auth-failure: 2/3 in 1m",
        "{explained}"
    );
    served(&lab, DENIED_V4, "/login", 401);

    let ban = wait_for_ban(lab.gateway(), &format!("{DENIED_V4}/32"));
    assert_eq!(ban["comment"], "auto: 3 auth failures in 1m", "{ban}");
    let left = ban["expires_in_secs"].as_f64().unwrap();
    assert!((590.0..=600.0).contains(&left), "{ban}");

    let dropped_before = lab.count("dropped-banned").0;
    connect_dropped(&lab, DENIED_V4);
    assert!(
        lab.count("dropped-banned").0 > dropped_before,
        "the SYN was dropped in XDP as banned"
    );
    // Another source is still served.
    served(&lab, ALLOWED_V4, "/hello", 200);

    // Explain: the ban with its reason, and the 401s that caused it.
    let explained = cli_json(lab.gateway(), &["firewall", "explain", DENIED_V4, "--json"]);
    assert_eq!(explained["verdict"], "drop", "{explained}");
    assert_eq!(explained["reason"], "dropped-banned", "{explained}");
    assert_eq!(
        explained["ban"]["comment"], "auto: 3 auth failures in 1m",
        "{explained}"
    );
    let recent = explained["l7"]["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 3, "{explained}");
    assert!(
        recent
            .iter()
            .all(|decision| decision["status"] == 401 && decision["signals"][0] == "auth-failure"),
        "{explained}"
    );
    let text = output_text(&lab.gateway().cli(&["firewall", "explain", DENIED_V4]));
    assert!(text.contains("auto: 3 auth failures in 1m"), "{text}");
    assert!(text.contains("401 /login route=api"), "{text}");
    let clean = output_text(&lab.gateway().cli(&["firewall", "explain", ALLOWED_V4]));
    assert!(clean.contains(": pass (passed)"), "{clean}");
    assert!(clean.contains("200 /hello route=api"), "{clean}");

    let listed = output_text(&lab.gateway().cli(&["bans"]));
    assert!(
        listed.contains("auto: 3 auth failures in 1m"),
        "the reason is listed: {listed}"
    );
    assert!(
        lab.gateway().log().contains("source auto-banned"),
        "every auto-ban is logged"
    );
    // Persisted like an operator's ban (in the store; the crash tests restart on it).
    assert!(lab.store_file().exists());
}

#[test]
fn a_trap_path_bans_ipv6_as_its_64_and_never_ban_sources_are_never_banned() {
    let Some(mut lab) = Lab::new("defendtrap") else {
        return;
    };
    add_trusted_client(&lab);
    let upstream = lab.server.enter(|| Upstream::start("api"));
    lab.start(&format!(
        "protected_ports = [\"{PORT}/tcp\"]\n{}",
        proxy_config(&upstream, TRIGGERS)
    ));
    // The trusted source trips every trigger and stays served.
    for _ in 0..3 {
        served(&lab, TRUSTED_V4, "/.env", 404);
        served(&lab, TRUSTED_V4, "/login", 401);
    }
    served(&lab, ALLOWED_V6, "/hello", 200);
    // One trap hit (a prefix trap) bans the IPv6 source's /64.
    served(&lab, DENIED_V6, "/wp-admin/setup.php", 200);
    let ban = wait_for_ban(lab.gateway(), "fd00:99::/64");
    assert_eq!(ban["comment"], "auto: trap /wp-admin/setup.php", "{ban}");
    connect_dropped(&lab, DENIED_V6);
    connect_dropped(&lab, ALLOWED_V6);
    // IPv4 sources outside the ban are served; the trusted one was never banned.
    served(&lab, ALLOWED_V4, "/hello", 200);
    served(&lab, TRUSTED_V4, "/hello", 200);
    assert_eq!(ban_count(lab.gateway()), 1);
    let explained = cli_json(
        lab.gateway(),
        &["firewall", "explain", TRUSTED_V4, "--json"],
    );
    assert_eq!(explained["l7"]["never_ban"], true, "{explained}");
    assert_eq!(explained["verdict"], "pass", "{explained}");
    // Three traps, three 401s and the last /hello: all recorded, none acted on.
    assert_eq!(explained["l7"]["recent"].as_array().unwrap().len(), 7);
}

#[test]
fn with_xdp_off_bans_are_enforced_at_accept() {
    let Some(mut lab) = Lab::new("defendoff") else {
        return;
    };
    let upstream = lab.server.enter(|| Upstream::start("api"));
    let config = format!(
        "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{}\"\n[xdp]\nmode = \"off\"\n{}",
        lab.state_file().display(),
        proxy_config(&upstream, TRIGGERS)
    );
    lab.gateway = Some(Gateway::start(Some(&lab.server), &config));
    served(&lab, DENIED_V4, "/.env", 404);
    let ban = wait_for_ban(lab.gateway(), &format!("{DENIED_V4}/32"));
    assert_eq!(ban["comment"], "auto: trap /.env", "{ban}");
    // The kernel lets the connection in; the accept stage closes it before any request.
    let refused = request(&lab, DENIED_V4, "/hello", 200);
    assert!(refused.is_err(), "a banned source got {refused:?}");
    served(&lab, ALLOWED_V4, "/hello", 200);
    assert_eq!(
        upstream.hits_on("/hello"),
        1,
        "only the allowed source's request"
    );
    // Unbanning opens it again, at once.
    let unban = lab.gateway().cli(&["unban", DENIED_V4]);
    assert!(unban.status.success(), "{}", output_text(&unban));
    served(&lab, DENIED_V4, "/hello", 200);
}

fn cli_ok(gateway: &Gateway, args: &[&str]) -> String {
    let output = gateway.cli(args);
    assert!(
        output.status.success(),
        "gateway {args:?}: {}",
        output_text(&output)
    );
    output_text(&output)
}

#[test]
fn under_attack_admits_a_known_good_source_and_drops_new_ones_beyond_the_budget() {
    let Some(mut lab) = Lab::new("defendua") else {
        return;
    };
    add_trusted_client(&lab);
    let upstream = lab.server.enter(|| Upstream::start("api"));
    // One new source a second: the test's second new source comes well within that second.
    let defend = "[defend.under_attack]\nnew_sources_per_second = 1\nnew_source_burst = 1\n\
                  probation = \"1m\"\n";
    lab.start(&format!(
        "protected_ports = [\"{PORT}/tcp\"]\n{}",
        proxy_config(&upstream, defend)
    ));
    let added = cli_ok(
        lab.gateway(),
        &["defend", "known-good", "add", ALLOWED_V4, "--ttl", "10m"],
    );
    assert!(added.contains("10.99.0.2 is known-good for 10m"), "{added}");
    let status = cli_ok(lab.gateway(), &["defend", "under-attack", "on"]);
    assert!(
        status.contains("under-attack mode: ON (switched by operator"),
        "{status}"
    );
    for _ in 0..3 {
        served(&lab, ALLOWED_V4, "/hello", 200);
    }
    // The budget's one new source gets in, and stays in (probation).
    served(&lab, DENIED_V4, "/hello", 200);
    served(&lab, DENIED_V4, "/hello", 200);
    let before = lab.count("dropped-under-attack").0;
    connect_dropped(&lab, TRUSTED_V4);
    assert!(lab.count("dropped-under-attack").0 > before, "counted");
    served(&lab, ALLOWED_V4, "/hello", 200);

    let known = cli_json(
        lab.gateway(),
        &["firewall", "explain", ALLOWED_V4, "--json"],
    );
    assert_eq!(known["verdict"], "pass", "{known}");
    assert_eq!(known["under_attack"], true, "{known}");
    let left = known["known_good_expires_in_secs"].as_f64().unwrap();
    assert!((500.0..=600.0).contains(&left), "{known}");
    let new = cli_json(
        lab.gateway(),
        &["firewall", "explain", TRUSTED_V4, "--json"],
    );
    assert_eq!(new["reason"], "dropped-under-attack", "{new}");
    assert!(new["known_good_expires_in_secs"].is_null(), "{new}");
    let text = cli_ok(lab.gateway(), &["firewall", "explain", ALLOWED_V4]);
    assert!(
        text.contains("under-attack mode ON; known-good, ") && text.contains("m left"),
        "{text}"
    );

    let status = cli_ok(lab.gateway(), &["defend", "under-attack", "off"]);
    assert!(status.contains("under-attack mode: off"), "{status}");
    served(&lab, TRUSTED_V4, "/hello", 200);
}

#[test]
fn under_attack_turns_itself_on_and_off_with_a_flood() {
    let Some(mut lab) = Lab::new("defendauto") else {
        return;
    };
    let upstream = lab.server.enter(|| Upstream::start("api"));
    let defend = "[defend.under_attack]\nauto = true\n\
                  on_when = { dropped_packets_per_second = 2000 }\noff_below = 100\nhold = \"2s\"\n";
    lab.start(&format!(
        "protected_ports = [\"{PORT}/tcp\", \"9999/udp\"]\ndeny = [\"{DENIED_V4}\"]\n{}",
        proxy_config(&upstream, defend)
    ));
    let status = || cli_ok(lab.gateway(), &["defend", "under-attack", "status"]);
    assert!(status().contains("under-attack mode: off"), "{}", status());
    // A flood from a denied source: every packet a drop, thousands a second.
    let flooder = udp_sender(&lab.client, addr(DENIED_V4, 0));
    let target = addr(SERVER_V4, 9999);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut switched_on = false;
    let mut sent = 0u64;
    'flood: while Instant::now() < deadline && sent < 20_000_000 {
        for _ in 0..5000 {
            if flooder.send_to(b"flood", target).is_ok() {
                sent += 1;
            }
        }
        // Every few thousand datagrams, look (cheaply) whether it switched.
        if sent % 50_000 < 5000 && status().contains("under-attack mode: ON") {
            switched_on = true;
            break 'flood;
        }
    }
    assert!(
        switched_on,
        "not switched on after {sent} flood packets: {}\n{}",
        status(),
        lab.gateway().log()
    );
    let on = status();
    assert!(
        on.contains("switched by auto: dropped_packets_per_second"),
        "{on}"
    );
    // The flood stops: after holding below off_below for 2 s, it switches itself off.
    let deadline = Instant::now() + Duration::from_secs(15);
    while status().contains("under-attack mode: ON") {
        assert!(
            Instant::now() < deadline,
            "still on 15 s after the flood: {}",
            status()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = lab.gateway().log();
    assert!(log.contains("under-attack mode on"), "{log}");
    assert!(log.contains("under-attack mode off"), "{log}");
    served(&lab, ALLOWED_V4, "/hello", 200);
}

/// A bpffs mounted in the host's mount namespace, which `ip netns exec` keeps (it only
/// replaces /sys): pins made there outlive the daemon's own mount namespace.
fn persistent_bpffs() -> std::path::PathBuf {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let dir = std::path::PathBuf::from("/run/gateway-tests-bpffs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: a valid path and a zeroed statfs the kernel fills.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let is_bpffs = unsafe { libc::statfs(path.as_ptr(), &mut stat) } == 0
        && stat.f_type as i64 == BPF_FS_MAGIC;
    if !is_bpffs {
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", dir.to_str().unwrap()])
            .status()
            .expect("running mount");
        assert!(status.success(), "mount -t bpf bpf {}", dir.display());
    }
    dir
}

#[test]
fn kill_9_leaves_drops_in_force_and_a_restart_adopts_the_maps() {
    let Some(lab) = Lab::new("defendpin") else {
        return;
    };
    let pins = persistent_bpffs();
    let config = |socket: &str| {
        format!(
            "[admin]\nsocket = \"{socket}\"\nstate_file = \"{}\"\n[xdp]\nmode = \"native\"\n\
             interfaces = [\"{}\"]\npin_dir = \"{}\"\n[firewall]\ndeny = [\"{DENIED_V4}\"]\n",
            lab.state_file().display(),
            lab.link.a.name,
            pins.display()
        )
    };
    let receiver = lab.udp_receiver(SERVER_V4, 5000);
    let exchange = |lab: &Lab| lab.udp_exchange(&receiver, (DENIED_V4, 5), (ALLOWED_V4, 3));
    let from_denied =
        |sources: &[std::net::IpAddr]| sources.iter().filter(|s| **s == ip(DENIED_V4)).count();

    let first = Gateway::start_pinned(Some(&lab.server), &config("{admin_socket}"));
    let sources = exchange(&lab);
    assert_eq!(from_denied(&sources), 0, "{sources:?}");
    assert_eq!(first.reason("dropped-deny").0, 5);
    assert!(first.cli(&["ban", DENIED_V6]).status.success());
    let log = first.kill();
    assert!(log.contains("XDP maps pinned"), "{log}");

    // The daemon is gone: the kernel keeps dropping.
    let sources = exchange(&lab);
    assert_eq!(from_denied(&sources), 0, "dropped while the daemon is down");
    assert_eq!(sources.len(), 3, "{sources:?}");

    // A restart adopts the pinned maps: counters include what was dropped meanwhile.
    let second = Gateway::start_pinned(Some(&lab.server), &config("{admin_socket}"));
    assert!(
        second.log().contains("adopted the pinned XDP maps"),
        "{}",
        second.log()
    );
    assert!(second.log().contains("adopted the pinned XDP link"));
    assert_eq!(second.reason("dropped-deny").0, 10, "counters intact");
    let bans = bans_of(&second);
    assert_eq!(bans["bans"][0]["cidr"], "fd00:99::3/128", "{bans}");
    let sources = exchange(&lab);
    assert_eq!(from_denied(&sources), 0);
    assert_eq!(second.reason("dropped-deny").0, 15);

    // SIGTERM keeps it attached too.
    let (status, log) = second.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("stays attached"), "{log}");
    let sources = exchange(&lab);
    assert_eq!(from_denied(&sources), 0, "dropped after a clean stop");

    // `gateway xdp detach`, without a daemon, opens it.
    let file = lab.state_dir.path().join("gateway.toml");
    let socket = lab.state_dir.path().join("gone.sock");
    std::fs::write(&file, config(socket.to_str().unwrap())).unwrap();
    let bin = gateway_tests::gateway_bin();
    let detached = lab.server.exec(&[
        bin.to_str().unwrap(),
        "xdp",
        "detach",
        "--config",
        file.to_str().unwrap(),
    ]);
    assert!(detached.status.success(), "{}", output_text(&detached));
    assert!(
        output_text(&detached).contains("detached: removed"),
        "{}",
        output_text(&detached)
    );
    let sources = exchange(&lab);
    assert_eq!(from_denied(&sources), 5, "open after detach: {sources:?}");
    // Nothing left pinned for this namespace.
    let again = lab.server.exec(&[
        bin.to_str().unwrap(),
        "xdp",
        "detach",
        "--config",
        file.to_str().unwrap(),
    ]);
    assert!(
        output_text(&again).contains("nothing pinned"),
        "{}",
        output_text(&again)
    );
}

/// A clean stop saves what the pinned rule tries hold; the next start adopts them and writes
/// only the difference (a rule gone from the config is gone from the kernel). After a kill -9
/// nothing was saved: the next start writes every rule and clears what it did not write.
#[test]
fn a_restart_after_a_clean_stop_writes_only_what_changed() {
    let Some(lab) = Lab::new("defendslots") else {
        return;
    };
    let pins = persistent_bpffs();
    let config = |socket: &str, deny: &str| {
        format!(
            "[admin]\nsocket = \"{socket}\"\nstate_file = \"{}\"\n[xdp]\nmode = \"native\"\n\
             interfaces = [\"{}\"]\npin_dir = \"{}\"\n[firewall]\ndeny = [{deny}]\n",
            lab.state_file().display(),
            lab.link.a.name,
            pins.display()
        )
    };
    let receiver = lab.udp_receiver(SERVER_V4, 5000);
    let exchange = |lab: &Lab| lab.udp_exchange(&receiver, (DENIED_V4, 5), (ALLOWED_V4, 3));
    let count = |sources: &[std::net::IpAddr], from: &str| {
        sources.iter().filter(|s| **s == ip(from)).count()
    };
    let denied = format!("\"{DENIED_V4}\"");
    let saved = lab.state_file().with_file_name("firewall.xdp-slots");

    let first = Gateway::start_pinned(Some(&lab.server), &config("{admin_socket}", &denied));
    assert_eq!(count(&exchange(&lab), DENIED_V4), 0);
    let (status, log) = first.stop();
    assert!(status.success(), "{log}");
    assert!(saved.exists(), "a clean stop saves the tries");

    // The config's rule is gone: only that entry is deleted, and the saved file is used up.
    let second = Gateway::start_pinned(Some(&lab.server), &config("{admin_socket}", ""));
    assert!(
        second.log().contains("only changes are written"),
        "{}",
        second.log()
    );
    assert!(!saved.exists(), "used once");
    let sources = exchange(&lab);
    assert_eq!(count(&sources, DENIED_V4), 5, "{sources:?}");
    assert_eq!(count(&sources, ALLOWED_V4), 3, "{sources:?}");
    let allowed_net = format!("{ALLOWED_V4}/32");
    assert!(
        second
            .cli(&["firewall", "deny", &allowed_net])
            .status
            .success()
    );
    assert_eq!(count(&exchange(&lab), ALLOWED_V4), 0);
    second.kill();
    assert!(!saved.exists(), "nothing saved by a killed daemon");

    // After the kill: everything written again, the operator's rule and the config's both.
    let third = Gateway::start_pinned(Some(&lab.server), &config("{admin_socket}", &denied));
    assert!(
        !third.log().contains("only changes are written"),
        "{}",
        third.log()
    );
    let sources = exchange(&lab);
    assert!(sources.is_empty(), "both dropped: {sources:?}");
    third.cli(&["firewall", "remove", &allowed_net]);
    let (status, log) = third.stop();
    assert!(status.success(), "{log}");

    // Clean up: nothing of this test stays attached.
    let file = lab.state_dir.path().join("gateway.toml");
    let socket = lab.state_dir.path().join("gone.sock");
    std::fs::write(&file, config(socket.to_str().unwrap(), "")).unwrap();
    let bin = gateway_tests::gateway_bin();
    let detached = lab.server.exec(&[
        bin.to_str().unwrap(),
        "xdp",
        "detach",
        "--config",
        file.to_str().unwrap(),
    ]);
    assert!(detached.status.success(), "{}", output_text(&detached));
}

#[test]
fn invalid_jwts_ban_the_source_in_xdp_and_a_valid_one_makes_its_source_known_good() {
    use gateway_tests::jwks::{KeyKind, TestKey};
    use jsonwebtoken::Algorithm;
    let Some(mut lab) = Lab::new("defendjwt") else {
        return;
    };
    let keys = tempfile::tempdir().unwrap();
    let issuer = TestKey::generate(keys.path(), KeyKind::Rsa, Algorithm::RS256, "idp");
    let forger = TestKey::generate(keys.path(), KeyKind::Rsa, Algorithm::RS256, "forger");
    let upstream = lab.server.enter(|| Upstream::start("api"));
    let config = proxy_config(&upstream, TRIGGERS).replace(
        "upstream = \"api\"\n[defend]",
        &format!(
            "upstream = \"api\"\nauth = {{ jwt = \"idp\" }}\n\
             [[auth.jwt]]\nname = \"idp\"\npublic_key = \"{}\"\n[defend]",
            issuer.public_pem.display()
        ),
    );
    lab.start(&format!("protected_ports = [\"{PORT}/tcp\"]\n{config}"));
    let claims = |sub: &str| serde_json::json!({ "sub": sub, "exp": jsonwebtoken::get_current_timestamp() + 3600 });
    let bearer = |token: String| format!("authorization: Bearer {token}\r\n");
    let valid = bearer(issuer.sign(&claims("alice")));
    let forged = bearer(forger.sign(&claims("alice")));

    // A real token is served, and its source becomes known good.
    assert_eq!(
        request_with(&lab, ALLOWED_V4, "/orders", &valid).unwrap(),
        200
    );
    // Tokens signed with another key: 401 from the gateway's own check, three times.
    for _ in 0..3 {
        assert_eq!(
            request_with(&lab, DENIED_V4, "/orders", &forged).unwrap(),
            401
        );
    }
    let ban = wait_for_ban(lab.gateway(), &format!("{DENIED_V4}/32"));
    assert_eq!(ban["comment"], "auto: 3 auth failures in 1m", "{ban}");
    connect_dropped(&lab, DENIED_V4);
    // The other source is still served, and is known good.
    assert_eq!(
        request_with(&lab, ALLOWED_V4, "/orders", &valid).unwrap(),
        200
    );
    let explained = cli_json(
        lab.gateway(),
        &["firewall", "explain", ALLOWED_V4, "--json"],
    );
    assert!(
        explained["known_good_expires_in_secs"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0,
        "{explained}"
    );
}

//! The real daemon, the real XDP program, real packets: two namespaces joined by a veth
//! pair, the gateway attached (native mode) to the server's end, traffic sent from the
//! client's end. Delivery is checked at real sockets, and drop counters exactly.

use std::{net::IpAddr, time::Duration};

use gateway_tests::{
    Frame, RawSocket,
    lab::*,
    traffic::{recv_until_sentinel, udp_send_from},
};

#[test]
fn deny_list_drops_denied_sources_over_tcp_and_udp_v4_and_v6() {
    let Some(mut lab) = Lab::new("deny_list") else {
        return;
    };
    lab.start(&format!("deny = [\"{DENIED_V4}\", \"{DENIED_V6}/128\"]"));

    let udp4 = lab.udp_receiver(SERVER_V4, 5000);
    let udp6 = lab.udp_receiver(SERVER_V6, 5000);
    let arrived = lab.udp_exchange(&udp4, (DENIED_V4, 4), (ALLOWED_V4, 3));
    assert_eq!(
        arrived,
        vec![ip(ALLOWED_V4); 3],
        "only the allowed source gets through"
    );
    let arrived = lab.udp_exchange(&udp6, (DENIED_V6, 5), (ALLOWED_V6, 2));
    assert_eq!(arrived, vec![ip(ALLOWED_V6); 2]);
    // Payloads "denied-N" are 8 bytes.
    let udp_bytes = 4 * udp_frame_len(false, 8) + 5 * udp_frame_len(true, 8);
    assert_eq!(lab.count("dropped-deny"), (9, udp_bytes));
    assert!(
        lab.count("passed").0 >= 3 + 2 + 2,
        "allowed datagrams and sentinels pass"
    );
    assert_eq!(lab.count("dropped-not-allowed"), (0, 0));

    lab.tcp_works(ALLOWED_V4, addr(SERVER_V4, 8080));
    lab.tcp_works(ALLOWED_V6, addr(SERVER_V6, 8080));
    let syns = lab.tcp_dropped(DENIED_V4, addr(SERVER_V4, 8081))
        + lab.tcp_dropped(DENIED_V6, addr(SERVER_V6, 8081));
    assert_eq!(
        lab.count("dropped-deny").0,
        9 + syns,
        "every SYN from a denied source is dropped"
    );
}

#[test]
fn allow_list_admits_only_allowed_sources() {
    let Some(mut lab) = Lab::new("allow_list") else {
        return;
    };
    // Link-local addresses carry neighbour discovery: an allow-list host must admit them.
    lab.start(&format!(
        "policy = \"allow-list\"\nallow = [\"{ALLOWED_V4}\", \"{ALLOWED_V6}\", \"fe80::/10\"]"
    ));
    let udp4 = lab.udp_receiver(SERVER_V4, 5000);
    let udp6 = lab.udp_receiver(SERVER_V6, 5000);
    assert_eq!(
        lab.udp_exchange(&udp4, (DENIED_V4, 3), (ALLOWED_V4, 3)),
        vec![ip(ALLOWED_V4); 3]
    );
    assert_eq!(
        lab.udp_exchange(&udp6, (DENIED_V6, 2), (ALLOWED_V6, 1)),
        vec![ip(ALLOWED_V6); 1]
    );
    let udp_bytes = 3 * udp_frame_len(false, 8) + 2 * udp_frame_len(true, 8);
    assert_eq!(lab.count("dropped-not-allowed"), (5, udp_bytes));
    assert_eq!(lab.count("dropped-deny"), (0, 0));

    lab.tcp_works(ALLOWED_V4, addr(SERVER_V4, 8080));
    lab.tcp_works(ALLOWED_V6, addr(SERVER_V6, 8080));
    let syns = lab.tcp_dropped(DENIED_V4, addr(SERVER_V4, 8081))
        + lab.tcp_dropped(DENIED_V6, addr(SERVER_V6, 8081));
    assert_eq!(lab.count("dropped-not-allowed").0, 5 + syns);
}

#[test]
fn protected_ports_leave_other_ports_alone() {
    let Some(mut lab) = Lab::new("ports") else {
        return;
    };
    lab.start(&format!(
        "protected_ports = [\"5000/udp\", \"8080/tcp\"]\ndeny = [\"{DENIED_V4}\", \"{DENIED_V6}\"]"
    ));
    let protected4 = lab.udp_receiver(SERVER_V4, 5000);
    let open4 = lab.udp_receiver(SERVER_V4, 5001);
    let protected6 = lab.udp_receiver(SERVER_V6, 5000);

    // Protected port: denied sources dropped; allowed ones pass under "passed" (exactly:
    // nothing else reaches a protected port).
    assert_eq!(
        lab.udp_exchange(&protected4, (DENIED_V4, 3), (ALLOWED_V4, 2)),
        vec![ip(ALLOWED_V4); 2]
    );
    assert_eq!(
        lab.udp_exchange(&protected6, (DENIED_V6, 1), (ALLOWED_V6, 1)),
        vec![ip(ALLOWED_V6); 1]
    );
    assert_eq!(
        lab.count("dropped-deny"),
        (4, 3 * udp_frame_len(false, 8) + udp_frame_len(true, 8))
    );
    assert_eq!(
        lab.count("passed"),
        (
            3 + 2,
            3 * udp_frame_len(false, 8) + 2 * udp_frame_len(true, 8)
        )
    );

    // Another port: the denied source is not subject to policy.
    let arrived = lab.udp_exchange(&open4, (DENIED_V4, 2), (ALLOWED_V4, 0));
    assert_eq!(arrived, vec![ip(DENIED_V4); 2]);
    assert!(lab.count("passed-unprotected").0 >= 3);

    // TCP: the protected port is closed to the denied source, SSH-like ports are not.
    lab.tcp_works(DENIED_V4, addr(SERVER_V4, 2222));
    lab.tcp_works(DENIED_V6, addr(SERVER_V6, 2222));
    let syns = lab.tcp_dropped(DENIED_V4, addr(SERVER_V4, 8080));
    assert_eq!(lab.count("dropped-deny").0, 4 + syns);
    // UDP to 8080 is not protected (8080 is TCP only).
    let udp8080 = lab.udp_receiver(SERVER_V4, 8080);
    assert_eq!(
        lab.udp_exchange(&udp8080, (DENIED_V4, 1), (ALLOWED_V4, 0)),
        vec![ip(DENIED_V4)]
    );
}

#[test]
fn vlan_tagged_and_malformed_frames_on_the_wire() {
    let Some(mut lab) = Lab::new("frames") else {
        return;
    };
    // Protected port 5000: "passed" then counts only the frames sent here.
    lab.start(&format!(
        "protected_ports = [5000]\ndeny = [\"{DENIED_V4}\", \"{DENIED_V6}\"]"
    ));
    let raw = RawSocket::open_in(&lab.client, &lab.link.b.name);
    let macs = |frame: Frame| frame.macs(lab.link.a.mac, lab.link.b.mac);
    let udp = |src: &str, dst: &str| macs(Frame::udp(ip(src), ip(dst), 40000, 5000, b"tagged"));

    // Tagged frames (802.1Q, and QinQ) are judged by the source inside them; so are a tiny
    // first fragment (RFC 1858: the port is read, the flags are cut off) and a port hidden
    // behind too many extension headers (the source alone decides).
    let denied = [
        udp(DENIED_V4, SERVER_V4).vlan(0x8100, 100).build(),
        udp(DENIED_V6, SERVER_V6)
            .vlan(0x88a8, 10)
            .vlan(0x8100, 20)
            .build(),
        macs(Frame::tcp(ip(DENIED_V4), ip(SERVER_V4), 40000, 5000))
            .syn()
            .fragment(0, true)
            .truncate(14 + 20 + 8)
            .build(),
        (0..9)
            .fold(udp(DENIED_V6, SERVER_V6), |frame, _| {
                frame.ext(gateway_tests::Ext::DestOpts)
            })
            .build(),
    ];
    let allowed = [
        udp(ALLOWED_V4, SERVER_V4).vlan(0x8100, 100).build(),
        udp(ALLOWED_V6, SERVER_V6).vlan(0x8100, 100).build(),
    ];
    for frame in denied.iter().chain(&allowed) {
        raw.send(frame);
    }
    // Malformed frames from a denied source pass (the kernel drops them later): no wrong drop.
    let malformed = [
        udp(DENIED_V4, SERVER_V4).truncate(14 + 10).build(),
        udp(DENIED_V4, SERVER_V4).ipv4_ihl(4).build(),
        udp(DENIED_V4, SERVER_V4)
            .ipv4_options(8)
            .truncate(14 + 24)
            .build(),
        udp(DENIED_V4, SERVER_V4)
            .vlan(0x88a8, 1)
            .vlan(0x8100, 2)
            .vlan(0x8100, 3)
            .build(),
    ];
    for frame in &malformed {
        raw.send(frame);
    }
    let not_ip = macs(Frame::ether(0x88cc, &[0u8; 46])).build();
    raw.send(&not_ip);

    // Raw sends are processed in order: wait on a last frame that must pass.
    let sentinel_socket = lab.udp_receiver(SERVER_V4, 5000);
    udp_send_from(
        &lab.client,
        addr(ALLOWED_V4, 0),
        addr(SERVER_V4, 5000),
        b"sentinel",
    );
    recv_until_sentinel(&sentinel_socket, b"sentinel", SENTINEL_WAIT);

    let len = |frames: &[Vec<u8>]| frames.iter().map(|f| f.len() as u64).sum::<u64>();
    assert_eq!(lab.count("dropped-deny"), (4, len(&denied)));
    let sentinel_len = udp_frame_len(false, 8);
    assert_eq!(lab.count("passed"), (3, len(&allowed) + sentinel_len));
    assert_eq!(lab.count("passed-malformed"), (4, len(&malformed)));
    assert_eq!(lab.count("passed-not-ip"), (1, not_ip.len() as u64));
}

#[test]
fn stopping_detaches_and_reopens_the_path() {
    let Some(mut lab) = Lab::new("detach") else {
        return;
    };
    lab.start(&format!("deny = [\"{DENIED_V4}\"]"));
    let link_info = lab.server.ip(&["link", "show", "dev", &lab.link.a.name]);
    assert!(
        link_info.contains("xdp"),
        "attached in native mode: {link_info}"
    );
    let stats = lab.gateway().stats();
    assert_eq!(stats["xdp"]["interfaces"][0]["mode"], "native", "{stats}");

    let udp = lab.udp_receiver(SERVER_V4, 5000);
    assert_eq!(
        lab.udp_exchange(&udp, (DENIED_V4, 1), (ALLOWED_V4, 0)),
        Vec::<IpAddr>::new()
    );

    let (status, log) = lab.gateway.take().expect("started").stop();
    assert!(status.success(), "clean exit on SIGTERM: {status}\n{log}");
    assert!(log.contains("XDP program detached"), "{log}");
    let link_info = lab.server.ip(&["link", "show", "dev", &lab.link.a.name]);
    assert!(!link_info.contains("xdp"), "detached: {link_info}");
    assert_eq!(
        lab.udp_exchange(&udp, (DENIED_V4, 1), (ALLOWED_V4, 0)),
        vec![ip(DENIED_V4)]
    );
}

#[test]
fn sighup_reloads_rules_and_keeps_them_on_a_bad_file() {
    let Some(mut lab) = Lab::new("reload") else {
        return;
    };
    lab.start(&format!("deny = [\"{DENIED_V4}\"]"));
    let udp = lab.udp_receiver(SERVER_V4, 5000);
    let config_path = lab.gateway().dir().join("gateway.toml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let hangup = |lab: &Lab| {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(lab.gateway().pid() as i32, libc::SIGHUP) };
    };
    let wait_for_log = |lab: &Lab, needle: &str| {
        for _ in 0..100 {
            if lab.gateway().log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{needle:?} not logged:\n{}", lab.gateway().log());
    };

    // Swap the denied source for the allowed one.
    std::fs::write(&config_path, config.replace(DENIED_V4, ALLOWED_V4)).unwrap();
    hangup(&lab);
    wait_for_log(&lab, "firewall rules reloaded");
    assert_eq!(
        lab.udp_exchange(&udp, (ALLOWED_V4, 2), (DENIED_V4, 1)),
        vec![ip(DENIED_V4)]
    );

    // A broken file is refused; the running rules stay.
    std::fs::write(&config_path, config.replace(DENIED_V4, "10.99.0.300")).unwrap();
    hangup(&lab);
    wait_for_log(&lab, "reload rejected");
    assert!(
        lab.gateway().log().contains("firewall.deny[0]"),
        "{}",
        lab.gateway().log()
    );
    assert_eq!(
        lab.udp_exchange(&udp, (ALLOWED_V4, 1), (DENIED_V4, 1)),
        vec![ip(DENIED_V4)]
    );

    // The same through the admin API: the caller sees why, and the exit status.
    let refused = lab.gateway().cli(&["reload"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("the running config stays") && message.contains("firewall.deny[0]"),
        "{message}"
    );
    std::fs::write(&config_path, &config).unwrap();
    let reloaded = lab.gateway().cli(&["reload"]);
    assert!(
        reloaded.status.success(),
        "{}",
        String::from_utf8_lossy(&reloaded.stderr)
    );
    assert!(String::from_utf8_lossy(&reloaded.stdout).contains("1 firewall rules"));
    assert_eq!(
        lab.udp_exchange(&udp, (DENIED_V4, 1), (ALLOWED_V4, 0)),
        Vec::<IpAddr>::new(),
        "the original deny rule is back"
    );
}

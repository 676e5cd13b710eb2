//! Exact verdicts of the real XDP program on crafted frames, through `BPF_PROG_TEST_RUN`:
//! every parse branch, both policies, port protection. Each run must move exactly one
//! reason counter by one packet and the frame's length in bytes.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};
use gateway::{config::Config, xdp::XdpFirewall};
use gateway_common::Reason;
use gateway_tests::{Ext, Frame, frames, kernel_tests_enabled, xdp_model::Model, xdp_run};

const DENIED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const EXCEPTION_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const OTHER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DST_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DENIED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 5);
const EXCEPTION_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 1, 0, 0, 0, 1);
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x600d, 0, 0, 0, 0, 1);
const DST_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);

/// Deny 203.0.113.0/24 and 2001:db8:bad::/48, with exceptions, on every port.
const DENY_RULES: &str = r#"
deny = ["203.0.113.0/24", "2001:db8:bad::/48"]
allow = ["203.0.113.10", "2001:db8:bad:1::/64"]
"#;

/// The same rules, policy only for TCP 80/443 and UDP 53.
const DENY_RULES_PORTS: &str = r#"
protected_ports = ["80/tcp", 443, "53/udp"]
deny = ["203.0.113.0/24", "2001:db8:bad::/48"]
allow = ["203.0.113.10", "2001:db8:bad:1::/64"]
"#;

struct Program {
    xdp: XdpFirewall,
}

impl Program {
    /// Loads the real program with the `[firewall]` section given; `None` when kernel tests
    /// cannot run here.
    fn load(test: &str, firewall: &str) -> Option<Program> {
        if !kernel_tests_enabled(test) {
            return None;
        }
        let text = format!(
            "[xdp]\nmode = \"off\"\nmax_rules_v4 = 64\nmax_rules_v6 = 64\n[firewall]\n{firewall}"
        );
        let config = Config::parse(&text).expect("test config is valid");
        let mut xdp = XdpFirewall::load(&config.xdp).expect("the XDP program loads");
        xdp.apply(&config.firewall).expect("rules are written");
        Some(Program { xdp })
    }

    fn apply(&mut self, firewall: &str) {
        let text = format!("[xdp]\nmode = \"off\"\n[firewall]\n{firewall}");
        let config = Config::parse(&text).expect("test config is valid");
        self.xdp.apply(&config.firewall).expect("rules are written");
    }

    /// Runs one frame; returns the reason it was counted under (see `xdp_run::verdict`).
    fn verdict(&mut self, frame: &[u8]) -> Reason {
        xdp_run::verdict(&mut self.xdp, frame)
    }
}

fn udp(src: IpAddr, dport: u16) -> Frame {
    let dst = match src {
        IpAddr::V4(_) => IpAddr::V4(DST_V4),
        IpAddr::V6(_) => IpAddr::V6(DST_V6),
    };
    Frame::udp(src, dst, 40000, dport, b"verdict")
}

fn tcp(src: IpAddr, dport: u16) -> Frame {
    let dst = match src {
        IpAddr::V4(_) => IpAddr::V4(DST_V4),
        IpAddr::V6(_) => IpAddr::V6(DST_V6),
    };
    Frame::tcp(src, dst, 40000, dport).syn()
}

#[test]
fn most_specific_rule_decides_for_both_families() {
    let Some(mut program) =
        Program::load("most_specific_rule_decides_for_both_families", DENY_RULES)
    else {
        return;
    };
    for (source, expected) in [
        (IpAddr::V4(DENIED_V4), Reason::DroppedDeny),
        (IpAddr::V4(EXCEPTION_V4), Reason::Passed),
        (IpAddr::V4(OTHER_V4), Reason::Passed),
        (IpAddr::V6(DENIED_V6), Reason::DroppedDeny),
        (IpAddr::V6(EXCEPTION_V6), Reason::Passed),
        (IpAddr::V6(OTHER_V6), Reason::Passed),
    ] {
        for frame in [udp(source, 53), tcp(source, 22)] {
            assert_eq!(program.verdict(&frame.build()), expected, "{source}");
        }
    }
}

#[test]
fn allow_list_drops_unlisted_and_carved_out_sources() {
    let rules = r#"
policy = "allow-list"
allow = ["192.0.2.0/24", "2001:db8:600d::/48"]
deny = ["192.0.2.128/25"]
"#;
    let Some(mut program) =
        Program::load("allow_list_drops_unlisted_and_carved_out_sources", rules)
    else {
        return;
    };
    for (source, expected) in [
        ("192.0.2.1", Reason::Passed),
        ("192.0.2.200", Reason::DroppedDeny),
        ("198.51.100.1", Reason::DroppedNotAllowed),
        ("2001:db8:600d::1", Reason::Passed),
        ("2001:db8:bad::1", Reason::DroppedNotAllowed),
    ] {
        let source: IpAddr = source.parse().unwrap();
        assert_eq!(
            program.verdict(&udp(source, 9999).build()),
            expected,
            "{source}"
        );
    }
}

#[test]
fn protected_ports_limit_the_policy_per_protocol() {
    let Some(mut program) = Program::load(
        "protected_ports_limit_the_policy_per_protocol",
        DENY_RULES_PORTS,
    ) else {
        return;
    };
    let denied = IpAddr::V4(DENIED_V4);
    let denied6 = IpAddr::V6(DENIED_V6);
    for (frame, expected) in [
        (tcp(denied, 80), Reason::DroppedDeny),
        (udp(denied, 80), Reason::PassedUnprotected), // 80 is TCP only
        (tcp(denied, 443), Reason::DroppedDeny),
        (udp(denied, 443), Reason::DroppedDeny),
        (udp(denied, 53), Reason::DroppedDeny),
        (tcp(denied, 53), Reason::PassedUnprotected), // 53 is UDP only
        (tcp(denied, 22), Reason::PassedUnprotected), // SSH is never cut off
        (tcp(IpAddr::V4(OTHER_V4), 80), Reason::Passed),
        (tcp(denied6, 443), Reason::DroppedDeny),
        (udp(denied6, 22), Reason::PassedUnprotected),
        (
            Frame::icmp4_echo(DENIED_V4, DST_V4),
            Reason::PassedUnprotected,
        ),
        (
            Frame::icmp6_echo(DENIED_V6, DST_V6),
            Reason::PassedUnprotected,
        ),
    ] {
        assert_eq!(program.verdict(&frame.build()), expected, "{frame:?}");
    }
}

#[test]
fn vlan_tags_are_walked_up_to_two() {
    let Some(mut program) = Program::load("vlan_tags_are_walked_up_to_two", DENY_RULES_PORTS)
    else {
        return;
    };
    let denied = IpAddr::V4(DENIED_V4);
    let one = tcp(denied, 80).vlan(0x8100, 100);
    let qinq = tcp(IpAddr::V6(DENIED_V6), 443)
        .vlan(0x88a8, 10)
        .vlan(0x8100, 20);
    let unprotected = tcp(denied, 22).vlan(0x88a8, 10).vlan(0x8100, 20);
    let three = tcp(denied, 80)
        .vlan(0x88a8, 1)
        .vlan(0x8100, 2)
        .vlan(0x8100, 3);
    assert_eq!(program.verdict(&one.build()), Reason::DroppedDeny);
    assert_eq!(program.verdict(&qinq.build()), Reason::DroppedDeny);
    assert_eq!(
        program.verdict(&unprotected.build()),
        Reason::PassedUnprotected
    );
    // Deeper stacks are not parsed: passed and counted, never guessed at.
    assert_eq!(program.verdict(&three.build()), Reason::PassedMalformed);
    let truncated_tag = tcp(denied, 80).vlan(0x8100, 100).truncate(16);
    assert_eq!(
        program.verdict(&truncated_tag.build()),
        Reason::PassedMalformed
    );
}

#[test]
fn ipv4_header_length_and_fragments_are_honoured() {
    let Some(mut program) = Program::load(
        "ipv4_header_length_and_fragments_are_honoured",
        DENY_RULES_PORTS,
    ) else {
        return;
    };
    let denied = IpAddr::V4(DENIED_V4);
    // Options move the TCP header: the port must be read after them.
    assert_eq!(
        program.verdict(&tcp(denied, 80).ipv4_options(12).build()),
        Reason::DroppedDeny
    );
    assert_eq!(
        program.verdict(&tcp(denied, 22).ipv4_options(40).build()),
        Reason::PassedUnprotected
    );
    // The first fragment carries the ports; later ones do not and are left to reassembly.
    assert_eq!(
        program.verdict(&tcp(denied, 80).fragment(0, true).build()),
        Reason::DroppedDeny
    );
    let later = Frame::ip4(DENIED_V4, DST_V4, 6, &[0u8; 32]).fragment(8, false);
    assert_eq!(program.verdict(&later.build()), Reason::PassedFragment);
    // Malformed headers pass: the kernel's own checks drop them later.
    assert_eq!(
        program.verdict(&tcp(denied, 80).ipv4_ihl(4).build()),
        Reason::PassedMalformed
    );
    let mut wrong_version = tcp(denied, 80).build();
    wrong_version[14] = 0x65;
    assert_eq!(program.verdict(&wrong_version), Reason::PassedMalformed);
    assert_eq!(
        program.verdict(&tcp(denied, 80).truncate(14 + 19).build()),
        Reason::PassedMalformed
    );
    // IP header complete, TCP ports cut off: the source alone decides.
    assert_eq!(
        program.verdict(&tcp(denied, 80).truncate(14 + 20 + 3).build()),
        Reason::DroppedDeny
    );
    // Options claimed but absent.
    assert_eq!(
        program.verdict(&tcp(denied, 80).ipv4_ihl(15).truncate(14 + 40).build()),
        Reason::PassedMalformed
    );
}

#[test]
fn without_protected_ports_the_source_alone_decides() {
    let Some(mut program) = Program::load(
        "without_protected_ports_the_source_alone_decides",
        DENY_RULES,
    ) else {
        return;
    };
    // The source is readable, so a denied source is dropped even when what follows is odd.
    let later = Frame::ip4(DENIED_V4, DST_V4, 17, &[0u8; 16]).fragment(100, false);
    assert_eq!(program.verdict(&later.build()), Reason::DroppedDeny);
    assert_eq!(
        program.verdict(&tcp(IpAddr::V4(DENIED_V4), 80).truncate(14 + 20 + 2).build()),
        Reason::DroppedDeny
    );
    let deep = (0..12).fold(udp(IpAddr::V6(DENIED_V6), 53), |frame, _| {
        frame.ext(Ext::DestOpts)
    });
    assert_eq!(program.verdict(&deep.build()), Reason::DroppedDeny);
    assert_eq!(
        program.verdict(&Frame::icmp6_echo(DENIED_V6, DST_V6).build()),
        Reason::DroppedDeny
    );
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let Some(mut program) = Program::load("ipv6_extension_headers_are_walked", DENY_RULES_PORTS)
    else {
        return;
    };
    let denied = IpAddr::V6(DENIED_V6);
    let chain = |frame: Frame| {
        frame
            .ext(Ext::HopByHop)
            .ext(Ext::Routing)
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            })
            .ext(Ext::Ah)
            .ext(Ext::DestOpts)
    };
    // Ports hidden behind every kind of extension header are still found.
    assert_eq!(
        program.verdict(&chain(tcp(denied, 443)).build()),
        Reason::DroppedDeny
    );
    assert_eq!(
        program.verdict(&chain(tcp(denied, 22)).build()),
        Reason::PassedUnprotected
    );
    assert_eq!(
        program.verdict(&chain(udp(denied, 53)).build()),
        Reason::DroppedDeny
    );
    let long = tcp(denied, 443).ext(Ext::Sized {
        header: 60,
        hdr_ext_len: 20,
    });
    assert_eq!(program.verdict(&long.build()), Reason::DroppedDeny);
    // A non-first fragment has no ports.
    let later = Frame::ip6(DENIED_V6, DST_V6, 6, &[0u8; 24]).fragment(4, false);
    assert_eq!(program.verdict(&later.build()), Reason::PassedFragment);
    // No next header, ESP: not TCP/UDP, so not protected.
    assert_eq!(
        program.verdict(&Frame::ip6(DENIED_V6, DST_V6, 59, &[]).build()),
        Reason::PassedUnprotected
    );
    assert_eq!(
        program.verdict(&Frame::ip6(DENIED_V6, DST_V6, 50, &[0u8; 16]).build()),
        Reason::PassedUnprotected
    );
    // Eight extension headers are walked; a ninth is beyond the bound, so the port stays
    // hidden and the source alone decides: a long chain never smuggles a denied source in.
    let eight = (0..8).fold(tcp(denied, 443), |frame, _| frame.ext(Ext::DestOpts));
    assert_eq!(program.verdict(&eight.build()), Reason::DroppedDeny);
    let nine = (0..9).fold(tcp(denied, 22), |frame, _| frame.ext(Ext::DestOpts));
    assert_eq!(program.verdict(&nine.build()), Reason::DroppedDeny);
    // Truncated inside an extension header: the port is hidden as well.
    assert_eq!(
        program.verdict(&chain(tcp(denied, 22)).truncate(14 + 40 + 5).build()),
        Reason::DroppedDeny
    );
    // Truncated inside the fixed header, wrong version: the source cannot be trusted.
    assert_eq!(
        program.verdict(&tcp(denied, 443).truncate(14 + 39).build()),
        Reason::PassedMalformed
    );
    let mut wrong_version = tcp(denied, 443).build();
    wrong_version[14] = 0x45;
    assert_eq!(program.verdict(&wrong_version), Reason::PassedMalformed);
}

#[test]
fn non_ip_frames_pass() {
    let Some(mut program) = Program::load("non_ip_frames_pass", DENY_RULES) else {
        return;
    };
    let arp = frames::arp_request([2, 0, 0, 0, 0, 1], DENIED_V4, DST_V4);
    assert_eq!(program.verdict(&arp), Reason::PassedNotIp);
    let lldp = Frame::ether(0x88cc, &[0u8; 46]).build();
    assert_eq!(program.verdict(&lldp), Reason::PassedNotIp);
    let vlan_arp = Frame::ether(0x0806, &[0u8; 28]).vlan(0x8100, 5).build();
    assert_eq!(program.verdict(&vlan_arp), Reason::PassedNotIp);
    // Ethernet header only: the kernel's minimum for a test run.
    assert_eq!(
        program.verdict(&Frame::ether(0x0800, &[]).build()),
        Reason::PassedMalformed
    );
}

#[test]
fn reapplying_rules_replaces_them_live() {
    let Some(mut program) = Program::load("reapplying_rules_replaces_them_live", DENY_RULES) else {
        return;
    };
    let denied = udp(IpAddr::V4(DENIED_V4), 53).build();
    let other = udp(IpAddr::V4(OTHER_V4), 53).build();
    assert_eq!(program.verdict(&denied), Reason::DroppedDeny);
    program.apply(r#"deny = ["192.0.2.0/24"]"#);
    assert_eq!(
        program.verdict(&denied),
        Reason::Passed,
        "the old rule is gone"
    );
    assert_eq!(
        program.verdict(&other),
        Reason::DroppedDeny,
        "the new rule is live"
    );
    program.apply("policy = \"allow-list\"\nallow = [\"203.0.113.0/24\"]");
    assert_eq!(program.verdict(&denied), Reason::Passed);
    assert_eq!(program.verdict(&other), Reason::DroppedNotAllowed);
}

#[test]
fn rate_limits_admit_the_burst_then_drop_per_source() {
    // One packet per second with a burst of 5: within the test's few milliseconds, exactly
    // the burst passes.
    let rules = "[firewall.rate_limit]\npackets_per_second = 1\nburst = 5";
    let Some(mut program) =
        Program::load("rate_limits_admit_the_burst_then_drop_per_source", rules)
    else {
        return;
    };
    let flooder = udp(IpAddr::V4(DENIED_V4), 53).build();
    let verdicts: Vec<Reason> = (0..8).map(|_| program.verdict(&flooder)).collect();
    assert_eq!(verdicts[..5], [Reason::Passed; 5]);
    assert_eq!(verdicts[5..], [Reason::DroppedRateLimited; 3]);
    // Other sources have their own buckets, IPv6 included.
    assert_eq!(
        program.verdict(&udp(IpAddr::V4(OTHER_V4), 53).build()),
        Reason::Passed
    );
    let v6 = udp(IpAddr::V6(OTHER_V6), 53).build();
    let verdicts: Vec<Reason> = (0..6).map(|_| program.verdict(&v6)).collect();
    assert_eq!(
        verdicts,
        [
            [Reason::Passed; 5].as_slice(),
            &[Reason::DroppedRateLimited]
        ]
        .concat()
    );
}

#[test]
fn syn_and_byte_limits_are_separate_budgets() {
    let rules = "[firewall.rate_limit]\nsyn_per_second = 1\nsyn_burst = 2\n\
                 bytes_per_second = 1000\nburst_bytes = 400";
    let Some(mut program) = Program::load("syn_and_byte_limits_are_separate_budgets", rules) else {
        return;
    };
    let source = IpAddr::V4(DENIED_V4);
    let syn = tcp(source, 443).build();
    let ack = Frame::tcp(source, IpAddr::V4(DST_V4), 40000, 443).build();
    assert_eq!(program.verdict(&syn), Reason::Passed);
    assert_eq!(program.verdict(&syn), Reason::Passed);
    assert_eq!(program.verdict(&syn), Reason::DroppedSynRateLimited);
    // Established traffic (no SYN) is not charged to the SYN budget...
    assert_eq!(program.verdict(&ack), Reason::Passed);
    // ...but every packet's bytes count: 400 bytes of burst is spent after ~6 frames.
    let frame_len = ack.len();
    let mut passed = 2 * syn.len() + frame_len;
    loop {
        let reason = program.verdict(&ack);
        if reason == Reason::DroppedRateLimited {
            break;
        }
        assert_eq!(reason, Reason::Passed);
        passed += frame_len;
        assert!(passed <= 400, "the byte budget must run out at 400 bytes");
    }
    assert!(
        passed + frame_len > 400,
        "passed {passed} bytes of a 400-byte burst"
    );
}

#[test]
fn rate_classes_give_prefixes_their_own_limits() {
    let rules = r#"
[firewall.rate_limit]
packets_per_second = 1
burst = 2
[[firewall.rate_limit.classes]]
name = "partner"
cidrs = ["192.0.2.0/24", "2001:db8:600d::/48"]
packets_per_second = 1
burst = 6
[[firewall.rate_limit.classes]]
name = "monitoring"
cidrs = ["198.51.100.0/24"]
"#;
    let Some(mut program) = Program::load("rate_classes_give_prefixes_their_own_limits", rules)
    else {
        return;
    };
    let passes = |program: &mut Program, source: &str| {
        let frame = udp(source.parse().unwrap(), 53).build();
        (0..10)
            .map(|_| program.verdict(&frame))
            .take_while(|reason| *reason == Reason::Passed)
            .count()
    };
    assert_eq!(passes(&mut program, "203.0.113.1"), 2, "default class");
    assert_eq!(passes(&mut program, "192.0.2.1"), 6, "partner class");
    assert_eq!(
        passes(&mut program, "2001:db8:600d::7"),
        6,
        "partner class, IPv6"
    );
    assert_eq!(
        passes(&mut program, "198.51.100.1"),
        10,
        "a class without limits"
    );
}

#[test]
fn bans_drop_until_they_expire_or_are_lifted() {
    let Some(mut program) = Program::load("bans_drop_until_they_expire_or_are_lifted", DENY_RULES)
    else {
        return;
    };
    let exception = udp(IpAddr::V4(EXCEPTION_V4), 53).build();
    let other = udp(IpAddr::V4(OTHER_V4), 53).build();
    let v6 = udp("2001:db8:600d::1234".parse().unwrap(), 53).build();
    let now = gateway::xdp::now();
    // A ban wins over an allow rule.
    program
        .xdp
        .ban("203.0.113.10/32".parse().unwrap(), None)
        .unwrap();
    assert_eq!(program.verdict(&exception), Reason::DroppedBanned);
    // Prefix bans: an IPv6 /64.
    program
        .xdp
        .ban(
            "2001:db8:600d::/64".parse().unwrap(),
            Some(now + Duration::from_secs(60)),
        )
        .unwrap();
    assert_eq!(program.verdict(&v6), Reason::DroppedBanned);
    // An expired ban stops matching at once, before any sweep.
    program
        .xdp
        .ban(
            "192.0.2.1/32".parse().unwrap(),
            Some(now - Duration::from_millis(1)),
        )
        .unwrap();
    assert_eq!(program.verdict(&other), Reason::Passed);
    let bans = program.xdp.bans().unwrap();
    assert_eq!(bans.len(), 2, "the expired ban is not listed: {bans:?}");
    assert_eq!(
        program.xdp.sweep_expired_bans().unwrap(),
        ["192.0.2.1/32".parse().unwrap()]
    );
    // Lifting.
    assert!(
        program
            .xdp
            .unban("203.0.113.10/32".parse().unwrap())
            .unwrap()
    );
    assert!(
        !program
            .xdp
            .unban("203.0.113.10/32".parse().unwrap())
            .unwrap()
    );
    assert_eq!(program.verdict(&exception), Reason::Passed);
}

#[test]
fn drops_are_counted_per_rule_and_per_source() {
    let Some(mut program) = Program::load("drops_are_counted_per_rule_and_per_source", DENY_RULES)
    else {
        return;
    };
    for _ in 0..3 {
        program.verdict(&udp(IpAddr::V4(DENIED_V4), 53).build());
    }
    program.verdict(&udp(IpAddr::V4(EXCEPTION_V4), 53).build());
    program.verdict(&udp(IpAddr::V6(DENIED_V6), 53).build());
    // By rule, whatever counter slot each rule was given.
    let hits: std::collections::BTreeMap<String, u64> = program
        .xdp
        .rule_hits()
        .unwrap()
        .into_iter()
        .map(|(net, hits)| (net.to_string(), hits))
        .collect();
    assert_eq!(
        hits,
        [
            ("203.0.113.0/24".to_owned(), 3),
            ("203.0.113.10/32".to_owned(), 1),
            ("2001:db8:bad::/48".to_owned(), 1),
            ("2001:db8:bad:1::/64".to_owned(), 0),
        ]
        .into_iter()
        .collect()
    );
    // Per source, drops are sampled (see `top_sources_name_the_heavy_sources_...` for how
    // accurate): whatever the table holds is a dropped source, counted in whole samples, and
    // never the exception that passed.
    let sampled = u64::from(gateway_common::DROP_SAMPLE_ONE_IN);
    for (source, estimate) in program.xdp.top_dropped_sources(10).unwrap() {
        assert!(
            [IpAddr::V4(DENIED_V4), IpAddr::V6(DENIED_V6)].contains(&source),
            "{source}"
        );
        assert!(
            estimate > 0 && estimate % sampled == 0,
            "{source}: {estimate}"
        );
    }
    // Re-applying a changed rule list: a rule that stays keeps its counter slot and its
    // count; the removed rules are gone.
    program.apply(r#"deny = ["2001:db8:bad::/48"]"#);
    assert_eq!(
        program.xdp.rule_hits().unwrap(),
        [("2001:db8:bad::/48".parse().unwrap(), 1)]
    );
}

/// `frame` run `times` times through the program in one `BPF_PROG_TEST_RUN`.
fn run_repeated(program: &mut Program, frame: &[u8], times: u32) {
    let result = program
        .xdp
        .program_mut()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: times,
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert!([1, 2].contains(&result.return_value), "an XDP action");
}

/// The top-sources table counts one drop in `DROP_SAMPLE_ONE_IN` (16) and is scaled back, so a
/// source with n drops reads 16 * Binomial(n, 1/16): relative standard error sqrt(15 / n),
/// within +-5% (over 5.7 standard errors) from 200,000 drops up. Heavy sources must come out
/// named, in order, within that bound, above every light source, with the total within 2%.
#[test]
fn top_sources_name_the_heavy_sources_within_the_sampling_bound() {
    let Some(mut program) = Program::load(
        "top_sources_name_the_heavy_sources_within_the_sampling_bound",
        DENY_RULES,
    ) else {
        return;
    };
    let heavy: [(IpAddr, u32); 3] = [
        (IpAddr::V4(DENIED_V4), 400_000),
        (IpAddr::V6(DENIED_V6), 250_000),
        ("203.0.113.6".parse().unwrap(), 200_000),
    ];
    // 200 light sources in the denied /24 and /48, 1,000 drops each.
    let light: Vec<IpAddr> = (20u8..120)
        .map(|last| IpAddr::V4(Ipv4Addr::new(203, 0, 113, last)))
        .chain(
            (1u16..=100)
                .map(|last| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 1, last))),
        )
        .collect();
    const LIGHT_DROPS: u32 = 1_000;
    for (source, drops) in heavy {
        run_repeated(&mut program, &udp(source, 53).build(), drops);
    }
    for &source in &light {
        run_repeated(&mut program, &udp(source, 53).build(), LIGHT_DROPS);
    }
    // Heavy but passed: never in the table.
    run_repeated(
        &mut program,
        &udp(IpAddr::V4(EXCEPTION_V4), 53).build(),
        200_000,
    );

    let top = program.xdp.top_dropped_sources(usize::MAX).unwrap();
    let named: Vec<IpAddr> = top.iter().take(3).map(|(source, _)| *source).collect();
    assert_eq!(
        named,
        heavy.map(|(source, _)| source),
        "heavy sources first, most first: {:?}",
        &top[..top.len().min(5)]
    );
    for ((source, estimate), (_, drops)) in top.iter().zip(heavy) {
        let error = (*estimate as f64 - f64::from(drops)).abs() / f64::from(drops);
        assert!(error <= 0.05, "{source}: {estimate} for {drops} drops");
    }
    assert!(
        top.iter()
            .all(|(source, _)| *source != IpAddr::V4(EXCEPTION_V4)),
        "a passed source is never listed"
    );
    assert!(top[3..].iter().all(|(source, _)| light.contains(source)));
    let total: u64 = top.iter().map(|(_, estimate)| estimate).sum();
    let dropped = heavy
        .iter()
        .map(|(_, drops)| u64::from(*drops))
        .sum::<u64>()
        + light.len() as u64 * u64::from(LIGHT_DROPS);
    assert!(
        total.abs_diff(dropped) * 50 <= dropped,
        "total {total} for {dropped} drops"
    );
    // The counters themselves stay exact.
    let counted = program
        .xdp
        .unattached_counters()
        .unwrap()
        .into_iter()
        .find(|(reason, _)| *reason == Reason::DroppedDeny)
        .map(|(_, counter)| counter.packets);
    assert_eq!(counted, Some(dropped));
}

#[test]
fn shadow_rules_count_without_dropping_and_defer_to_the_rule_around_them() {
    let Some(mut program) = Program::load(
        "shadow_rules_count_without_dropping_and_defer_to_the_rule_around_them",
        DENY_RULES,
    ) else {
        return;
    };
    let text = format!("[xdp]\nmode = \"off\"\n[firewall]\n{DENY_RULES}");
    let mut firewall = gateway::config::Config::parse(&text).unwrap().firewall;
    let shadow = |cidr: &str| gateway::config::CidrRule {
        net: cidr.parse().unwrap(),
        action: gateway::config::Action::Deny,
        origin: "operator".into(),
        shadow: true,
    };
    // Inside a deny range, inside an allow exception, and outside every rule.
    firewall.rules.push(shadow("203.0.113.5/32"));
    firewall.rules.push(shadow("2001:db8:bad:1::1/128"));
    firewall.rules.push(shadow("192.0.2.0/24"));
    program.xdp.apply(&firewall).unwrap();
    assert_eq!(
        program.verdict(&udp(IpAddr::V4(DENIED_V4), 53).build()),
        Reason::DroppedDeny
    );
    assert_eq!(
        program.verdict(&udp(IpAddr::V6(EXCEPTION_V6), 53).build()),
        Reason::Passed
    );
    assert_eq!(
        program.verdict(&udp(IpAddr::V4(OTHER_V4), 53).build()),
        Reason::Passed
    );
    assert_eq!(
        program.verdict(&udp(IpAddr::V4(OTHER_V4), 53).build()),
        Reason::Passed
    );
    let hits: std::collections::HashMap<String, u64> = program
        .xdp
        .rule_hits()
        .unwrap()
        .into_iter()
        .map(|(net, hits)| (net.to_string(), hits))
        .collect();
    assert_eq!(
        hits["192.0.2.0/24"], 2,
        "a shadow rule counts what it would drop"
    );
    assert_eq!(hits["2001:db8:bad:1::1/128"], 1);
    // Promoted: the same rule drops.
    firewall.rules.last_mut().unwrap().shadow = false;
    program.xdp.apply(&firewall).unwrap();
    assert_eq!(
        program.verdict(&udp(IpAddr::V4(OTHER_V4), 53).build()),
        Reason::DroppedDeny
    );
}

#[test]
fn under_attack_admits_known_good_and_a_budget_of_new_sources() {
    let Some(mut program) = Program::load(
        "under_attack_admits_known_good_and_a_budget_of_new_sources",
        "protected_ports = [\"80/tcp\"]\ndeny = [\"203.0.113.0/24\"]",
    ) else {
        return;
    };
    let known = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
    let known_v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x600d, 0, 0, 0, 0, 7));
    let now = gateway::xdp::now();
    for source in [known, known_v6] {
        program
            .xdp
            .mark_known_good(source, now + Duration::from_secs(60))
            .unwrap();
    }
    // An expired mark admits nothing.
    let stale = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
    program.xdp.mark_known_good(stale, now).unwrap();
    // One new source a second, two at once: the 1 s interval is far longer than this test.
    let budget = gateway::xdp::NewSources {
        per_second: 1,
        burst: 2,
        probation: Duration::from_secs(60),
    };
    program.xdp.set_under_attack(true, &budget).unwrap();
    assert_eq!(program.verdict(&tcp(known, 80).build()), Reason::Passed);
    assert_eq!(program.verdict(&tcp(known_v6, 80).build()), Reason::Passed);
    // Unprotected ports are not affected, and denied sources stay denied.
    assert_eq!(
        program.verdict(&tcp(stale, 22).build()),
        Reason::PassedUnprotected
    );
    assert_eq!(
        program.verdict(&tcp(IpAddr::V4(DENIED_V4), 80).build()),
        Reason::DroppedDeny
    );
    // The budget: two new sources pass (and then stay admitted), the third is dropped.
    let new = |n: u8| IpAddr::V4(Ipv4Addr::new(192, 0, 2, n));
    assert_eq!(program.verdict(&tcp(stale, 80).build()), Reason::Passed);
    assert_eq!(program.verdict(&tcp(new(1), 80).build()), Reason::Passed);
    assert_eq!(
        program.verdict(&tcp(new(2), 80).build()),
        Reason::DroppedUnderAttack
    );
    assert_eq!(program.verdict(&tcp(new(1), 80).build()), Reason::Passed);
    assert_eq!(program.verdict(&tcp(stale, 80).build()), Reason::Passed);
    assert_eq!(
        program.verdict(&udp(new(3), 80).build()),
        Reason::PassedUnprotected,
        "80 is protected for TCP only"
    );
    assert!(
        program.xdp.known_good(new(1)).unwrap().is_some(),
        "on probation"
    );
    assert!(program.xdp.known_good(new(2)).unwrap().is_none());
    // Off: everyone passes again.
    program.xdp.set_under_attack(false, &budget).unwrap();
    assert_eq!(program.verdict(&tcp(new(2), 80).build()), Reason::Passed);
    // Rules re-applied keep the mode.
    program.xdp.set_under_attack(true, &budget).unwrap();
    program.apply("protected_ports = [\"80/tcp\"]");
    assert!(program.xdp.under_attack());
    assert_eq!(
        program.verdict(&tcp(new(4), 80).build()),
        Reason::Passed,
        "a fresh budget on every switch"
    );
}

// ---- Tiny fragments and short transport headers (RFC 1858) --------------------------------

const BANNED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const BANNED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x600d, 2, 0, 0, 0, 7);

/// Who sends: each class has a different verdict, so a test can tell which one decided.
#[derive(Clone, Copy, Debug)]
enum Sender {
    Denied,
    Allowed,
    Banned,
    Unknown,
}

impl Sender {
    const ALL: [Sender; 4] = [
        Sender::Denied,
        Sender::Allowed,
        Sender::Banned,
        Sender::Unknown,
    ];

    fn address(self, v6: bool) -> IpAddr {
        match (self, v6) {
            (Sender::Denied, false) => DENIED_V4.into(),
            (Sender::Denied, true) => DENIED_V6.into(),
            (Sender::Allowed, false) => EXCEPTION_V4.into(),
            (Sender::Allowed, true) => EXCEPTION_V6.into(),
            (Sender::Banned, false) => BANNED_V4.into(),
            (Sender::Banned, true) => BANNED_V6.into(),
            (Sender::Unknown, false) => OTHER_V4.into(),
            (Sender::Unknown, true) => OTHER_V6.into(),
        }
    }

    /// The verdict on this source alone (ban, then rules, then policy).
    fn verdict(self, allow_list: bool) -> Reason {
        match self {
            Sender::Denied => Reason::DroppedDeny,
            Sender::Allowed => Reason::Passed,
            Sender::Banned => Reason::DroppedBanned,
            Sender::Unknown if allow_list => Reason::DroppedNotAllowed,
            Sender::Unknown => Reason::Passed,
        }
    }
}

/// `DENY_RULES_PORTS` under either policy, with `BANNED_*` banned.
fn load_with_bans(test: &str, allow_list: bool) -> Option<Program> {
    let policy = if allow_list {
        "allow-list"
    } else {
        "deny-list"
    };
    let mut program = Program::load(test, &format!("policy = \"{policy}\"\n{DENY_RULES_PORTS}"))?;
    for banned in [Sender::Banned.address(false), Sender::Banned.address(true)] {
        program.xdp.ban(banned.into(), None).expect("ban");
    }
    Some(program)
}

/// Whether `DENY_RULES_PORTS` protects this destination.
fn protected(tcp: bool, port: u16) -> bool {
    matches!((tcp, port), (true, 80) | (_, 443) | (false, 53))
}

#[test]
fn short_transport_headers_are_judged_by_port_or_by_source() {
    for allow_list in [false, true] {
        let Some(mut program) = load_with_bans(
            "short_transport_headers_are_judged_by_port_or_by_source",
            allow_list,
        ) else {
            return;
        };
        let mut runs = 0;
        for v6 in [false, true] {
            for sender in Sender::ALL {
                let src = sender.address(v6);
                for (is_tcp, header_len) in [(true, 20), (false, 8)] {
                    for port in [80, 443, 53, 22] {
                        // A first fragment (the RFC 1858 case) and a frame merely cut short.
                        for fragmented in [true, false] {
                            let frame = if is_tcp {
                                tcp(src, port)
                            } else {
                                udp(src, port)
                            };
                            let frame = if fragmented {
                                frame.fragment(0, true)
                            } else {
                                frame
                            };
                            let l4_start = match (v6, fragmented) {
                                (false, _) => 14 + 20,
                                (true, false) => 14 + 40,
                                (true, true) => 14 + 40 + 8,
                            };
                            for kept in 0..=header_len {
                                let cut = frame.clone().truncate(l4_start + kept).build();
                                // No port to read: the source alone; else the port first.
                                let expected = if kept >= 4 && !protected(is_tcp, port) {
                                    Reason::PassedUnprotected
                                } else {
                                    sender.verdict(allow_list)
                                };
                                assert_eq!(
                                    program.verdict(&cut),
                                    expected,
                                    "{sender:?} {src} {} to {port}, {kept} of {header_len} \
                                     header bytes, fragmented {fragmented}, allow-list {allow_list}",
                                    if is_tcp { "TCP" } else { "UDP" },
                                );
                                runs += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(runs, 2 * 4 * 4 * 2 * (21 + 9));
    }
}

#[test]
fn ipv6_chains_that_hide_the_port_are_judged_by_source() {
    let kinds = [
        Ext::HopByHop,
        Ext::Routing,
        Ext::DestOpts,
        Ext::Ah,
        Ext::Fragment {
            offset: 0,
            more: true,
        },
    ];
    for allow_list in [false, true] {
        let Some(mut program) = load_with_bans(
            "ipv6_chains_that_hide_the_port_are_judged_by_source",
            allow_list,
        ) else {
            return;
        };
        for sender in Sender::ALL {
            let expected = sender.verdict(allow_list);
            let src = sender.address(true);
            // Port 22 is unprotected: only a readable port could have said so.
            for ext in &kinds {
                let frame = tcp(src, 22).ext(Ext::HopByHop).ext(ext.clone());
                let full = frame.build();
                let ext_start = 14 + 40 + 8;
                let ext_len = full.len() - ext_start - 20;
                for kept in 0..ext_len {
                    let cut = frame.clone().truncate(ext_start + kept).build();
                    assert_eq!(program.verdict(&cut), expected, "{sender:?} {ext:?} {kept}");
                }
                assert_eq!(program.verdict(&full), Reason::PassedUnprotected, "{ext:?}");
            }
            // Beyond the walk's bounds: more than eight headers, or a header past 1 KiB.
            let nine = (0..9).fold(udp(src, 22), |frame, _| frame.ext(Ext::DestOpts));
            assert_eq!(program.verdict(&nine.build()), expected, "{sender:?} nine");
            let far = udp(src, 22).ext(Ext::Sized {
                header: 60,
                hdr_ext_len: 200,
            });
            assert_eq!(program.verdict(&far.build()), expected, "{sender:?} far");
        }
    }
}

#[test]
fn split_or_fragmented_tcp_headers_are_charged_as_syns() {
    let rules = "[firewall.rate_limit]\nsyn_per_second = 1\nsyn_burst = 2";
    let Some(mut program) =
        Program::load("split_or_fragmented_tcp_headers_are_charged_as_syns", rules)
    else {
        return;
    };
    let ack = |src: IpAddr| {
        let dst = match src {
            IpAddr::V4(_) => IpAddr::V4(DST_V4),
            IpAddr::V6(_) => IpAddr::V6(DST_V6),
        };
        Frame::tcp(src, dst, 40000, 443)
    };
    for (n, v6) in [false, true].into_iter().enumerate() {
        let (l4, fragment_header) = if v6 { (14 + 40, 8) } else { (14 + 20, 0) };
        let source = |host: u8| -> IpAddr {
            if v6 {
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0x5,
                    n as u16,
                    0,
                    0,
                    0,
                    host.into(),
                ))
            } else {
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10 * n as u8 + host))
            }
        };
        let variants = [
            // Flags cut off (ports readable), ports cut off, and flags that say ACK in a
            // first fragment (they may be Ethernet padding).
            (
                "flags cut off",
                ack(source(1))
                    .fragment(0, true)
                    .truncate(l4 + fragment_header + 8),
            ),
            (
                "ports cut off",
                ack(source(2))
                    .fragment(0, true)
                    .truncate(l4 + fragment_header + 2),
            ),
            ("first fragment", ack(source(3)).fragment(0, true)),
            ("not a fragment, cut", ack(source(4)).truncate(l4 + 12)),
        ];
        for (what, frame) in variants {
            let frame = frame.build();
            let verdicts: Vec<Reason> = (0..3).map(|_| program.verdict(&frame)).collect();
            assert_eq!(
                verdicts,
                [
                    Reason::Passed,
                    Reason::Passed,
                    Reason::DroppedSynRateLimited
                ],
                "{what}, IPv6 {v6}"
            );
        }
        // A whole ACK is not a SYN: never charged.
        let whole = ack(source(5)).build();
        for _ in 0..5 {
            assert_eq!(program.verdict(&whole), Reason::Passed, "IPv6 {v6}");
        }
    }
}

#[test]
fn ipv4_frames_shorter_than_their_ihl_are_malformed() {
    for (firewall, name) in [
        (DENY_RULES, "all ports"),
        (DENY_RULES_PORTS, "protected ports"),
    ] {
        let Some(mut program) =
            Program::load("ipv4_frames_shorter_than_their_ihl_are_malformed", firewall)
        else {
            return;
        };
        program
            .xdp
            .ban("198.51.100.7/32".parse().unwrap(), None)
            .unwrap();
        for src in [IpAddr::V4(DENIED_V4), IpAddr::V4(BANNED_V4)] {
            let judged = if src == IpAddr::V4(BANNED_V4) {
                Reason::DroppedBanned
            } else {
                Reason::DroppedDeny
            };
            for ihl in 5..=15u8 {
                let header_end = 14 + 4 * usize::from(ihl);
                let frame = tcp(src, 80).ipv4_options(4 * usize::from(ihl - 5));
                // Cut anywhere inside the options: the source cannot be trusted.
                for cut in 14 + 20..header_end {
                    assert_eq!(
                        program.verdict(&frame.clone().truncate(cut).build()),
                        Reason::PassedMalformed,
                        "{name}: IHL {ihl}, {cut} bytes"
                    );
                }
                // The whole header, then nothing (ports hidden) or the TCP header.
                assert_eq!(
                    program.verdict(&frame.clone().truncate(header_end).build()),
                    judged,
                    "{name}: IHL {ihl}, header only"
                );
                assert_eq!(program.verdict(&frame.build()), judged, "{name}: IHL {ihl}");
                // A forged IHL (no options written): past the frame's end it is malformed;
                // inside it, the source is read and judged (the "TCP" bytes are then taken for
                // options, so only the all-ports policy has a predictable answer).
                let forged = tcp(src, 80).payload(&[0; 4]).ipv4_ihl(ihl).build();
                if 14 + 4 * usize::from(ihl) > forged.len() {
                    assert_eq!(
                        program.verdict(&forged),
                        Reason::PassedMalformed,
                        "{name}: forged IHL {ihl}"
                    );
                } else if firewall == DENY_RULES {
                    assert_eq!(program.verdict(&forged), judged, "{name}: forged IHL {ihl}");
                }
            }
            for ihl in 0..5 {
                let forged = tcp(src, 80).ipv4_ihl(ihl).build();
                assert_eq!(
                    program.verdict(&forged),
                    Reason::PassedMalformed,
                    "IHL {ihl}"
                );
            }
        }
    }
}

// ---- The model (tests/src/xdp_model.rs) against the program ---------------------------------

/// Frames from every parse branch: both families, TCP/UDP to protected and other ports,
/// fragments, VLAN tags, IPv4 options, IPv6 extension chains, ICMP, non-IP.
fn model_frames() -> Vec<Frame> {
    let mut frames = Vec::new();
    // Denied, an allow carved out of a deny, banned, unknown; narrow and wide rules.
    let sources = ["203.0.113.5", "161.0.0.1", "198.51.100.7", "192.0.2.1"];
    let sources6 = ["2001:db8:bad::5", "2001:db8:bad:1::1", "4001::1", "8001::1"];
    for source in sources.iter().chain(&sources6) {
        let src: IpAddr = source.parse().unwrap();
        frames.extend([tcp(src, 80), tcp(src, 53), udp(src, 53), udp(src, 80)]);
        frames.push(tcp(src, 443).fragment(0, true));
        frames.push(udp(src, 53).vlan(0x8100, 7));
        match src {
            IpAddr::V4(v4) => {
                frames.push(tcp(src, 80).ipv4_options(12));
                frames.push(Frame::ip4(v4, DST_V4, 6, &[0; 16]).fragment(3, false));
                frames.push(Frame::icmp4_echo(v4, DST_V4));
            }
            IpAddr::V6(v6) => {
                frames.push(
                    tcp(src, 443)
                        .ext(Ext::HopByHop)
                        .ext(Ext::Ah)
                        .ext(Ext::DestOpts),
                );
                frames.push(Frame::ip6(v6, DST_V6, 6, &[0; 16]).fragment(3, false));
                frames.push(Frame::icmp6_echo(v6, DST_V6));
            }
        }
    }
    frames.push(Frame::ether(0x0806, &[0; 28]));
    frames
}

#[test]
fn the_model_agrees_with_the_program() {
    // xorshift64: deterministic mutations, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for model in Model::examples() {
        let Some(mut program) =
            Program::load("the_model_agrees_with_the_program", &model.firewall_toml())
        else {
            return;
        };
        for net in &model.bans {
            program.xdp.ban(*net, None).expect("ban");
        }
        let mut runs = 0;
        for frame in model_frames() {
            let whole = frame.build();
            // Every cut, then bytes changed at random in the headers.
            let cuts = (14..whole.len()).map(|len| whole[..len].to_vec());
            let mutants = (0..20).map(|_| {
                let mut mutant = whole.clone();
                for _ in 0..=random() % 3 {
                    let at = random() as usize % mutant.len().min(80);
                    mutant[at] = random() as u8;
                }
                mutant
            });
            for bytes in std::iter::once(whole.clone())
                .chain(cuts)
                .chain(mutants.collect::<Vec<_>>())
            {
                assert_eq!(
                    program.verdict(&bytes),
                    model.verdict(&bytes),
                    "{model:?}\nframe {bytes:02x?}"
                );
                runs += 1;
            }
        }
        assert!(runs > 1000, "{runs} frames compared");
    }
}

//! `bench xdp`: what the XDP firewall costs per packet, and how fast it discards a flood
//! compared with the kernel's other early drop points.
//!
//! 1. Program cost through `BPF_PROG_TEST_RUN` (no interface, no sender): 10, 10k, 100k and
//!    1M rules per family, for a denied, an allowed (exception) and a non-matching source.
//! 2. A UDP flood over a veth pair between two namespaces made here, dropped by: nothing
//!    (delivered to a closed port), XDP (native, on the receiving veth), an iptables
//!    raw-table DROP, and an nftables netdev ingress drop. For each: packets/s discarded and
//!    the machine's CPU time per discarded packet.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::{TestRun, TestRunOptions};
use gateway::{
    config::{Action, CidrRule, FirewallConfig, Policy, XdpConfig, XdpMode},
    xdp::XdpFirewall,
};
use gateway_common::Reason;
use gateway_tests::{Frame, NetNs, VethLink, netns::Side};
use ipnet::IpNet;

use crate::xdp_reference;

const RULE_COUNTS: [usize; 4] = [10, 10_000, 100_000, 1_000_000];

struct Options {
    seconds: u64,
    repeat: u32,
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench xdp needs root (BPF, namespaces)");
    }
    let mut options = Options {
        seconds: 5,
        repeat: 1_000_000,
    };
    for (arg, value) in crate::options::pairs(args)? {
        match arg {
            "--seconds" => options.seconds = value.parse()?,
            "--repeat" => options.repeat = value.parse()?,
            _ => bail!("unknown option {arg}"),
        }
    }
    program_cost(&options)?;
    flood(&options)
}

// ---- 1. Program cost ----

const DENIED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const ALLOWED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const OTHER_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const DENIED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 5);
const ALLOWED_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 10);
const OTHER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x600d, 0, 0, 0, 0, 1);

/// One column of the cost table: a source, the reason the gateway gives it, and whether the
/// run needs the rate limiter on.
struct Case {
    name: &'static str,
    source: Option<IpAddr>,
    expected: Reason,
    rate_limited: bool,
}

const fn case(name: &'static str, source: IpAddr, expected: Reason) -> Case {
    Case {
        name,
        source: Some(source),
        expected,
        rate_limited: false,
    }
}

fn program_cost(options: &Options) -> anyhow::Result<()> {
    let max = *RULE_COUNTS.iter().max().expect("counts") as u32 + 2;
    let mut xdp = XdpFirewall::load(&XdpConfig {
        mode: XdpMode::Off,
        interfaces: Vec::new(),
        max_rules_v4: max,
        max_rules_v6: max,
        max_sources: 1024,
        max_bans: 1024,
    })?;
    let reference_object = xdp_reference::build()?;
    let cases = [
        case("v4 denied", DENIED_V4.into(), Reason::DroppedDeny),
        case("v4 allowed", ALLOWED_V4.into(), Reason::Passed),
        case("v4 no match", OTHER_V4.into(), Reason::Passed),
        case("v6 denied", DENIED_V6.into(), Reason::DroppedDeny),
        case("v6 allowed", ALLOWED_V6.into(), Reason::Passed),
        case("v6 no match", OTHER_V6.into(), Reason::Passed),
        // A source over its budget (1 packet/s): every run but the first is a drop.
        Case {
            rate_limited: true,
            ..case(
                "v4 rate-limited",
                OTHER_V4.into(),
                Reason::DroppedRateLimited,
            )
        },
        // No lookup at all: the fixed cost of a run (test-run overhead, parse, count).
        Case {
            name: "floor: ARP",
            source: None,
            expected: Reason::PassedNotIp,
            rate_limited: false,
        },
    ];
    println!(
        "## XDP program cost (BPF_PROG_TEST_RUN, ns per run, median of 5 x {} repeats, gateway \
         and C reference interleaved)",
        options.repeat
    );
    println!(
        "The C reference (`xdp_reference.c`) parses, looks the source up in an LPM trie \
         holding the same rules, and drops on deny; it has no bans, counters or rate limiter, \
         so a rate-limited source is set against its plain lookup.\n"
    );
    println!("| rules per family | source | gateway ns | C ns | gateway / C |");
    println!("|---:|---|---:|---:|---:|");
    for count in RULE_COUNTS {
        let rules = rule_set(count);
        xdp.apply(&rules)?;
        let mut reference = match &reference_object {
            Some(object) => Some(xdp_reference::Reference::load(object, &rules)?),
            None => None,
        };
        for case in &cases {
            if case.rate_limited {
                xdp.apply(&FirewallConfig {
                    rate_limit: Some(one_packet_per_second()?),
                    ..rules.clone()
                })?;
            }
            let frame = match case.source {
                Some(source) => udp_frame(source),
                None => gateway_tests::frames::arp_request([2, 0, 0, 0, 0, 1], OTHER_V4, DENIED_V4),
            };
            let want = if case.expected.is_drop() { 1 } else { 2 };
            // The reference drops what a deny rule covers, and nothing else.
            let reference_want = if case.expected == Reason::DroppedDeny {
                1
            } else {
                2
            };
            let (mut gateway_runs, mut reference_runs) = (Vec::new(), Vec::new());
            for _ in 0..5 {
                let result = xdp.program_mut().test_run(TestRunOptions {
                    data_in: Some(&frame),
                    repeat: options.repeat,
                    ..TestRunOptions::default()
                })?;
                if result.return_value != want {
                    bail!(
                        "{}: gateway action {} instead of {want}",
                        case.name,
                        result.return_value
                    );
                }
                gateway_runs.push(result.duration.as_nanos());
                if let Some(reference) = reference.as_mut() {
                    let (ns, action) = reference.run(&frame, options.repeat)?;
                    if action != reference_want {
                        bail!(
                            "{}: C action {action} instead of {reference_want}",
                            case.name
                        );
                    }
                    reference_runs.push(ns);
                }
            }
            let gateway_ns = median(&mut gateway_runs);
            match median_opt(&mut reference_runs) {
                Some(reference_ns) => println!(
                    "| {count} | {} | {gateway_ns} | {reference_ns} | {:.2} |",
                    case.name,
                    gateway_ns as f64 / reference_ns.max(1) as f64
                ),
                None => println!("| {count} | {} | {gateway_ns} | - | - |", case.name),
            }
            if case.rate_limited {
                xdp.apply(&rules)?;
            }
        }
    }
    println!();
    Ok(())
}

fn median(runs: &mut [u128]) -> u128 {
    median_opt(runs).unwrap_or(0)
}

fn median_opt(runs: &mut [u128]) -> Option<u128> {
    runs.sort_unstable();
    runs.get(runs.len() / 2).copied()
}

/// `[firewall.rate_limit]` with a budget of one packet per second.
fn one_packet_per_second() -> anyhow::Result<gateway::config::RateLimitConfig> {
    let text = "[xdp]\nmode = \"off\"\n[firewall.rate_limit]\npackets_per_second = 1\nburst = 1\n";
    gateway::config::Config::parse(text)
        .map_err(|error| anyhow::anyhow!("rate limit config: {error:?}"))?
        .firewall
        .rate_limit
        .context("rate limit config")
}

fn udp_frame(source: IpAddr) -> Vec<u8> {
    let destination: IpAddr = match source {
        IpAddr::V4(_) => Ipv4Addr::new(10, 0, 0, 1).into(),
        IpAddr::V6(_) => Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1).into(),
    };
    // 18 bytes of payload: a minimum-size (64-byte with FCS) IPv4 frame.
    Frame::udp(source, destination, 40000, 9, &[0u8; 18]).build()
}

/// `count` deny rules per family spread over the address space (deterministic), plus the
/// deny prefixes holding the test sources and one allow exception per family.
fn rule_set(count: usize) -> FirewallConfig {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        // xorshift64*: cheap, deterministic spread.
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let rule = |net: IpNet, action| CidrRule {
        net,
        action,
        origin: "bench".into(),
        shadow: false,
    };
    let mut nets = std::collections::HashSet::new();
    // Rules generated so far, IPv4 and IPv6.
    let mut per_family = [0usize; 2];
    let mut rules = vec![
        rule("203.0.113.0/24".parse().unwrap(), Action::Deny),
        rule("203.0.113.10/32".parse().unwrap(), Action::Allow),
        rule("2001:db8:bad::/48".parse().unwrap(), Action::Deny),
        rule("2001:db8:bad::a/128".parse().unwrap(), Action::Allow),
    ];
    while nets.len() < 2 * (count - 1) {
        let bits = next();
        // Prefixes /16../32 (IPv4) and /32../128 (IPv6), away from the test sources.
        let v4 = IpNet::new(
            Ipv4Addr::from((bits >> 32) as u32).into(),
            16 + (bits % 17) as u8,
        )
        .unwrap()
        .trunc();
        let v6_addr = Ipv6Addr::from(((bits as u128) << 64) | u128::from(next()));
        let v6 = IpNet::new(v6_addr.into(), 32 + (bits % 97) as u8)
            .unwrap()
            .trunc();
        for net in [v4, v6] {
            let clashes = ["203.0.113.0/24", "192.0.2.0/24", "2001:db8::/32"]
                .iter()
                .any(|test: &&str| {
                    let test: IpNet = test.parse().unwrap();
                    test.contains(&net) || net.contains(&test)
                });
            let family = usize::from(net.addr().is_ipv6());
            if !clashes && per_family[family] < count - 1 && nets.insert(net) {
                per_family[family] += 1;
                rules.push(rule(net, Action::Deny));
            }
        }
    }
    FirewallConfig {
        policy: Policy::DenyList,
        protected_ports: Default::default(),
        rules,
        rate_limit: None,
    }
}

// ---- 2. Flood over veth ----

const SINK: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 2);
const FLOOD_PORT: u16 = 9;

#[derive(Clone, Copy)]
enum Dropper {
    None,
    Xdp,
    XdpSkb,
    IptablesRaw,
    NftIngress,
}

impl Dropper {
    fn name(self) -> &'static str {
        match self {
            Dropper::None => "no filter (closed port)",
            Dropper::Xdp => "XDP native (gateway)",
            Dropper::XdpSkb => "XDP skb/generic (gateway)",
            Dropper::IptablesRaw => "iptables raw PREROUTING DROP",
            Dropper::NftIngress => "nftables netdev ingress drop",
        }
    }
}

struct FloodResult {
    sent: u64,
    discarded: u64,
    seconds: f64,
    cpu_ns: u64,
}

fn flood(options: &Options) -> anyhow::Result<()> {
    println!(
        "## Discarding a UDP flood on veth ({} s each, one sender thread, 64-byte frames)",
        options.seconds
    );
    println!("iptables: {}", command_line(&["iptables", "--version"]));
    println!();
    println!("| dropped by | sent/s | discarded/s | ratio to XDP | CPU ns per discarded packet |");
    println!("|---|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for dropper in [
        Dropper::None,
        Dropper::Xdp,
        Dropper::XdpSkb,
        Dropper::IptablesRaw,
        Dropper::NftIngress,
    ] {
        rows.push((dropper, flood_once(dropper, options.seconds)?));
    }
    let xdp_rate = rows
        .iter()
        .find(|(dropper, _)| matches!(dropper, Dropper::Xdp))
        .map(|(_, result)| result.discarded as f64 / result.seconds)
        .unwrap_or(1.0);
    for (dropper, result) in rows {
        let rate = result.discarded as f64 / result.seconds;
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} |",
            dropper.name(),
            result.sent as f64 / result.seconds,
            rate,
            rate / xdp_rate,
            result.cpu_ns as f64 / result.discarded.max(1) as f64
        );
    }
    println!(
        "\nOn veth the sender builds a full skb before the receiver's XDP runs, and veth first \
         copies each skb into a page with XDP headroom, so the sender dominates every row and \
         XDP pays a copy the later hooks do not. CPU time is the whole machine's, sender \
         included. On a physical NIC, native XDP runs before any skb exists."
    );
    Ok(())
}

fn flood_once(dropper: Dropper, seconds: u64) -> anyhow::Result<FloodResult> {
    let sink = NetNs::new("bsink");
    let source = NetNs::new("bsrc");
    let link = VethLink::new(&sink, &source, "bench");
    link.add_addr(Side::A, &format!("{SINK}/24"));
    link.add_addr(Side::B, &format!("{FLOODER}/24"));
    // A static neighbour entry: no ARP in the measurement.
    let mac = link.a.mac.map(|b| format!("{b:02x}")).join(":");
    source.ip(&[
        "neigh",
        "replace",
        &SINK.to_string(),
        "lladdr",
        &mac,
        "dev",
        &link.b.name,
        "nud",
        "permanent",
    ]);

    // Keep the firewall alive for the measurement; dropping it detaches.
    let mut xdp = None;
    let sink_dev = link.a.name.clone();
    match dropper {
        Dropper::None => {}
        Dropper::Xdp | Dropper::XdpSkb => {
            let mode = if matches!(dropper, Dropper::Xdp) {
                XdpMode::Native
            } else {
                XdpMode::Skb
            };
            let firewall = FirewallConfig {
                policy: Policy::DenyList,
                protected_ports: Default::default(),
                rules: vec![CidrRule {
                    net: IpNet::from(IpAddr::V4(FLOODER)),
                    action: Action::Deny,
                    origin: "bench".into(),
                    shadow: false,
                }],
                rate_limit: None,
            };
            xdp = Some(sink.enter(|| -> anyhow::Result<XdpFirewall> {
                let mut xdp = XdpFirewall::load(&XdpConfig {
                    mode,
                    interfaces: vec![sink_dev.clone()],
                    max_rules_v4: 16,
                    max_rules_v6: 16,
                    max_sources: 1024,
                    max_bans: 16,
                })?;
                xdp.apply(&firewall)?;
                xdp.attach(&sink_dev, mode)?;
                Ok(xdp)
            })?);
        }
        Dropper::IptablesRaw => {
            sink.run(&[
                "iptables",
                "-t",
                "raw",
                "-A",
                "PREROUTING",
                "-s",
                &FLOODER.to_string(),
                "-j",
                "DROP",
            ]);
        }
        Dropper::NftIngress => {
            let chain =
                format!("{{ type filter hook ingress device \"{sink_dev}\" priority -500; }}");
            sink.run(&["nft", "add", "table", "netdev", "bench"]);
            sink.run(&["nft", "add", "chain", "netdev", "bench", "ingress", &chain]);
            let source = FLOODER.to_string();
            sink.run(&[
                "nft", "add", "rule", "netdev", "bench", "ingress", "ip", "saddr", &source,
                "counter", "drop",
            ]);
        }
    }

    let socket =
        gateway_tests::traffic::udp_sender(&source, SocketAddr::new(FLOODER.into(), 40000));
    let cpu_before = busy_cpu_ns()?;
    let started = Instant::now();
    let sent = send_flood(&socket, SocketAddr::new(SINK.into(), FLOOD_PORT), seconds)?;
    let elapsed = started.elapsed().as_secs_f64();
    // Let the receiver finish what is queued before reading counters.
    std::thread::sleep(Duration::from_millis(200));
    let cpu_ns = busy_cpu_ns()? - cpu_before;

    let discarded = match dropper {
        Dropper::None => udp_no_port_errors(&sink)?,
        Dropper::Xdp | Dropper::XdpSkb => {
            let xdp = xdp.as_ref().expect("attached");
            xdp.counters()?
                .into_iter()
                .find(|(reason, _)| *reason == Reason::DroppedDeny)
                .map(|(_, counter)| counter.packets)
                .unwrap_or(0)
        }
        Dropper::IptablesRaw => {
            let out = sink.run(&["iptables", "-t", "raw", "-L", "PREROUTING", "-nvx"]);
            first_rule_packets(&out).context("reading the iptables counter")?
        }
        Dropper::NftIngress => {
            let out = sink.run(&["nft", "list", "table", "netdev", "bench"]);
            out.split("counter packets ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .context("reading the nft counter")?
        }
    };
    drop(xdp);
    Ok(FloodResult {
        sent,
        discarded,
        seconds: elapsed,
        cpu_ns,
    })
}

/// Sends 18-byte datagrams with `sendmmsg` in batches for `seconds`; returns how many went out.
pub fn send_flood(
    socket: &UdpSocket,
    destination: SocketAddr,
    seconds: u64,
) -> anyhow::Result<u64> {
    const BATCH: usize = 64;
    let SocketAddr::V4(destination) = destination else {
        bail!("IPv4 only");
    };
    let mut address = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: destination.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*destination.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut payload = [0u8; 18];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: zeroed mmsghdr is valid; every pointer set below outlives the sends.
    let mut messages: Vec<libc::mmsghdr> = (0..BATCH)
        .map(|_| {
            let mut message: libc::mmsghdr = unsafe { std::mem::zeroed() };
            message.msg_hdr.msg_name = (&raw mut address).cast();
            message.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            message.msg_hdr.msg_iov = &raw mut iov;
            message.msg_hdr.msg_iovlen = 1;
            message
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut sent = 0u64;
    // Bounded by the deadline; checked every batch.
    while Instant::now() < deadline {
        // SAFETY: `messages` holds BATCH valid headers.
        let n =
            unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    Ok(sent)
}

/// Busy CPU time of the whole machine (everything but idle and iowait), in ns.
fn busy_cpu_ns() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: u64 = fields
        .iter()
        .enumerate()
        .filter(|(index, _)| ![3, 4].contains(index))
        .take(8)
        .map(|(_, value)| value)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(busy * 1_000_000_000 / ticks)
}

fn udp_no_port_errors(ns: &NetNs) -> anyhow::Result<u64> {
    let snmp = ns.run(&["cat", "/proc/net/snmp"]);
    let mut udp = snmp.lines().filter(|line| line.starts_with("Udp:"));
    let (names, values) = (
        udp.next().context("Udp header")?,
        udp.next().context("Udp values")?,
    );
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "NoPorts")
        .and_then(|(_, value)| value.parse().ok())
        .context("Udp NoPorts")
}

fn first_rule_packets(listing: &str) -> Option<u64> {
    listing
        .lines()
        .skip(2)
        .find_map(|line| line.split_whitespace().next()?.parse().ok())
}

fn command_line(args: &[&str]) -> String {
    std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|error| format!("unavailable ({error})"))
}

//! `bench defend`: how many TCP connections a second a known-good client completes to the
//! protected port while another namespace floods that port, with under-attack mode off and
//! on, in one run.
//!
//! Three namespaces made here: `sink` (the XDP program on both of its veth ends, and a TCP
//! server that accepts and closes), `good` (the known-good client, connecting in a loop) and
//! `flood` (a UDP flood to the same port from an unknown source). With the mode off the
//! flood reaches the sink's stack; on, XDP drops it (beyond a budget of one new source a
//! second) and admits the known-good client.

use std::{
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::bail;
use gateway::{
    config::{Config, FirewallConfig, XdpConfig, XdpMode},
    xdp::{NewSources, XdpFirewall},
};
use gateway_common::Reason;
use gateway_tests::{NetNs, VethLink, netns::Side};

const PORT: u16 = 8080;
const SINK_GOOD: Ipv4Addr = Ipv4Addr::new(10, 97, 1, 1);
const GOOD: Ipv4Addr = Ipv4Addr::new(10, 97, 1, 2);
const SINK_FLOOD: Ipv4Addr = Ipv4Addr::new(10, 97, 2, 1);
const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 97, 2, 2);

pub fn run(args: &[String]) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench defend needs root (BPF, namespaces)");
    }
    let mut seconds = 5u64;
    for (arg, value) in crate::options::pairs(args)? {
        match arg {
            "--seconds" => seconds = value.parse()?,
            _ => bail!("unknown option {arg}"),
        }
    }
    println!(
        "## A known-good client's connections/s while another namespace floods the protected \
         port ({seconds} s each, UDP flood with sendmmsg, TCP connect + close)"
    );
    println!();
    println!(
        "| under-attack mode | flood | good client conns/s | flood sent/s | flood dropped by XDP/s |"
    );
    println!("|---|---|---:|---:|---:|");
    let mut rows = Vec::new();
    for (under_attack, flood) in [(false, false), (false, true), (true, true)] {
        let row = measure(under_attack, flood, seconds)?;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} |",
            if under_attack { "on" } else { "off" },
            if flood { "yes" } else { "no" },
            row.connections as f64 / row.seconds,
            row.flood_sent as f64 / row.seconds,
            row.flood_dropped as f64 / row.seconds,
        );
        rows.push(row);
    }
    let rate = |row: &Row| row.connections as f64 / row.seconds;
    println!(
        "\nUnder the flood, mode on / off: {:.2}x the known-good client's connections/s \
         (no flood: {:.0}/s).",
        rate(&rows[2]) / rate(&rows[1]).max(1.0),
        rate(&rows[0])
    );
    Ok(())
}

struct Row {
    connections: u64,
    flood_sent: u64,
    flood_dropped: u64,
    seconds: f64,
}

fn neighbour(ns: &NetNs, address: Ipv4Addr, mac: [u8; 6], dev: &str) {
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    ns.ip(&[
        "neigh",
        "replace",
        &address.to_string(),
        "lladdr",
        &mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

fn measure(under_attack: bool, flood: bool, seconds: u64) -> anyhow::Result<Row> {
    let sink = NetNs::new("bdsink");
    let good = NetNs::new("bdgood");
    let flooder = NetNs::new("bdflood");
    let good_link = VethLink::new(&sink, &good, "bdg");
    let flood_link = VethLink::new(&sink, &flooder, "bdf");
    good_link.add_addr(Side::A, &format!("{SINK_GOOD}/24"));
    good_link.add_addr(Side::B, &format!("{GOOD}/24"));
    flood_link.add_addr(Side::A, &format!("{SINK_FLOOD}/24"));
    flood_link.add_addr(Side::B, &format!("{FLOODER}/24"));
    neighbour(&good, SINK_GOOD, good_link.a.mac, &good_link.b.name);
    neighbour(&sink, GOOD, good_link.b.mac, &good_link.a.name);
    neighbour(&flooder, SINK_FLOOD, flood_link.a.mac, &flood_link.b.name);
    neighbour(&sink, FLOODER, flood_link.b.mac, &flood_link.a.name);

    let interfaces = vec![good_link.a.name.clone(), flood_link.a.name.clone()];
    let xdp = sink.enter(|| -> anyhow::Result<XdpFirewall> {
        let mut xdp = XdpFirewall::load(&XdpConfig {
            mode: XdpMode::Native,
            interfaces: interfaces.clone(),
            max_rules_v4: 16,
            max_rules_v6: 16,
            max_sources: 1024,
            max_bans: 16,
        })?;
        let firewall: FirewallConfig = Config::parse(&format!(
            "[xdp]\nmode = \"off\"\n[firewall]\nprotected_ports = [{PORT}]"
        ))
        .map_err(|error| anyhow::anyhow!("bench config: {error:?}"))?
        .firewall;
        xdp.apply(&firewall)?;
        for interface in &interfaces {
            xdp.attach(interface, XdpMode::Native)?;
        }
        Ok(xdp)
    })?;
    let mut xdp = xdp;
    xdp.mark_known_good(GOOD.into(), gateway::xdp::now() + Duration::from_secs(3600))?;
    xdp.set_under_attack(
        under_attack,
        &NewSources {
            // One new source a second, admitted for 50 ms: a single flooding source that wins
            // the budget passes for at most 5% of the time.
            per_second: 1,
            burst: 1,
            probation: Duration::from_millis(50),
        },
    )?;

    // The server: accept and close, on its own thread, until told to stop.
    let listener = sink.enter(|| TcpListener::bind(SocketAddr::new(SINK_GOOD.into(), PORT)))?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => drop(stream),
                    Err(_) => std::thread::sleep(Duration::from_micros(100)),
                }
            }
        })
    };
    let flood_thread = flood.then(|| {
        let socket =
            gateway_tests::traffic::udp_sender(&flooder, SocketAddr::new(FLOODER.into(), 40000));
        std::thread::spawn(move || {
            crate::xdp::send_flood(&socket, SocketAddr::new(SINK_FLOOD.into(), PORT), seconds)
        })
    });
    let started = Instant::now();
    let connections = good.enter(|| {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let target = SocketAddr::new(SINK_GOOD.into(), PORT);
        let mut done = 0u64;
        while Instant::now() < deadline {
            if let Ok(mut stream) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut byte = [0u8; 1];
                // The server closes: EOF completes the exchange.
                if matches!(stream.read(&mut byte), Ok(0)) {
                    done += 1;
                }
            }
        }
        done
    });
    let elapsed = started.elapsed().as_secs_f64();
    let flood_sent = match flood_thread {
        Some(thread) => thread
            .join()
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??,
        None => 0,
    };
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    let flood_dropped = xdp
        .counters()?
        .into_iter()
        .find(|(reason, _)| *reason == Reason::DroppedUnderAttack)
        .map_or(0, |(_, counter)| counter.packets);
    xdp.detach_all();
    Ok(Row {
        connections,
        flood_sent,
        flood_dropped,
        seconds: elapsed,
    })
}

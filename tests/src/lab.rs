//! The two-namespace lab the kernel tests share: a server namespace where the gateway runs
//! and attaches XDP (native) to its veth end, a client namespace sending from an allowed and
//! a denied address (IPv4 and IPv6), and static neighbours so that no ARP or neighbour
//! discovery crosses the link: drop counters see only the test's packets.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use crate::{
    Gateway, NetNs, VethLink, kernel_tests_enabled,
    netns::Side,
    traffic::{
        accept_timeout, recv_until_sentinel, tcp_connect_attempt, tcp_connect_from, tcp_listener,
        udp_receiver, udp_send_from,
    },
};

pub const SERVER_V4: &str = "10.99.0.1";
pub const ALLOWED_V4: &str = "10.99.0.2";
pub const DENIED_V4: &str = "10.99.0.3";
pub const SERVER_V6: &str = "fd00:99::1";
pub const ALLOWED_V6: &str = "fd00:99::2";
pub const DENIED_V6: &str = "fd00:99::3";

/// Long enough for a SYN to be answered on a veth, far below the kernel's 1 s SYN
/// retransmission, so a dropped connect has sent exactly one SYN when it is read.
pub const DROPPED_CONNECT_WAIT: Duration = Duration::from_millis(300);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const SENTINEL_WAIT: Duration = Duration::from_secs(5);

/// Server and client namespaces, the veth between them, addresses and static neighbours
/// (no ARP or neighbour discovery crosses the link, so drop counters only see the test's
/// packets).
pub struct Lab {
    // Field order is drop order: the gateway stops before its namespace goes.
    pub gateway: Option<Gateway>,
    pub link: VethLink,
    pub client: NetNs,
    pub server: NetNs,
    /// Holds the daemon's state file, so a restarted gateway finds what the last one saved.
    pub state_dir: tempfile::TempDir,
}

impl Lab {
    pub fn new(test: &str) -> Option<Lab> {
        if !kernel_tests_enabled(test) {
            return None;
        }
        let server = NetNs::new("srv");
        let client = NetNs::new("cli");
        let link = VethLink::new(&server, &client, test);
        link.add_addr(Side::A, &format!("{SERVER_V4}/24"));
        link.add_addr(Side::A, &format!("{SERVER_V6}/64"));
        for address in [ALLOWED_V4, DENIED_V4] {
            link.add_addr(Side::B, &format!("{address}/24"));
        }
        for address in [ALLOWED_V6, DENIED_V6] {
            link.add_addr(Side::B, &format!("{address}/64"));
        }
        let mac = |bytes: [u8; 6]| bytes.map(|b| format!("{b:02x}")).join(":");
        for address in [SERVER_V4, SERVER_V6] {
            client.ip(&[
                "neigh",
                "replace",
                address,
                "lladdr",
                &mac(link.a.mac),
                "dev",
                &link.b.name,
                "nud",
                "permanent",
            ]);
        }
        for address in [ALLOWED_V4, DENIED_V4, ALLOWED_V6, DENIED_V6] {
            server.ip(&[
                "neigh",
                "replace",
                address,
                "lladdr",
                &mac(link.b.mac),
                "dev",
                &link.a.name,
                "nud",
                "permanent",
            ]);
        }
        Some(Lab {
            gateway: None,
            link,
            client,
            server,
            state_dir: tempfile::tempdir().expect("a temporary directory"),
        })
    }

    /// The daemon's state file (operator rules and bans).
    pub fn state_file(&self) -> std::path::PathBuf {
        self.state_dir.path().join("state.json")
    }

    /// The daemon's firewall store (beside the state file, as the config defaults it).
    pub fn store_file(&self) -> std::path::PathBuf {
        self.state_dir.path().join("firewall.redb")
    }

    /// Starts the gateway in the server namespace with this `[firewall]` section (stopping
    /// a running one first).
    pub fn start(&mut self, firewall: &str) -> &Gateway {
        drop(self.gateway.take());
        let config = format!(
            "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{}\"\n[xdp]\nmode = \"native\"\ninterfaces = [\"{}\"]\n[firewall]\n{firewall}",
            self.state_file().display(),
            self.link.a.name
        );
        self.gateway
            .insert(Gateway::start(Some(&self.server), &config))
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("started")
    }

    pub fn count(&self, reason: &str) -> (u64, u64) {
        self.gateway().reason(reason)
    }

    pub fn udp_receiver(&self, ip: &str, port: u16) -> UdpSocket {
        udp_receiver(&self.server, addr(ip, port))
    }

    /// Sends `denied` datagrams from `from_denied`, then `allowed` ones and a sentinel from
    /// `from_allowed`; returns the sources of what arrived before the sentinel.
    pub fn udp_exchange(
        &self,
        receiver: &UdpSocket,
        (from_denied, denied): (&str, usize),
        (from_allowed, allowed): (&str, usize),
    ) -> Vec<IpAddr> {
        let to = receiver.local_addr().unwrap();
        for i in 0..denied {
            udp_send_from(
                &self.client,
                addr(from_denied, 0),
                to,
                format!("denied-{i}").as_bytes(),
            );
        }
        for i in 0..allowed {
            udp_send_from(
                &self.client,
                addr(from_allowed, 0),
                to,
                format!("passed-{i}").as_bytes(),
            );
        }
        udp_send_from(&self.client, addr(from_allowed, 0), to, b"sentinel");
        recv_until_sentinel(receiver, b"sentinel", SENTINEL_WAIT)
            .into_iter()
            .map(|(source, _)| source.ip())
            .collect()
    }

    /// A TCP connection from `from` that must work: connect, echo one message.
    pub fn tcp_works(&self, from: &str, to: SocketAddr) {
        let listener = tcp_listener(&self.server, to);
        let mut client = tcp_connect_from(&self.client, addr(from, 0), to, CONNECT_TIMEOUT)
            .unwrap_or_else(|e| {
                panic!("{from} -> {to} must connect: {e}\n{}", self.gateway().log())
            });
        let mut served = accept_timeout(&listener, CONNECT_TIMEOUT).expect("accepted");
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        served.set_read_timeout(Some(CONNECT_TIMEOUT)).unwrap();
        served.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
    }

    /// A TCP connect from `from` that must be dropped; returns how many SYNs it sent.
    pub fn tcp_dropped(&self, from: &str, to: SocketAddr) -> u64 {
        let _listener = tcp_listener(&self.server, to);
        let attempt = tcp_connect_attempt(&self.client, addr(from, 0), to, DROPPED_CONNECT_WAIT);
        let error = attempt
            .result
            .as_ref()
            .expect_err("the connect must not succeed");
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::TimedOut,
            "{from} -> {to}: {error}"
        );
        u64::from(attempt.syns_sent())
    }
}

pub fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Bytes of a UDP datagram with `payload` bytes, as XDP counts it (Ethernet frame, no FCS).
pub fn udp_frame_len(v6: bool, payload: usize) -> u64 {
    (14 + if v6 { 40 } else { 20 } + 8 + payload) as u64
}

//! The cluster lab: two gateway namespaces (A and B), each with its XDP program on the veth
//! to a shared client namespace, and a Redis namespace reachable from both over veths of
//! their own (not behind XDP). The client owns one source address, [`CLIENT`], on its
//! loopback and reaches A and B from it, so "that source" is the same at both nodes.
//!
//! ```text
//!            10.77.1.0/24            10.77.3.0/24
//!  client ---------------- A (XDP) ---------------- redis
//!  10.77.9.9              B (XDP) ----------------  (one redis-server, two addresses)
//!         ---------------- 10.77.2.0/24      10.77.4.0/24
//! ```

use std::time::{Duration, Instant};

use crate::{
    Gateway, NetNs, Side, VethLink, kernel_tests_enabled,
    redis::{RedisServer, redis_available},
};

/// The client's one source address.
pub const CLIENT: &str = "10.77.9.9";
pub const A_ADDR: &str = "10.77.1.1";
pub const B_ADDR: &str = "10.77.2.1";
pub const REDIS_FOR_A: &str = "10.77.3.2";
pub const REDIS_FOR_B: &str = "10.77.4.2";
pub const REDIS_PORT: u16 = 6379;

/// One gateway node of the lab.
pub struct Node {
    pub name: &'static str,
    pub gateway: Option<Gateway>,
    /// Its end of the client link (where XDP is attached).
    pub interface: String,
    pub redis_url: String,
}

pub struct ClusterLab {
    // Field order is drop order: gateways, then Redis, then links and namespaces.
    pub a: Node,
    pub b: Node,
    pub redis: RedisServer,
    pub links: Vec<VethLink>,
    pub client: NetNs,
    pub ns_a: NetNs,
    pub ns_b: NetNs,
    pub ns_redis: NetNs,
    /// Keys and channels of this lab's cluster (unique per lab).
    pub prefix: String,
}

impl ClusterLab {
    /// Builds the topology and starts redis-server; `None` (after saying why) where kernel
    /// tests or redis-server are unavailable outside CI.
    pub fn new(test: &str) -> Option<ClusterLab> {
        if !kernel_tests_enabled(test) || !redis_available(test) {
            return None;
        }
        let client = NetNs::new("clcli");
        let ns_a = NetNs::new("clgwa");
        let ns_b = NetNs::new("clgwb");
        let ns_redis = NetNs::new("clrds");
        let client_a = VethLink::new(&ns_a, &client, test);
        let client_b = VethLink::new(&ns_b, &client, test);
        let redis_a = VethLink::new(&ns_a, &ns_redis, test);
        let redis_b = VethLink::new(&ns_b, &ns_redis, test);
        client_a.add_addr(Side::A, &format!("{A_ADDR}/24"));
        client_a.add_addr(Side::B, "10.77.1.2/24");
        client_b.add_addr(Side::A, &format!("{B_ADDR}/24"));
        client_b.add_addr(Side::B, "10.77.2.2/24");
        redis_a.add_addr(Side::A, "10.77.3.1/24");
        redis_a.add_addr(Side::B, &format!("{REDIS_FOR_A}/24"));
        redis_b.add_addr(Side::A, "10.77.4.1/24");
        redis_b.add_addr(Side::B, &format!("{REDIS_FOR_B}/24"));
        client.ip(&["addr", "add", &format!("{CLIENT}/32"), "dev", "lo"]);
        // Replies to the client's address go back over each node's client link.
        ns_a.ip(&["route", "add", &format!("{CLIENT}/32"), "via", "10.77.1.2"]);
        ns_b.ip(&["route", "add", &format!("{CLIENT}/32"), "via", "10.77.2.2"]);
        let redis = RedisServer::start(
            Some(&ns_redis),
            &format!("{REDIS_FOR_A} {REDIS_FOR_B}"),
            REDIS_PORT,
        );
        let prefix = format!("gwt{}x{}", std::process::id(), fastish_id());
        Some(ClusterLab {
            a: Node {
                name: "node-a",
                gateway: None,
                interface: client_a.a.name.clone(),
                redis_url: format!("redis://{REDIS_FOR_A}:{REDIS_PORT}/0"),
            },
            b: Node {
                name: "node-b",
                gateway: None,
                interface: client_b.a.name.clone(),
                redis_url: format!("redis://{REDIS_FOR_B}:{REDIS_PORT}/0"),
            },
            redis,
            links: vec![client_a, client_b, redis_a, redis_b],
            client,
            ns_a,
            ns_b,
            ns_redis,
            prefix,
        })
    }

    /// The node's config: XDP (skb) on its client link, `[cluster]` on the lab's Redis, and
    /// `extra` appended (more sections).
    pub fn config(&self, node: &Node, extra: &str) -> String {
        format!(
            "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{{dir}}/state.json\"\n\
             [xdp]\nmode = \"skb\"\ninterfaces = [\"{}\"]\n\
             [cluster]\nredis = \"{}\"\nnode = \"{}\"\nkey_prefix = \"{}\"\nmetering_interval = \"1s\"\n{extra}",
            node.interface, node.redis_url, node.name, self.prefix
        )
    }

    /// Starts (or restarts, with a fresh state file) node A and waits until it has joined.
    pub fn start_a(&mut self, extra: &str) {
        self.start_a_unjoined(extra);
        wait_log(
            self.gateway_a(),
            "caught up from Redis",
            Duration::from_secs(15),
        );
    }

    /// Starts (or restarts, with a fresh state file) node B and waits until it has joined.
    pub fn start_b(&mut self, extra: &str) {
        self.start_b_unjoined(extra);
        wait_log(
            self.gateway_b(),
            "caught up from Redis",
            Duration::from_secs(15),
        );
    }

    /// Starts node A without waiting for it to reach Redis (which may be down).
    pub fn start_a_unjoined(&mut self, extra: &str) {
        drop(self.a.gateway.take());
        let config = self.config(&self.a, extra);
        self.a.gateway = Some(Gateway::start(Some(&self.ns_a), &config));
    }

    /// Starts node B without waiting for it to reach Redis (which may be down).
    pub fn start_b_unjoined(&mut self, extra: &str) {
        drop(self.b.gateway.take());
        let config = self.config(&self.b, extra);
        self.b.gateway = Some(Gateway::start(Some(&self.ns_b), &config));
    }

    pub fn gateway_a(&self) -> &Gateway {
        self.a.gateway.as_ref().expect("node A started")
    }

    pub fn gateway_b(&self) -> &Gateway {
        self.b.gateway.as_ref().expect("node B started")
    }

    /// Sends one UDP datagram from [`CLIENT`] to `to` (a node's address, port 5000).
    pub fn send(&self, to: &str) {
        crate::traffic::udp_send_from(
            &self.client,
            crate::lab::addr(CLIENT, 0),
            crate::lab::addr(to, 5000),
            b"cluster-lab",
        );
    }

    /// Sends a datagram from [`CLIENT`] to the node every 100 ms until `reason`'s packet count
    /// at that node rises above what it was, or `timeout` passes. Returns how long it took.
    pub fn until_counted(
        &self,
        gateway: &Gateway,
        to: &str,
        reason: &str,
        timeout: Duration,
    ) -> Option<Duration> {
        let before = gateway.reason(reason).0;
        let start = Instant::now();
        while start.elapsed() < timeout {
            self.send(to);
            std::thread::sleep(Duration::from_millis(20));
            if gateway.reason(reason).0 > before {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(80));
        }
        None
    }
}

/// Waits (bounded) until the gateway's log contains `needle`; panics with the log if not.
pub fn wait_log(gateway: &Gateway, needle: &str, timeout: Duration) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if gateway.log().contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{needle:?} not in the gateway's log within {timeout:?}:\n{}",
        gateway.log()
    );
}

/// Counts occurrences of `needle` in the gateway's log.
pub fn log_count(gateway: &Gateway, needle: &str) -> usize {
    gateway.log().matches(needle).count()
}

fn fastish_id() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos())
}

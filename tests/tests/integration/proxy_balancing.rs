//! Balancing algorithms, health checks (active and passive), and retries with their budget,
//! through the real binary with real upstreams on loopback. Every loop is bounded in count
//! and time; nothing asserts on timing, only on who got what.

use std::{
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use crate::proxy_support::{Proxy, RustClient, free_port, upstream_toml};
use gateway_tests::upstream::Upstream;
use hyper::body::Bytes;

/// Any wait for a state change gives up after this.
const WAIT: Duration = Duration::from_secs(20);

fn route(upstream: &str) -> String {
    format!("[[routes]]\nname = \"all\"\nupstream = \"{upstream}\"\n")
}

fn pool(servers: &[&Upstream], extra: &str) -> String {
    let targets: Vec<(SocketAddr, u32)> = servers.iter().map(|s| (s.address(), 1)).collect();
    format!(
        "{}{}",
        upstream_toml("pool", &targets, extra),
        route("pool")
    )
}

/// A loopback address nothing listens on (connections are refused).
fn dead_address() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// Polls `done` (bounded by [`WAIT`]) until it holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// `requests` GETs of `/api` spread over `clients` concurrent keep-alive clients.
fn concurrent_gets(proxy: &Proxy, clients: usize, requests: usize) -> Vec<u16> {
    let url = proxy.url("/api");
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || {
                let client = RustClient::http1();
                (0..requests / clients)
                    .map(|_| client.get(&url, &[]).status)
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|handle| handle.join().unwrap())
        .collect()
}

#[test]
fn least_outstanding_sends_fewer_requests_to_a_slow_target() {
    let (slow, fast) = (Upstream::start("slow"), Upstream::start("fast"));
    slow.set_delay(Duration::from_millis(300));
    let proxy = Proxy::start(&pool(&[&slow, &fast], "balance = \"least-outstanding\""));
    let statuses = concurrent_gets(&proxy, 6, 60);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let (slow, fast) = (slow.hits_on("/api"), fast.hits_on("/api"));
    assert_eq!(slow + fast, 60);
    // Round robin would give each 30; the slow target holds its requests longer.
    assert!(slow * 2 < fast, "slow {slow}, fast {fast}");
}

#[test]
fn p2c_ewma_prefers_the_fast_target() {
    let (slow, fast) = (Upstream::start("slow"), Upstream::start("fast"));
    slow.set_delay(Duration::from_millis(300));
    let proxy = Proxy::start(&pool(&[&slow, &fast], "balance = \"p2c-ewma\""));
    let client = RustClient::http1();
    for _ in 0..30 {
        assert_eq!(client.get(&proxy.url("/api"), &[]).status, 200);
    }
    let (slow, fast) = (slow.hits_on("/api"), fast.hits_on("/api"));
    assert_eq!(slow + fast, 30);
    assert!(slow * 4 < fast, "slow {slow}, fast {fast}");
}

#[test]
fn consistent_hash_is_sticky_and_stable_when_a_target_is_added() {
    let servers: Vec<Upstream> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| Upstream::start(name))
        .collect();
    let refs: Vec<&Upstream> = servers.iter().collect();
    let by_header = "balance = \"consistent-hash\"\nhash_header = \"x-user\"";
    let proxy = Proxy::start(&pool(&refs[..3], by_header));
    let client = RustClient::http1();
    let owner = |user: &str| {
        client
            .get(&proxy.url("/api"), &[("x-user", user)])
            .upstream()
    };
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let before: Vec<String> = users.iter().map(|user| owner(user)).collect();
    // Same key, same target.
    for (user, first) in users.iter().zip(&before) {
        assert_eq!(&owner(user), first, "{user}");
    }
    let mut used = before.clone();
    used.sort();
    used.dedup();
    assert!(used.len() >= 2, "40 keys all on {used:?}");

    proxy.reload(&pool(&refs, by_header));
    proxy.wait_for_log("proxy routes reloaded");
    let after: Vec<String> = users.iter().map(|user| owner(user)).collect();
    let moved: Vec<usize> = (0..users.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    // About 1/4 of the keys should move, all of them to the new target.
    assert!(moved.len() <= 20, "{} of 40 keys moved", moved.len());
    for &i in &moved {
        assert_eq!(
            after[i], "d",
            "{} moved from {} to {}",
            users[i], before[i], after[i]
        );
    }
}

#[test]
fn consistent_hash_on_client_ip_without_the_header() {
    let servers: Vec<Upstream> = ["a", "b", "c"]
        .iter()
        .map(|name| Upstream::start(name))
        .collect();
    let refs: Vec<&Upstream> = servers.iter().collect();
    let proxy = Proxy::start(&pool(&refs, "balance = \"consistent-hash\""));
    let client = RustClient::http1();
    let first = client.get(&proxy.url("/api"), &[]).upstream();
    for _ in 0..10 {
        assert_eq!(client.get(&proxy.url("/api"), &[]).upstream(), first);
    }
}

#[test]
fn health_check_takes_a_failing_target_out_and_brings_it_back() {
    let (sick, well) = (Upstream::start("sick"), Upstream::start("well"));
    sick.set_status_on("/healthz", 500);
    let check = "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", \
                 healthy_threshold = 2, unhealthy_threshold = 2 }";
    let proxy = Proxy::start(&pool(&[&sick, &well], check));
    proxy.wait_for_log("target unhealthy");
    let client = RustClient::http1();
    for _ in 0..10 {
        assert_eq!(client.get(&proxy.url("/api"), &[]).upstream(), "well");
    }
    assert_eq!(sick.hits_on("/api"), 0);

    sick.set_status_on("/healthz", 200);
    proxy.wait_for_log("target healthy again");
    let back: Vec<String> = (0..10)
        .map(|_| client.get(&proxy.url("/api"), &[]).upstream())
        .collect();
    assert!(back.iter().any(|name| name == "sick"), "{back:?}");
}

#[test]
fn no_healthy_target_is_a_503() {
    let sick = Upstream::start("sick");
    sick.set_status_on("/healthz", 500);
    let check = "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", \
                 unhealthy_threshold = 1 }";
    let proxy = Proxy::start(&pool(&[&sick], check));
    proxy.wait_for_log("target unhealthy");
    let reply = RustClient::http1().get(&proxy.url("/api"), &[]);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.json()["error"]["code"], "no_upstream_target");
    assert_eq!(sick.hits_on("/api"), 0);
}

#[test]
fn health_checks_stop_with_their_upstream_and_health_survives_a_reload() {
    let (sick, well, other) = (
        Upstream::start("sick"),
        Upstream::start("well"),
        Upstream::start("other"),
    );
    sick.set_status_on("/healthz", 500);
    let check = "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", \
                 unhealthy_threshold = 1, healthy_threshold = 5 }";
    let proxy = Proxy::start(&pool(&[&sick, &well], check));
    proxy.wait_for_log("target unhealthy");
    // A reload that keeps the pool (with a new upstream beside it): the sick target stays out.
    let with_other = format!(
        "{}{}",
        pool(&[&sick, &well], check),
        upstream_toml("other", &[(other.address(), 1)], "")
    );
    proxy.reload(&with_other);
    proxy.wait_for_log("proxy routes reloaded");
    let client = RustClient::http1();
    for _ in 0..6 {
        assert_eq!(client.get(&proxy.url("/api"), &[]).upstream(), "well");
    }
    assert_eq!(sick.hits_on("/api"), 0);

    // The pool removed: its health checks stop.
    let only_other = format!(
        "{}{}",
        upstream_toml("other", &[(other.address(), 1)], ""),
        route("other")
    );
    let log_before = proxy.gateway.log().matches("proxy routes reloaded").count();
    proxy.reload(&only_other);
    wait_until("the second reload", || {
        proxy.gateway.log().matches("proxy routes reloaded").count() > log_before
    });
    assert_eq!(client.get(&proxy.url("/api"), &[]).upstream(), "other");
    // One probe may have been in flight during the reload.
    let probes = well.hits_on("/healthz");
    thread::sleep(Duration::from_millis(600));
    assert!(
        well.hits_on("/healthz") <= probes + 1,
        "probes went on: {probes} then {}",
        well.hits_on("/healthz")
    );
}

#[test]
fn passive_ejection_on_connect_refused_then_recovery() {
    let live = Upstream::start("live");
    let dead = dead_address();
    let targets = [(live.address(), 1), (dead, 1)];
    let extra = "consecutive_failures = 2\nejection_time = \"2s\"";
    let proxy = Proxy::start(&format!(
        "{}{}",
        upstream_toml("pool", &targets, extra),
        route("pool")
    ));
    let client = RustClient::http1();
    let statuses: Vec<u16> = (0..12)
        .map(|_| client.get(&proxy.url("/api"), &[]).status)
        .collect();
    // Round robin alternates; the second refusal ejects the dead target.
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        2,
        "{statuses:?}"
    );
    assert!(statuses[6..].iter().all(|&s| s == 200), "{statuses:?}");
    proxy.wait_for_log("target ejected");

    // Something listens there now: after the ejection time it gets traffic again.
    let revived = Upstream::start_at("revived", dead);
    wait_until("the ejected target back in rotation", || {
        client.get(&proxy.url("/api"), &[]);
        revived.hits_on("/api") > 0
    });
}

#[test]
fn retry_on_a_refused_connection_reaches_another_target() {
    let live = Upstream::start("live");
    let targets = [(dead_address(), 1), (live.address(), 1)];
    let proxy = Proxy::start(&format!(
        "{}{}",
        upstream_toml("pool", &targets, "retry = { attempts = 1 }"),
        route("pool")
    ));
    let client = RustClient::http1();
    for _ in 0..10 {
        assert_eq!(client.get(&proxy.url("/api"), &[]).upstream(), "live");
    }
    assert_eq!(live.hits_on("/api"), 10);
}

#[test]
fn retry_on_a_configured_status_but_never_a_post() {
    let (failing, good) = (Upstream::start("failing"), Upstream::start("good"));
    failing.set_status(503);
    let retry = "retry = { attempts = 2, on_status = [502, 503] }";
    let proxy = Proxy::start(&pool(&[&failing, &good], retry));
    let client = RustClient::http1();
    for _ in 0..10 {
        assert_eq!(client.get(&proxy.url("/api"), &[]).upstream(), "good");
    }
    let failed_gets = failing.hits_on("/api");
    assert!(failed_gets > 0, "the failing target was never tried");
    assert_eq!(good.hits_on("/api"), 10);

    // POST is not idempotent: the 503 reaches the client, no second target is tried.
    let mut refused = 0;
    for _ in 0..10 {
        let reply = client.send("POST", &proxy.url("/api"), &[], Bytes::from_static(b"x"));
        if reply.status == 503 {
            refused += 1;
        } else {
            assert_eq!(reply.upstream(), "good");
        }
    }
    assert!(refused > 0);
    assert_eq!(failing.hits_on("/api"), failed_gets + refused);
    assert_eq!(good.hits_on("/api"), 10 + 10 - refused);
}

#[test]
fn retry_budget_caps_retries_when_every_target_fails() {
    let servers: Vec<Upstream> = ["a", "b", "c"]
        .iter()
        .map(|name| Upstream::start(name))
        .collect();
    for server in &servers {
        server.set_status(503);
    }
    let refs: Vec<&Upstream> = servers.iter().collect();
    let retry = "retry = { attempts = 2, on_status = [503], budget_percent = 20, \
                 budget_min_per_second = 1 }";
    let proxy = Proxy::start(&pool(&refs, retry));
    let client = RustClient::http1();
    let requests = 60;
    let started = Instant::now();
    for _ in 0..requests {
        assert_eq!(client.get(&proxy.url("/api"), &[]).status, 503);
    }
    let elapsed = started.elapsed().as_secs() as usize;
    let attempts: usize = servers.iter().map(|s| s.hits_on("/api")).sum();
    // Without a budget: 3 tries each (180). With it: 20% of the requests plus 1 retry per
    // second in each 10 s window the run touched.
    let budget = requests / 5 + 10 * (elapsed / 10 + 2);
    assert!(attempts > requests, "no retry at all: {attempts}");
    assert!(
        attempts <= requests + budget,
        "{attempts} attempts for {requests} requests (budget {budget})"
    );
}

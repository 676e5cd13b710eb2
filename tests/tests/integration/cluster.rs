//! Cluster mode against a real redis-server: the library's cluster-wide rate limiter on two
//! "nodes" sharing one quota, its fallback while Redis is down and its recovery; and two real
//! gateways in two namespaces, each with its XDP program, sharing bans and operator rules.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use gateway::{
    cluster::{ClusterLimiter, LimiterOptions, Rate, RedisLink, Source},
    config::OnRedisDown,
};
use gateway_tests::{
    cluster_lab::{B_ADDR, CLIENT, ClusterLab, log_count, wait_log},
    redis::{RedisServer, redis_available},
};

const UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a ban or rule may take to reach the other node before the test fails (the
/// design target is well under a second; the measured time is printed).
const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(5);

fn prefix(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

async fn limiter(redis: &RedisServer, test: &str, on_down: OnRedisDown) -> ClusterLimiter {
    let link = RedisLink::open(&redis.url(), None, None).expect("a valid URL");
    assert!(
        link.wait_up(UP_TIMEOUT).await,
        "Redis at {} not up",
        redis.url()
    );
    ClusterLimiter::new(link, &prefix(test), on_down, LimiterOptions::default())
}

/// Waits (bounded) until the link's health check has seen Redis go (`up = false`) or return.
async fn wait_link(link: &Arc<RedisLink>, up: bool) {
    let start = Instant::now();
    while link.is_up() != up {
        assert!(start.elapsed() < UP_TIMEOUT, "link never became up={up}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_cluster_wide_quota() {
    if !redis_available("two_nodes_share_one_cluster_wide_quota") {
        return;
    }
    let redis = RedisServer::on_loopback();
    let node_a = limiter(&redis, "quota", OnRedisDown::Local).await;
    let node_b = limiter(&redis, "quota", OnRedisDown::Local).await;
    // 6 per minute (one token per 10 s): no refill worth counting while the test runs.
    let (rate, burst) = (Rate::per_minute(6), 20);
    let (mut allowed_a, mut allowed_b, mut refused) = (0, 0, Vec::new());
    // A client alternating between the two nodes, three times the quota.
    for i in 0..60 {
        let (node, allowed) = if i % 2 == 0 {
            (&node_a, &mut allowed_a)
        } else {
            (&node_b, &mut allowed_b)
        };
        let decision = node.check("route|client", rate, burst).await;
        assert_ne!(decision.source, Source::LocalFallback, "Redis is up");
        if decision.allowed {
            *allowed += 1;
        } else {
            refused.push(decision);
        }
    }
    let total = allowed_a + allowed_b;
    eprintln!("cluster quota {burst}: node A admitted {allowed_a}, node B {allowed_b}");
    // Never more than the cluster-wide quota (+1 for a refill during the test); leasing can
    // leave at most (batch - 1) per node unused.
    assert!(total <= burst + 1, "admitted {total} > quota {burst}");
    let batch = burst / 4;
    assert!(
        total >= burst - 2 * (batch - 1),
        "admitted {total}: too few"
    );
    assert!(allowed_a > 0 && allowed_b > 0);
    let last = refused.last().expect("requests past the quota are refused");
    assert_eq!(last.source, Source::Cluster);
    assert!(
        last.retry_after
            .is_some_and(|wait| wait > Duration::ZERO && wait <= Duration::from_secs(10))
    );

    // A different key has its own quota.
    assert!(node_a.check("route|other", rate, burst).await.allowed);
    // Locally limited, the same client would get the quota on each node: 2 x 20.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_mode_and_gcra_refill() {
    if !redis_available("exact_mode_and_gcra_refill") {
        return;
    }
    let redis = RedisServer::on_loopback();
    let link = RedisLink::open(&redis.url(), None, None).unwrap();
    assert!(link.wait_up(UP_TIMEOUT).await);
    let exact = ClusterLimiter::new(
        link,
        &prefix("exact"),
        OnRedisDown::Local,
        LimiterOptions { max_batch: 1 },
    );
    // 10 per second, burst 3: three at once, then one per 100 ms.
    let rate = Rate::per_second(10);
    for remaining in [2, 1, 0] {
        let decision = exact.check("k", rate, 3).await;
        assert!(decision.allowed);
        assert_eq!(decision.remaining, remaining);
        assert_eq!(decision.source, Source::Cluster);
    }
    let refused = exact.check("k", rate, 3).await;
    assert!(!refused.allowed);
    let wait = refused.retry_after.unwrap();
    assert!(wait <= Duration::from_millis(100), "{wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    assert!(
        exact.check("k", rate, 3).await.allowed,
        "refilled after retry_after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_takes_the_configured_fallback_and_recovers() {
    if !redis_available("redis_down_takes_the_configured_fallback_and_recovers") {
        return;
    }
    let mut redis = RedisServer::on_loopback();
    let open = limiter(&redis, "fallback", OnRedisDown::Local).await;
    let closed = limiter(&redis, "fallback", OnRedisDown::Deny).await;
    let rate = Rate::per_minute(6);
    assert_eq!(open.check("k", rate, 3).await.source, Source::Cluster);

    redis.stop();
    // The first decision after the crash may still try Redis (and fail over); the health
    // check notices within a second.
    let _ = open.check("k2", rate, 3).await;
    wait_link(open.link(), false).await;
    wait_link(closed.link(), false).await;
    // Fail open: this node's own GCRA, at the full rate.
    let local: Vec<_> = futures_decisions(&open, "k3", rate, 3, 5).await;
    assert!(
        local.iter().all(|d| d.source == Source::LocalFallback),
        "{local:?}"
    );
    assert_eq!(local.iter().filter(|d| d.allowed).count(), 3, "{local:?}");
    // Fail closed: refused, marked so the throttle stage answers 503.
    let denied = closed.check("k", rate, 3).await;
    assert!(!denied.allowed && denied.is_unavailable(), "{denied:?}");

    redis.restart();
    wait_link(open.link(), true).await;
    wait_link(closed.link(), true).await;
    let back = closed.check("k4", rate, 3).await;
    assert!(back.allowed, "{back:?}");
    assert_eq!(back.source, Source::Cluster);
    assert_eq!(open.check("k4", rate, 3).await.source, Source::Cluster);
}

async fn futures_decisions(
    limiter: &ClusterLimiter,
    key: &str,
    rate: Rate,
    burst: u32,
    count: usize,
) -> Vec<gateway::cluster::Decision> {
    let mut decisions = Vec::new();
    for _ in 0..count {
        decisions.push(limiter.check(key, rate, burst).await);
    }
    decisions
}

// ---- Two real gateways, each with its XDP program ----

fn ok(gateway: &gateway_tests::Gateway, args: &[&str]) -> String {
    let output = gateway.cli(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "gateway {args:?}: {text}");
    text
}

fn banned(gateway: &gateway_tests::Gateway, cidr: &str) -> bool {
    let list = gateway_tests::json_lines(&ok(gateway, &["bans", "--json"]));
    list.as_array()
        .unwrap()
        .iter()
        .any(|ban| ban["cidr"] == cidr)
}

/// Seconds left on the ban of `cidr` at this node (`None`: not banned or no expiry).
fn ban_expiry(gateway: &gateway_tests::Gateway, cidr: &str) -> Option<f64> {
    let list = gateway_tests::json_lines(&ok(gateway, &["bans", "--json"]));
    list.as_array()
        .unwrap()
        .iter()
        .find(|ban| ban["cidr"] == cidr)
        .and_then(|ban| ban["expires_in_secs"].as_f64())
}

fn has_rule(gateway: &gateway_tests::Gateway, cidr: &str) -> bool {
    let list = gateway_tests::json_lines(&ok(gateway, &["firewall", "list", "--json"]));
    list.as_array()
        .unwrap()
        .iter()
        .any(|rule| rule["cidr"] == cidr)
}

#[test]
fn a_ban_on_one_node_drops_at_the_other_and_a_restarted_node_catches_up() {
    let Some(mut lab) = ClusterLab::new("cluster_ban") else {
        return;
    };
    lab.start_a("");
    lab.start_b("");
    let client = format!("{CLIENT}/32");

    // Before the ban, the client's packets pass at B.
    assert!(
        lab.until_counted(lab.gateway_b(), B_ADDR, "passed", Duration::from_secs(3))
            .is_some(),
        "B counts the client's packets as passed"
    );

    // Banned through A's admin socket: B drops the client's packets, in its kernel.
    ok(lab.gateway_a(), &["ban", CLIENT]);
    let took = lab
        .until_counted(
            lab.gateway_b(),
            B_ADDR,
            "dropped-banned",
            PROPAGATION_TIMEOUT,
        )
        .unwrap_or_else(|| {
            panic!(
                "B never dropped the banned source:\n{}",
                lab.gateway_b().log()
            )
        });
    eprintln!("ban on A -> dropped at B after {took:?}");
    assert!(banned(lab.gateway_b(), &client));
    assert!(
        lab.gateway_b()
            .log()
            .contains("applied a change from another node")
    );

    // An operator deny rule added on B reaches A (the other direction).
    ok(
        lab.gateway_b(),
        &[
            "firewall",
            "deny",
            "198.51.100.0/24",
            "--comment",
            "scanner",
        ],
    );
    let start = Instant::now();
    while !has_rule(lab.gateway_a(), "198.51.100.0/24") {
        assert!(
            start.elapsed() < PROPAGATION_TIMEOUT,
            "{}",
            lab.gateway_a().log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("deny rule on B -> on A after {:?}", start.elapsed());

    // B restarts with an empty state file: it catches up from Redis (ban and rule).
    lab.start_b("");
    assert!(
        banned(lab.gateway_b(), &client),
        "{}",
        lab.gateway_b().log()
    );
    assert!(has_rule(lab.gateway_b(), "198.51.100.0/24"));
    assert!(
        lab.until_counted(
            lab.gateway_b(),
            B_ADDR,
            "dropped-banned",
            Duration::from_secs(3)
        )
        .is_some()
    );

    // Lifting the ban on B lifts it on A; removing the rule on A removes it on B.
    ok(lab.gateway_b(), &["unban", CLIENT]);
    ok(lab.gateway_a(), &["firewall", "remove", "198.51.100.0/24"]);
    let start = Instant::now();
    while banned(lab.gateway_a(), &client) || has_rule(lab.gateway_b(), "198.51.100.0/24") {
        assert!(
            start.elapsed() < PROPAGATION_TIMEOUT,
            "{}",
            lab.gateway_a().log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // No loops: each node applied each change once and did not echo it back.
    assert_eq!(
        log_count(lab.gateway_a(), "source banned"),
        1,
        "{}",
        lab.gateway_a().log()
    );
}

#[test]
fn gateways_keep_running_without_redis_and_resume_propagation_when_it_returns() {
    let Some(mut lab) = ClusterLab::new("cluster_outage") else {
        return;
    };
    lab.start_a("");
    lab.start_b("");

    lab.redis.stop();
    wait_log(
        lab.gateway_a(),
        "Redis is unreachable",
        Duration::from_secs(10),
    );
    wait_log(
        lab.gateway_b(),
        "Redis is unreachable",
        Duration::from_secs(10),
    );
    // Still serving the admin API, still enforcing locally.
    ok(lab.gateway_a(), &["ban", CLIENT, "--for", "1h"]);
    assert!(banned(lab.gateway_a(), &format!("{CLIENT}/32")));
    assert!(!banned(lab.gateway_b(), &format!("{CLIENT}/32")));
    // Logged once, not per attempt.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        log_count(lab.gateway_a(), "Redis is unreachable"),
        1,
        "{}",
        lab.gateway_a().log()
    );

    // Redis returns (empty: no persistence): the ban kept by A while Redis was down is
    // published, and B drops the client.
    lab.redis.restart();
    wait_log(
        lab.gateway_a(),
        "Redis is reachable",
        Duration::from_secs(10),
    );
    let took = lab
        .until_counted(
            lab.gateway_b(),
            B_ADDR,
            "dropped-banned",
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| {
            panic!(
                "propagation did not resume:\nA:\n{}\nB:\n{}",
                lab.gateway_a().log(),
                lab.gateway_b().log()
            )
        });
    eprintln!("Redis back -> A's pending ban dropped at B after {took:?}");
    // With its remaining time, not a permanent ban.
    let left = ban_expiry(lab.gateway_b(), &format!("{CLIENT}/32"));
    assert!(
        left.is_some_and(|left| left > 3500.0 && left <= 3600.0),
        "{left:?}"
    );
    // And new changes flow again.
    ok(lab.gateway_b(), &["firewall", "deny", "203.0.113.0/24"]);
    let start = Instant::now();
    while !has_rule(lab.gateway_a(), "203.0.113.0/24") {
        assert!(
            start.elapsed() < PROPAGATION_TIMEOUT,
            "{}",
            lab.gateway_a().log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A CA and a server certificate for 127.0.0.1 / localhost, made with openssl in `dir`.
fn tls_files(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| gateway_tests::openssl_in(dir, args);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=gateway test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    (path("ca.pem"), path("server.pem"), path("server.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_password() {
    if !redis_available("rediss_with_a_private_ca_and_a_password") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path());
    let port = gateway_tests::redis::free_port();
    let extra: Vec<String> = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "s3cret-pass",
    ]
    .map(str::to_owned)
    .to_vec();
    let cli: Vec<String> = ["--tls", "--cacert", &ca, "-a", "s3cret-pass"]
        .map(str::to_owned)
        .to_vec();
    let _redis = RedisServer::on_loopback_with(port, &extra, &cli);
    let url = format!("rediss://127.0.0.1:{port}/0");

    // Through the config, as the daemon reads it: the CA file and the password variable.
    let config = gateway::config::Config::parse(&format!(
        "[xdp]\nmode = \"off\"\n[cluster]\nredis = \"{url}\"\ntls_ca_file = \"{ca}\"\n\
         password_env = \"GATEWAY_TEST_REDIS_PASSWORD_{port}\""
    ));
    assert!(config.is_err(), "the password variable is not set yet");
    let pem = std::fs::read(&ca).unwrap();
    let link = RedisLink::open(&url, Some("s3cret-pass"), Some(&pem)).unwrap();
    assert!(link.wait_up(UP_TIMEOUT).await, "TLS + AUTH to {url}");
    let limiter = ClusterLimiter::new(
        link,
        &prefix("tls"),
        OnRedisDown::Deny,
        LimiterOptions::default(),
    );
    let decision = limiter.check("k", Rate::per_second(10), 5).await;
    assert!(
        decision.allowed && decision.source == Source::Cluster,
        "{decision:?}"
    );

    // A wrong password, or no CA, never comes up.
    let wrong = RedisLink::open(&url, Some("wrong"), Some(&pem)).unwrap();
    let untrusted = RedisLink::open(&url, Some("s3cret-pass"), None).unwrap();
    assert!(!wrong.wait_up(Duration::from_secs(2)).await);
    assert!(!untrusted.wait_up(Duration::from_millis(100)).await);
}

#[test]
fn nodes_start_while_redis_is_down_and_join_when_it_comes() {
    let Some(mut lab) = ClusterLab::new("cluster_late_redis") else {
        return;
    };
    lab.redis.stop();
    // Both start and serve without Redis (the admin socket answers: they are up).
    lab.start_a_unjoined("");
    lab.start_b_unjoined("");
    wait_log(
        lab.gateway_a(),
        "cannot reach Redis yet",
        Duration::from_secs(10),
    );
    ok(lab.gateway_a(), &["firewall", "deny", "192.0.2.0/24"]);

    lab.redis.restart();
    wait_log(
        lab.gateway_b(),
        "caught up from Redis",
        Duration::from_secs(15),
    );
    let start = Instant::now();
    while !has_rule(lab.gateway_b(), "192.0.2.0/24") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "A's rule never reached B:\nA:\n{}\nB:\n{}",
            lab.gateway_a().log(),
            lab.gateway_b().log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And a ban now drops at the other node.
    ok(lab.gateway_b(), &["ban", CLIENT]);
    assert!(
        lab.until_counted(
            lab.gateway_a(),
            gateway_tests::cluster_lab::A_ADDR,
            "dropped-banned",
            PROPAGATION_TIMEOUT
        )
        .is_some(),
        "{}",
        lab.gateway_a().log()
    );
}

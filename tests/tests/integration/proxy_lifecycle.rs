//! The proxy's lifecycle through the real binary: hot reload on SIGHUP (in-flight requests
//! finish on the config they started with; an invalid file changes nothing), graceful drain
//! on SIGTERM, and a daemon without listeners.

use crate::proxy_support;

use std::{
    net::TcpStream,
    thread,
    time::{Duration, Instant},
};

use crate::proxy_support::{IO_TIMEOUT, Proxy, curl, upstream_toml};
use gateway_tests::{Gateway, upstream::Upstream};

fn routes_to(target: &Upstream, others: &[&Upstream]) -> String {
    let mut toml: String = std::iter::once(target)
        .chain(others.iter().copied())
        .map(|server| upstream_toml(server.name(), &[(server.address(), 1)], ""))
        .collect();
    toml.push_str(&format!(
        "[[routes]]\nname = \"all\"\nupstream = \"{}\"\n",
        target.name()
    ));
    toml
}

/// Waits (bounded) until `upstream` has seen `hits` requests.
fn wait_for_hits(upstream: &Upstream, hits: usize) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while upstream.hits() < hits {
        assert!(
            Instant::now() < deadline,
            "{} never got {hits} hits",
            upstream.name()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a request that the upstream holds for `delay_ms`, on its own thread.
fn slow_request(url: String, delay_ms: u64) -> thread::JoinHandle<proxy_support::Reply> {
    thread::spawn(move || curl(&["-H", &format!("x-upstream-delay-ms: {delay_ms}"), &url]))
}

fn signal(gateway: &Gateway, signal: libc::c_int) {
    // SAFETY: kill(2) on our own running child.
    unsafe { libc::kill(gateway.pid() as libc::pid_t, signal) };
}

#[test]
fn reload_changes_routes_while_in_flight_requests_finish() {
    let (old, new) = (Upstream::start("old"), Upstream::start("new"));
    let proxy = Proxy::start(&routes_to(&old, &[&new]));
    assert_eq!(curl(&[&proxy.url("/")]).upstream(), "old");

    let in_flight = slow_request(proxy.url("/slow"), 1500);
    wait_for_hits(&old, 2);
    proxy.reload(&routes_to(&new, &[&old]));
    proxy.wait_for_log("proxy routes reloaded");
    assert_eq!(curl(&[&proxy.url("/")]).upstream(), "new");

    let reply = in_flight.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.upstream(), "old");
    assert_eq!(old.hits(), 2);
}

#[test]
fn gateway_reload_swaps_routes_like_sighup() {
    let (old, new) = (Upstream::start("old"), Upstream::start("new"));
    let proxy = Proxy::start(&routes_to(&old, &[&new]));
    proxy.write_config(&routes_to(&new, &[&old]));
    let output = proxy.gateway.cli(&["reload"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("1 routes"), "{text}");
    assert_eq!(curl(&[&proxy.url("/")]).upstream(), "new");
}

#[test]
fn an_invalid_reload_is_kept_out() {
    let (old, new) = (Upstream::start("old"), Upstream::start("new"));
    let proxy = Proxy::start(&routes_to(&old, &[&new]));

    // Valid TOML, invalid config: a route to an upstream that does not exist.
    proxy.reload(&format!(
        "{}[[routes]]\nname = \"x\"\nupstream = \"missing\"\n",
        routes_to(&new, &[&old])
    ));
    let log = proxy.wait_for_log("reload rejected");
    assert!(
        log.contains("routes[1].upstream: no upstream is named \"missing\""),
        "{log}"
    );
    assert_eq!(curl(&[&proxy.url("/")]).upstream(), "old");

    // Not even TOML.
    proxy.reload("[[routes]\n");
    let deadline = Instant::now() + IO_TIMEOUT;
    while proxy.gateway.log().matches("reload rejected").count() < 2 {
        assert!(Instant::now() < deadline, "{}", proxy.gateway.log());
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(curl(&[&proxy.url("/")]).upstream(), "old");
    assert!(!proxy.gateway.log().contains("proxy routes reloaded"));
}

#[test]
fn shutdown_stops_accepting_and_drains_in_flight_requests() {
    let upstream = Upstream::start("slow");
    let proxy = Proxy::start(&routes_to(&upstream, &[]));
    let in_flight = slow_request(proxy.url("/slow"), 1500);
    wait_for_hits(&upstream, 1);

    signal(&proxy.gateway, libc::SIGTERM);
    proxy.wait_for_log("listener closed");
    assert!(
        TcpStream::connect_timeout(&proxy.address, Duration::from_secs(2)).is_err(),
        "a new connection was accepted while draining"
    );
    let reply = in_flight.join().unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.upstream(), "slow");

    let (status, log) = proxy.gateway.stop();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("proxy drained"), "{log}");
}

#[test]
fn the_drain_deadline_bounds_shutdown() {
    let upstream = Upstream::start("stuck");
    let proxy = Proxy::start(&format!(
        "[limits]\ndrain_timeout = \"500ms\"\n{}",
        routes_to(&upstream, &[])
    ));
    let in_flight = slow_request(proxy.url("/stuck"), 15_000);
    wait_for_hits(&upstream, 1);
    // stop() sends SIGTERM and SIGKILLs after 5 s: a clean exit means the deadline held.
    let (status, log) = proxy.gateway.stop();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("drain deadline"), "{log}");
    // The client sees its connection end rather than an answer.
    let _ = in_flight.join();
}

#[test]
fn runs_without_listeners() {
    let gateway = Gateway::start(
        None,
        "[admin]\nsocket = \"{admin_socket}\"\n[xdp]\nmode = \"off\"\n",
    );
    signal(&gateway, libc::SIGHUP);
    let (status, log) = gateway.stop();
    assert!(status.success(), "{status}\n{log}");
    assert!(!log.contains("proxy listening"), "{log}");
}

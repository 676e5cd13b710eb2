//! The `gateway` binary's commands and every error a user can meet on the way: bad configs,
//! missing privileges, unknown interfaces, a daemon that is not running or not reachable.

use std::{
    os::unix::fs::PermissionsExt as _,
    process::{Command, Output},
};

use gateway_tests::{
    Gateway, NetNs, gateway_bin, gateway_cmd, kernel_tests_enabled, run_expect_failure,
};

fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn check_config(toml: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, toml).unwrap();
    gateway_cmd(&["check-config", path.to_str().unwrap()])
}

/// Runs the gateway binary as the unprivileged user `nobody`, without capabilities.
fn as_nobody(args: &[&str]) -> Output {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(gateway_bin())
        .args(args);
    command.output().expect("running setpriv")
}

#[test]
fn the_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/gateway.toml");
    let output = gateway_cmd(&["check-config", path]);
    assert!(output.status.success(), "{}", output_text(&output));
    assert!(
        output_text(&output).contains("OK"),
        "{}",
        output_text(&output)
    );
}

#[test]
fn check_config_names_the_key_and_the_value() {
    let output = check_config(
        "[xdp]\ninterfaces = [\"lo\"]\n[firewall]\ndeny = [\"10.0.0.0/8\", \"10.0.0.300/8\"]\nprotected_ports = [\"80/sctp\"]",
    );
    assert!(!output.status.success());
    let text = output_text(&output);
    assert!(
        text.contains("firewall.deny[1]: \"10.0.0.300/8\" is not an IP address or CIDR"),
        "{text}"
    );
    assert!(
        text.contains("firewall.protected_ports[0]: \"80/sctp\": unknown protocol"),
        "{text}"
    );

    let output = check_config("[xdp]\ninterfaces = [\"lo\"]\nmood = \"native\"");
    assert!(!output.status.success());
    assert!(
        output_text(&output).contains("unknown field `mood`"),
        "{}",
        output_text(&output)
    );

    let output = gateway_cmd(&["check-config", "/nonexistent/gateway.toml"]);
    assert!(!output.status.success());
    assert!(
        output_text(&output).contains("cannot read config file /nonexistent/gateway.toml"),
        "{}",
        output_text(&output)
    );
}

#[test]
fn check_config_explains_overlapping_rules() {
    let output = check_config(
        "[xdp]\ninterfaces = [\"lo\"]\n[firewall]\ndeny = [\"10.0.0.0/8\"]\nallow = [\"10.1.2.3\", \"192.0.2.0/24\"]",
    );
    assert!(output.status.success(), "{}", output_text(&output));
    let text = output_text(&output);
    assert!(
        text.contains("10.1.2.3/32 is an exception inside firewall.deny[0] (10.0.0.0/8)"),
        "{text}"
    );
    assert!(
        text.contains("192.0.2.0/24 has no effect under policy \"deny-list\""),
        "{text}"
    );

    let output = check_config(
        "[xdp]\ninterfaces = [\"lo\"]\n[firewall]\ndeny = [\"10.0.0.0/8\"]\nallow = [\"10.0.0.0/8\"]",
    );
    assert!(!output.status.success());
    assert!(
        output_text(&output).contains("a source cannot be both allowed and denied"),
        "{}",
        output_text(&output)
    );
}

#[test]
fn check_config_warns_about_interfaces_missing_here() {
    let output = check_config("[xdp]\ninterfaces = [\"gwt-absent0\"]");
    assert!(output.status.success(), "{}", output_text(&output));
    assert!(
        output_text(&output).contains("no interface \"gwt-absent0\" on this host"),
        "{}",
        output_text(&output)
    );
}

#[test]
fn run_reports_an_unknown_interface() {
    if !kernel_tests_enabled("run_reports_an_unknown_interface") {
        return;
    }
    let ns = NetNs::new("noif");
    let log = run_expect_failure(
        Some(&ns),
        "[admin]\nsocket = \"{admin_socket}\"\nstate_file = \"{dir}/state.json\"\n[xdp]\ninterfaces = [\"gwt-absent0\"]",
    );
    assert!(log.contains("xdp.interfaces[0]"), "{log}");
    assert!(
        log.contains("no interface named \"gwt-absent0\" on this host"),
        "{log}"
    );
}

#[test]
fn run_explains_a_native_attach_failure() {
    if !kernel_tests_enabled("run_explains_a_native_attach_failure") {
        return;
    }
    // Loopback has no driver-mode XDP.
    let ns = NetNs::new("native");
    let log = run_expect_failure(
        Some(&ns),
        "[admin]\nsocket = \"{admin_socket}\"\nstate_file = \"{dir}/state.json\"\n[xdp]\nmode = \"native\"\ninterfaces = [\"lo\"]",
    );
    assert!(
        log.contains("attaching the XDP program to lo in native mode failed"),
        "{log}"
    );
    assert!(log.contains("try xdp.mode = \"auto\" or \"skb\""), "{log}");
}

#[test]
fn run_without_privileges_says_what_is_missing() {
    if !kernel_tests_enabled("run_without_privileges_says_what_is_missing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = dir.path().join("gateway.toml");
    let socket = dir.path().join("admin.sock");
    std::fs::write(
        &config,
        format!(
            "[admin]\nsocket = \"{}\"\n[xdp]\ninterfaces = [\"lo\"]",
            socket.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = as_nobody(&["run", "--config", config.to_str().unwrap()]);
    assert!(!output.status.success());
    let text = output_text(&output);
    assert!(
        text.contains("needs root, or the capabilities CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (missing: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)"),
        "{text}"
    );
    assert!(text.contains("xdp.mode = \"off\""), "{text}");
}

#[test]
fn stats_reports_a_daemon_that_is_not_running() {
    let output = gateway_cmd(&["stats", "--socket", "/nonexistent/admin.sock"]);
    assert!(!output.status.success());
    assert!(
        output_text(&output).contains(
            "the gateway daemon is not running: no admin socket at /nonexistent/admin.sock"
        ),
        "{}",
        output_text(&output)
    );
}

#[test]
fn stats_table_json_and_permissions() {
    if !kernel_tests_enabled("stats_table_json_and_permissions") {
        return;
    }
    let ns = NetNs::new("stats");
    let gateway = Gateway::start(
        Some(&ns),
        "[admin]\nsocket = \"{admin_socket}\"\nstate_file = \"{dir}/state.json\"\n[xdp]\nmode = \"skb\"\ninterfaces = [\"lo\"]",
    );
    let table = gateway.cli(&["stats"]);
    assert!(table.status.success(), "{}", output_text(&table));
    let table = output_text(&table);
    assert!(table.starts_with("XDP on lo (skb)\n"), "{table}");
    for reason in [
        "passed",
        "passed-unprotected",
        "passed-not-ip",
        "passed-malformed",
        "passed-fragment",
        "dropped-deny",
        "dropped-not-allowed",
        "dropped-banned",
        "dropped-rate-limited",
        "dropped-syn-rate-limited",
        "dropped-under-attack",
    ] {
        assert!(
            table.contains(&format!("\n{reason} ")),
            "{reason} missing:\n{table}"
        );
    }
    let stats = gateway.stats();
    assert_eq!(stats["xdp"]["enabled"], true);
    assert_eq!(
        stats["xdp"]["reasons"].as_array().unwrap().len(),
        11,
        "{stats}"
    );

    // The admin socket is root-only.
    let socket = gateway.socket().to_str().unwrap().to_owned();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir = gateway.dir().to_owned();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = as_nobody(&["stats", "--socket", &socket]);
    assert!(!output.status.success());
    assert!(
        output_text(&output).contains("permission denied on the admin socket"),
        "{}",
        output_text(&output)
    );
    assert!(
        output_text(&output).contains("run the command as root"),
        "{}",
        output_text(&output)
    );

    // A second daemon on the same socket is refused before it touches any interface.
    let config = std::fs::read_to_string(dir.join("gateway.toml")).unwrap();
    let second = tempfile::tempdir().unwrap();
    let second_config = second.path().join("gateway.toml");
    std::fs::write(&second_config, config).unwrap();
    let output = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(gateway_bin())
        .args(["run", "--config", second_config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        output_text(&output).contains("another gateway is already running"),
        "{}",
        output_text(&output)
    );
}

#[test]
fn stats_with_xdp_off_says_so() {
    let gateway = Gateway::start(
        None,
        "[admin]\nsocket = \"{admin_socket}\"\nstate_file = \"{dir}/state.json\"\n[xdp]\nmode = \"off\"",
    );
    let output = gateway.cli(&["stats"]);
    assert!(output.status.success(), "{}", output_text(&output));
    assert!(
        output_text(&output).contains("XDP is off"),
        "{}",
        output_text(&output)
    );
    assert!(
        gateway
            .log()
            .contains("no packet is filtered in the kernel"),
        "{}",
        gateway.log()
    );
    let (status, log) = gateway.stop();
    assert!(status.success(), "{status}: {log}");
}

#[test]
fn help_shows_examples() {
    let output = gateway_cmd(&["--help"]);
    assert!(output.status.success());
    let text = output_text(&output);
    assert!(text.contains("Examples:"), "{text}");
    for command in ["run", "check-config", "stats"] {
        assert!(text.contains(command), "{command} missing:\n{text}");
    }
}

#[test]
fn the_admin_api_over_loopback_tcp_needs_the_token() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = "correct-horse-battery-staple";
    let _gateway = Gateway::start_with_env(
        None,
        &format!(
            "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{{dir}}/state.json\"\n\
             tcp = \"127.0.0.1:{port}\"\ntoken_env = \"GWT_ADMIN_TOKEN\"\n[xdp]\nmode = \"off\""
        ),
        &[("GWT_ADMIN_TOKEN", token)],
    );
    let address = format!("127.0.0.1:{port}");
    let with = |token: &str| {
        Command::new(gateway_bin())
            .args(["stats", "--json", "--url", &address])
            .env("GATEWAY_ADMIN_TOKEN", token)
            .output()
            .unwrap()
    };
    let good = with(token);
    assert!(good.status.success(), "{}", output_text(&good));
    let stats: serde_json::Value = serde_json::from_slice(&good.stdout).unwrap();
    assert_eq!(stats["xdp"]["enabled"], false);
    let bad = with("wrong-token-wrong-token");
    assert!(!bad.status.success());
    assert!(
        output_text(&bad).contains("401") && output_text(&bad).contains("Bearer"),
        "{}",
        output_text(&bad)
    );
    // Without the CLI: plain curl gets the JSON error and the challenge.
    let curl = Command::new("curl")
        .args(["-s", "-i", &format!("http://{address}/v1/stats")])
        .output()
        .unwrap();
    let curl = String::from_utf8_lossy(&curl.stdout);
    assert!(
        curl.starts_with("HTTP/1.1 401") && curl.contains("www-authenticate: Bearer"),
        "{curl}"
    );
}

#[test]
fn the_admin_tcp_listener_is_loopback_only_and_needs_a_token() {
    let output = check_config("[admin]\ntcp = \"0.0.0.0:9901\"\n[xdp]\nmode = \"off\"");
    assert!(!output.status.success());
    assert!(
        output_text(&output).contains("admin.tcp: 0.0.0.0:9901 is not a loopback address"),
        "{}",
        output_text(&output)
    );
    let output = check_config(
        "[admin]\ntcp = \"127.0.0.1:9901\"\ntoken_env = \"GWT_UNSET_VARIABLE\"\n[xdp]\nmode = \"off\"",
    );
    assert!(!output.status.success());
    assert!(
        output_text(&output)
            .contains("needs a bearer token in the environment variable $GWT_UNSET_VARIABLE"),
        "{}",
        output_text(&output)
    );
}

#[test]
fn the_demo_upstream_describes_each_request() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let mut demo = Command::new(gateway_bin())
        .args(["demo-upstream", &address])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo upstream did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let reply = Command::new("curl")
        .args(["-s", &format!("http://{address}/users/7?x=1")])
        .output()
        .unwrap();
    let _ = demo.kill();
    let _ = demo.wait();
    let reply: serde_json::Value = serde_json::from_slice(&reply.stdout).unwrap();
    assert_eq!(reply["served_by"], address);
    assert_eq!(reply["path"], "/users/7?x=1");
    assert_eq!(reply["method"], "GET");

    let refused = gateway_cmd(&["demo-upstream", "0.0.0.0:9"]);
    assert!(!refused.status.success());
    assert!(
        output_text(&refused).contains("only listens on loopback"),
        "{}",
        output_text(&refused)
    );
}

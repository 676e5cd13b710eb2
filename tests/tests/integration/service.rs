//! The daemon runs as an unprivileged user holding only the capabilities config/gateway.service
//! grants: it attaches XDP and serves a listener on a privileged port. One capability fewer
//! and it says which one is missing.

use std::{os::unix::fs::PermissionsExt as _, process::Command};

use gateway_tests::{NetNs, gateway_bin, kernel_tests_enabled};

/// The capabilities the unit file grants, read from the file itself (so the test proves
/// what the documentation says).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/gateway.service"
    ))
    .expect("config/gateway.service");
    let line = unit
        .lines()
        .find_map(|line| line.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit");
    line.split_whitespace()
        .map(|cap| cap.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// `ip netns exec NS setpriv --reuid=nobody ... gateway run --config FILE` with `caps`.
fn run_as_nobody(ns: &NetNs, caps: &[String], config: &std::path::Path) -> std::process::Child {
    let caps: String = caps
        .iter()
        .map(|cap| format!("+{cap}"))
        .collect::<Vec<_>>()
        .join(",");
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg(gateway_bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning setpriv")
}

#[test]
fn runs_with_only_the_capabilities_of_the_unit_file() {
    if !kernel_tests_enabled("runs_with_only_the_capabilities_of_the_unit_file") {
        return;
    }
    let caps = unit_capabilities();
    assert_eq!(caps, ["bpf", "net_admin", "perfmon", "net_bind_service"]);
    let ns = NetNs::new("svc");
    // A directory the service user may write: the socket and state file live there.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = dir.path().join("gateway.toml");
    let socket = dir.path().join("admin.sock");
    std::fs::write(
        &config,
        format!(
            "[admin]\nsocket = \"{}\"\nstate_file = \"{}/state.json\"\n[xdp]\nmode = \"skb\"\ninterfaces = [\"lo\"]\n\
             [firewall]\ndeny = [\"203.0.113.0/24\"]\n\
             [[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:80\"\nprotocol = \"http\"\n",
            socket.display(),
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut child = run_as_nobody(&ns, &caps, &config);
    // Ready when the admin socket answers (bounded wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            panic!(
                "the gateway exited ({status}): {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(std::time::Instant::now() < deadline, "not ready in 20 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let link = ns.ip(&["link", "show", "dev", "lo"]);
    let curl = ns.exec(&["curl", "-s", "-i", "http://127.0.0.1:80/nowhere"]);
    let stats = Command::new(gateway_bin())
        .args(["stats", "--json", "--socket", socket.to_str().unwrap()])
        .output()
        .unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);

    assert!(
        link.contains("xdpgeneric"),
        "XDP attached by an unprivileged user: {link}\n{log}"
    );
    let curl = String::from_utf8_lossy(&curl.stdout);
    assert!(
        curl.starts_with("HTTP/1.1 404"),
        "the listener on port 80 serves: {curl}\n{log}"
    );
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["xdp"]["interfaces"][0]["mode"], "skb");
    assert!(output.status.success(), "clean stop: {log}");
    assert!(log.contains("XDP program detached"), "{log}");
}

#[test]
fn one_capability_fewer_is_named() {
    if !kernel_tests_enabled("one_capability_fewer_is_named") {
        return;
    }
    let ns = NetNs::new("svc2");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nsocket = \"{0}/admin.sock\"\nstate_file = \"{0}/state.json\"\n[xdp]\nmode = \"skb\"\ninterfaces = [\"lo\"]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let caps: Vec<String> = unit_capabilities()
        .into_iter()
        .filter(|cap| cap != "perfmon")
        .collect();
    let output = run_as_nobody(&ns, &caps, &config)
        .wait_with_output()
        .unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("(missing: CAP_PERFMON)"), "{log}");
}

//! Control-plane input: whatever a client sends to the admin API (socket or TCP), the daemon
//! answers with well-formed JSON, never panics, and never writes a state file it cannot load
//! again. Numbers out of range are 400s that name the field and the range, from the API and
//! from the CLI alike; a state file edited into something out of range loads what it can.

use std::{collections::BTreeSet, os::unix::net::UnixStream, path::Path, time::Duration};

use gateway_tests::{Gateway, gateway_bin, lab::Lab};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One admin request over `stream`: `(status, body)`. Panics if no complete answer comes.
fn exchange(
    mut stream: impl std::io::Read + std::io::Write,
    method: &str,
    target: &str,
    body: &[u8],
    token: Option<&str>,
) -> (u16, Vec<u8>) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n\
         {auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // A daemon that answers before reading the body (GET, 404) may close while we send it:
    // the answer is what counts.
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    let mut answer = Vec::new();
    // A reset after the answer (the daemon closed with our unread body in its buffer) is
    // fine; a reset instead of the answer is caught below.
    if let Err(error) = stream.read_to_end(&mut answer) {
        assert_eq!(
            error.kind(),
            std::io::ErrorKind::ConnectionReset,
            "reading the answer to {method} {target}"
        );
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer to {method} {target}: {text:?}"));
    let start = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |at| at + 4);
    (status, answer[start..].to_vec())
}

fn over_socket(socket: &Path, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let stream = UnixStream::connect(socket).expect("connecting to the admin socket");
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    exchange(stream, method, target, body, None)
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Asserts a 400 whose JSON names `field` and, for a duration, the allowed range.
fn assert_out_of_range(status: u16, body: &[u8], field: &str) {
    let body = json(body);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], field, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(&format!("{field}: ")), "{error}");
    // A number JSON cannot hold as f64 (1e400) fails before any range applies.
    if field.ends_with("_secs") && error.starts_with(field) {
        assert!(
            error.contains("from 0.001 to 315360000 (10 years)"),
            "{error}"
        );
    }
}

/// The lab's gateway with XDP on, so that bans and known-good sources reach the kernel.
fn start_xdp(lab: &mut Lab) -> &Gateway {
    lab.start("")
}

#[test]
fn out_of_range_numbers_are_400s_and_nothing_is_saved() {
    let Some(mut lab) = Lab::new("admin_range") else {
        return;
    };
    let socket = start_xdp(&mut lab).socket().to_owned();
    let state_before = std::fs::read(lab.store_file()).ok();
    // (path, body, field)
    let refused = [
        (
            "/v1/bans",
            r#"{"cidr": "192.0.2.7", "duration_secs": 1e20}"#,
            "duration_secs",
        ),
        (
            "/v1/bans",
            r#"{"cidr": "192.0.2.7", "duration_secs": 315360001}"#,
            "duration_secs",
        ),
        (
            "/v1/bans",
            r#"{"cidr": "192.0.2.7", "duration_secs": -1}"#,
            "duration_secs",
        ),
        (
            "/v1/bans",
            r#"{"cidr": "192.0.2.7", "duration_secs": 0}"#,
            "duration_secs",
        ),
        (
            "/v1/bans",
            r#"{"cidr": "192.0.2.7", "duration_secs": 1e400}"#,
            "duration_secs",
        ),
        (
            "/v1/bans",
            r#"{"cidr": "192.0.2.7", "duration_secs": "10"}"#,
            "duration_secs",
        ),
        ("/v1/bans", r#"{"cidr": "192.0.2.7/8"}"#, "cidr"),
        ("/v1/bans", r#"{"cidr": 7}"#, "cidr"),
        (
            "/v1/rules",
            r#"{"cidr": "192.0.2.0/24", "action": "deny", "ttl_secs": 1e20}"#,
            "ttl_secs",
        ),
        (
            "/v1/rules",
            r#"{"cidr": "192.0.2.0/24", "action": "deny", "ttl_secs": -0.5}"#,
            "ttl_secs",
        ),
        (
            "/v1/rules",
            r#"{"cidr": "192.0.2.0/24", "action": "deny", "ttl_secs": [1]}"#,
            "ttl_secs",
        ),
        (
            "/v1/rules",
            r#"{"cidr": "192.0.2.0/24", "action": "sometimes"}"#,
            "action",
        ),
        (
            "/v1/defend/known-good",
            r#"{"address": "192.0.2.8", "ttl_secs": 1e20}"#,
            "ttl_secs",
        ),
        (
            "/v1/defend/known-good",
            r#"{"address": "192.0.2.8", "ttl_secs": 1.8446744073709552e19}"#,
            "ttl_secs",
        ),
        (
            "/v1/defend/known-good",
            r#"{"address": "192.0.2.8", "ttl_secs": -1}"#,
            "ttl_secs",
        ),
        (
            "/v1/rules/import",
            r#"{"action": "deny", "text": "192.0.2.0/24\n1e20"}"#,
            "text",
        ),
        (
            "/v1/rate-limits",
            r#"{"packets_per_second": 0}"#,
            "packets_per_second",
        ),
        (
            "/v1/rate-limits",
            r#"{"packets_per_second": -1}"#,
            "packets_per_second",
        ),
        (
            "/v1/rate-limits",
            r#"{"packets_per_second": 1e20}"#,
            "packets_per_second",
        ),
        ("/v1/defend/under-attack", r#"{"on": "yes"}"#, "on"),
    ];
    for (path, body, field) in refused {
        let (status, answer) = over_socket(&socket, "POST", path, body.as_bytes());
        assert_out_of_range(status, &answer, field);
    }
    let comment = format!(
        r#"{{"cidr": "192.0.2.7", "comment": "{}"}}"#,
        "x".repeat(1025)
    );
    let (status, answer) = over_socket(&socket, "POST", "/v1/bans", comment.as_bytes());
    assert_out_of_range(status, &answer, "comment");
    // Nothing was kept, in memory or on disk.
    let (_, bans) = over_socket(&socket, "GET", "/v1/bans", b"");
    assert_eq!(json(&bans)["bans"], serde_json::json!([]));
    assert_eq!(std::fs::read(lab.store_file()).ok(), state_before);

    // The longest allowed values are taken, saved, and load again.
    for (path, body) in [
        (
            "/v1/bans",
            r#"{"cidr": "192.0.2.7", "duration_secs": 315360000}"#,
        ),
        (
            "/v1/rules",
            r#"{"cidr": "192.0.2.0/24", "action": "deny", "ttl_secs": 315360000}"#,
        ),
        (
            "/v1/defend/known-good",
            r#"{"address": "192.0.2.8", "ttl_secs": 315360000}"#,
        ),
    ] {
        let (status, answer) = over_socket(&socket, "POST", path, body.as_bytes());
        assert_eq!(status, 200, "{path}: {}", json(&answer));
    }
    let gateway = start_xdp(&mut lab);
    let log = gateway.log();
    assert!(!log.contains("skipped"), "{log}");
    let (_, bans) = over_socket(gateway.socket(), "GET", "/v1/bans", b"");
    let bans = json(&bans);
    let left = bans["bans"][0]["expires_in_secs"].as_f64().unwrap();
    assert!(left > 315_000_000.0 && left <= 315_360_000.0, "{bans}");
}

#[test]
fn the_tcp_admin_api_refuses_them_too() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = "correct-horse-battery-staple";
    let gateway = Gateway::start_with_env(
        None,
        &format!(
            "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{{dir}}/state.json\"\n\
             tcp = \"127.0.0.1:{port}\"\ntoken_env = \"GWT_ADMIN_TOKEN\"\n[xdp]\nmode = \"off\""
        ),
        &[("GWT_ADMIN_TOKEN", token)],
    );
    let post = |path: &str, body: &str| {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        exchange(stream, "POST", path, body.as_bytes(), Some(token))
    };
    let (status, answer) = post(
        "/v1/bans",
        r#"{"cidr": "192.0.2.7", "duration_secs": 1e20}"#,
    );
    assert_out_of_range(status, &answer, "duration_secs");
    let (status, answer) = post(
        "/v1/rules",
        r#"{"cidr": "192.0.2.0/24", "action": "deny", "ttl_secs": 1e20}"#,
    );
    assert_out_of_range(status, &answer, "ttl_secs");
    let (_, bans) = over_socket(gateway.socket(), "GET", "/v1/bans", b"");
    assert_eq!(json(&bans)["bans"], serde_json::json!([]));
    let (status, log) = gateway.stop();
    assert!(status.success(), "{status}: {log}");
}

#[test]
fn the_cli_refuses_what_the_api_refuses_in_the_same_words() {
    let gateway = Gateway::start(
        None,
        "[admin]\nsocket = \"{admin_socket}\"\nstate_file = \"{dir}/state.json\"\n[xdp]\nmode = \"off\"",
    );
    let range = "must be a number of seconds from 0.001 to 315360000 (10 years)";
    let cases: [(&[&str], &str); 4] = [
        (
            &["ban", "192.0.2.7", "--for", "11years"],
            "--for: duration_secs: ",
        ),
        (
            &["firewall", "deny", "192.0.2.0/24", "--ttl", "3651days"],
            "--ttl: ttl_secs: ",
        ),
        (
            &["firewall", "deny", "192.0.2.0/24", "--ttl", "0s"],
            "--ttl: ttl_secs: ",
        ),
        (
            &[
                "defend",
                "known-good",
                "add",
                "192.0.2.8",
                "--ttl",
                "20years",
            ],
            "--ttl: ttl_secs: ",
        ),
    ];
    for (args, prefix) in cases {
        let output = gateway.cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("error: {prefix}{range}")),
            "{args:?}: {stderr}"
        );
    }
    // The API says the same of the same value.
    let (status, answer) = over_socket(
        gateway.socket(),
        "POST",
        "/v1/bans",
        br#"{"cidr": "192.0.2.7", "duration_secs": 347133600}"#,
    );
    assert_eq!(status, 400);
    let cli = gateway.cli(&["ban", "192.0.2.7", "--for", "11years"]);
    let api_error = json(&answer)["error"].as_str().unwrap().to_owned();
    assert!(
        String::from_utf8_lossy(&cli.stderr).contains(&api_error),
        "{api_error}"
    );
    let (_, bans) = over_socket(gateway.socket(), "GET", "/v1/bans", b"");
    assert_eq!(json(&bans)["bans"], serde_json::json!([]));
}

#[test]
fn a_state_file_with_entries_out_of_range_loads_the_rest() {
    let Some(mut lab) = Lab::new("admin_state") else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // What a daemon before the fix wrote for `"duration_secs": 1e20`, next to good entries.
    let state = serde_json::json!({
        "version": 1,
        "rules": [
            {"cidr": "198.51.100.0/24", "action": "deny", "expires_at": 1e20},
            {"cidr": "203.0.113.0/24", "action": "deny", "comment": "kept", "expires_at": now + 3600.0},
            {"cidr": "203.0.113.77/24", "action": "deny"},
        ],
        "bans": [
            {"cidr": "192.0.2.7/32", "expires_at": 1.0000000000179665e20},
            {"cidr": "192.0.2.8/32", "expires_at": f64::MAX},
            {"cidr": "192.0.2.9/32", "comment": "kept"},
            {"cidr": "2001:db8::7/128", "expires_at": now + 3600.0},
            {"cidr": "192.0.2.10/32", "expires_at": "tomorrow"},
        ],
    });
    std::fs::write(lab.state_file(), state.to_string()).unwrap();
    let state_file = lab.state_file();
    let gateway = start_xdp(&mut lab);
    let log = gateway.log();
    // Migrated once into the store: the old file is renamed, never read again.
    assert!(!state_file.exists());
    let mut migrated = state_file.into_os_string();
    migrated.push(".migrated");
    assert!(std::path::Path::new(&migrated).exists());
    assert!(
        log.contains("state file migrated into the firewall store"),
        "{log}"
    );
    for skipped in [
        "198.51.100.0/24",
        "192.0.2.7/32",
        "192.0.2.8/32",
        "203.0.113.77/24",
        "192.0.2.10/32",
    ] {
        assert!(
            log.lines()
                .any(|line| line.contains("skipped") && line.contains(skipped)),
            "{skipped} not named in a warning:\n{log}"
        );
    }
    let (_, bans) = over_socket(gateway.socket(), "GET", "/v1/bans", b"");
    let cidrs: BTreeSet<String> = json(&bans)["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ban| ban["cidr"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        cidrs,
        BTreeSet::from(["192.0.2.9/32".to_owned(), "2001:db8::7/128".to_owned()])
    );
    let (_, rules) = over_socket(gateway.socket(), "GET", "/v1/rules", b"");
    let rules = json(&rules);
    let operator: Vec<&str> = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule["origin"] == "operator")
        .map(|rule| rule["cidr"].as_str().unwrap())
        .collect();
    assert_eq!(operator, ["203.0.113.0/24"], "{rules}");
}

#[test]
fn check_config_into_a_closed_pipe_exits_quietly() {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = std::process::Command::new(gateway_bin())
        .arg("check-config")
        .arg(&config)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // As any Unix filter: ended by SIGPIPE, no message.
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

// ---- Arbitrary input to every endpoint ----

/// Every admin endpoint, with the fields its body has.
const ENDPOINTS: &[(&str, &str, &[&str])] = &[
    ("GET", "/v1/stats", &[]),
    ("GET", "/v1/metering", &[]),
    ("GET", "/v1/metering?cluster=1", &[]),
    ("GET", "/v1/rules", &[]),
    (
        "POST",
        "/v1/rules",
        &["cidr", "action", "comment", "ttl_secs", "shadow"],
    ),
    ("POST", "/v1/rules/remove", &["cidr"]),
    ("POST", "/v1/rules/promote", &["cidr"]),
    ("POST", "/v1/rules/import", &["action", "text", "comment"]),
    ("GET", "/v1/rate-limits", &[]),
    (
        "POST",
        "/v1/rate-limits",
        &[
            "packets_per_second",
            "burst",
            "bytes_per_second",
            "burst_bytes",
            "syn_per_second",
            "syn_burst",
        ],
    ),
    ("POST", "/v1/rate-limits/reset", &[]),
    ("POST", "/v1/reload", &[]),
    ("POST", "/v1/cache/purge", &["key", "prefix"]),
    ("GET", "/v1/defend/under-attack", &[]),
    ("POST", "/v1/defend/under-attack", &["on"]),
    ("POST", "/v1/defend/known-good", &["address", "ttl_secs"]),
    ("GET", "/v1/bans", &[]),
    ("POST", "/v1/bans", &["cidr", "duration_secs", "comment"]),
    ("POST", "/v1/bans/remove", &["cidr"]),
    ("PUT", "/v1/bans", &["cidr"]),
    ("GET", "/v1/nowhere", &[]),
];

/// JSON text of a value meant to hurt: numbers at and past every boundary, numbers as
/// strings, wrong types, nesting, addresses good and bad.
fn nasty_value() -> impl Strategy<Value = String> {
    let numbers = prop_oneof![
        Just("0".to_owned()),
        Just("-0.0".to_owned()),
        Just("0.0005".to_owned()),
        Just("1".to_owned()),
        Just("1.5".to_owned()),
        Just("-1".to_owned()),
        Just("315360000".to_owned()),
        Just("315360001".to_owned()),
        Just("1e20".to_owned()),
        Just("-1e20".to_owned()),
        Just("1e308".to_owned()),
        Just("1e400".to_owned()),
        Just("5e-324".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-9223372036854775808".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (-1e12f64..1e12).prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |n| n.is_finite())
            .prop_map(|n| format!("{n:e}")),
    ];
    let addresses = prop_oneof![
        (0u8..=255).prop_map(|n| format!("192.0.2.{n}")),
        (0u8..=32).prop_map(|len| format!("10.0.0.0/{len}")),
        (0u8..=33).prop_map(|len| format!("198.51.100.0/{len}")),
        (0u16..=0xffff).prop_map(|n| format!("2001:db8::{n:x}")),
        (0u8..=129).prop_map(|len| format!("2001:db8::/{len}")),
        Just("0.0.0.0/0".to_owned()),
        Just("::/0".to_owned()),
        Just("::ffff:192.0.2.1".to_owned()),
        Just("192.0.2.300".to_owned()),
        Just("192.0.2.7/8".to_owned()),
    ];
    let strings = prop_oneof![
        addresses
            .clone()
            .prop_map(|text| serde_json::to_string(&text).unwrap()),
        numbers.clone().prop_map(|n| format!("\"{n}\"")),
        Just("\"deny\"".to_owned()),
        Just("\"allow\"".to_owned()),
        Just("\"\"".to_owned()),
        Just("\"1h\"".to_owned()),
        Just("\"GET a.test/x\"".to_owned()),
        Just("\"/x\"".to_owned()),
        (1usize..3000).prop_map(|n| serde_json::to_string(&"x".repeat(n)).unwrap()),
        proptest::collection::vec(addresses, 0..20).prop_map(|lines| {
            serde_json::to_string(&format!("# import\n{}\n", lines.join("\n"))).unwrap()
        }),
        any::<String>().prop_map(|text| serde_json::to_string(&text).unwrap()),
    ];
    let leaves = prop_oneof![
        4 => numbers,
        4 => strings,
        1 => Just("null".to_owned()),
        1 => Just("true".to_owned()),
        1 => Just("false".to_owned()),
    ];
    leaves.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|items| format!("[{}]", items.join(","))),
            proptest::collection::vec(("[a-z_]{1,12}", inner), 0..4).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(name, value)| format!("\"{name}\":{value}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// JSON text of a value `field` takes when the client means well, so that many requests
/// pass and the daemon has state to save.
fn plausible_value(field: &str) -> BoxedStrategy<String> {
    let text = |value: String| serde_json::to_string(&value).unwrap();
    match field {
        "cidr" | "address" => prop_oneof![
            (0u8..=255).prop_map(|n| format!("192.0.2.{n}")),
            (16u8..=24).prop_map(|len| format!("198.51.100.0/{len}").replace(".100.0/", ".0.0/")),
            (0u16..=0xffff).prop_map(|n| format!("2001:db8::{n:x}")),
        ]
        .prop_map(text)
        .boxed(),
        "action" => prop_oneof![Just("\"deny\"".to_owned()), Just("\"allow\"".to_owned())].boxed(),
        "duration_secs" | "ttl_secs" => prop_oneof![
            (0.001f64..1e6).prop_map(|secs| secs.to_string()),
            (1u64..=315_360_000).prop_map(|secs| secs.to_string()),
        ]
        .boxed(),
        "shadow" | "on" => any::<bool>().prop_map(|on| on.to_string()).boxed(),
        "text" => proptest::collection::vec((0u8..=255, 8u8..=32), 0..20)
            .prop_map(|lines| {
                let lines: Vec<String> = lines
                    .iter()
                    .map(|(n, len)| format!("10.{n}.0.0/{len}"))
                    .collect();
                lines.join("\n")
            })
            .prop_map(text)
            .boxed(),
        "key" | "prefix" | "comment" => "[ -~]{0,40}".prop_map(text).boxed(),
        _ => (1u64..1_000_000).prop_map(|n| n.to_string()).boxed(),
    }
}

/// JSON text of a number at or past a boundary: what breaks code that forgot one.
fn edge_number() -> impl Strategy<Value = String> {
    proptest::sample::select(
        &[
            "0",
            "-0.0",
            "0.0009",
            "0.001",
            "-1",
            "315360000",
            "315360000.5",
            "315360001",
            "1e20",
            "-1e20",
            "18446744073709551615",
            "1.8446744073709552e19",
            "9.3e18",
            "1e308",
            "-1e308",
            "5e-324",
            "4294967296",
            "-9223372036854775808",
        ][..],
    )
    .prop_map(str::to_owned)
}

/// A body for `fields`: each field absent, plausible or any nasty value, sometimes an
/// unknown field; or any JSON at all; or bytes that are not JSON.
fn body(fields: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let values: Vec<_> = fields
        .iter()
        .map(|field| {
            proptest::option::weighted(
                0.9,
                prop_oneof![
                    5 => plausible_value(field),
                    2 => edge_number(),
                    1 => nasty_value(),
                ],
            )
        })
        .collect();
    let shaped = (values, proptest::option::weighted(0.1, nasty_value())).prop_map(
        move |(values, extra)| {
            let mut parts: Vec<String> = fields
                .iter()
                .zip(values)
                .filter_map(|(name, value)| value.map(|value| format!("\"{name}\":{value}")))
                .collect();
            if let Some(extra) = extra {
                parts.push(format!("\"unexpected\":{extra}"));
            }
            format!("{{{}}}", parts.join(",")).into_bytes()
        },
    );
    prop_oneof![
        8 => shaped,
        2 => nasty_value().prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => Just(b"{\"cidr\": \"192.0.2.7\", \"duration_secs\": NaN}".to_vec()),
        1 => Just(b"{\"cidr\": \"192.0.2.7\", \"duration_secs\": Infinity}".to_vec()),
    ]
}

fn request() -> impl Strategy<Value = (&'static str, String, Vec<u8>)> {
    let explain = "[ -~]{0,40}".prop_map(|address: String| {
        let encoded: String = address
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b".:/-".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        ("GET", format!("/v1/explain?address={encoded}"), Vec::new())
    });
    let endpoints = proptest::sample::select(ENDPOINTS).prop_flat_map(|(method, path, fields)| {
        body(fields).prop_map(move |body| (method, path.to_owned(), body))
    });
    prop_oneof![9 => endpoints, 1 => explain]
}

/// `(cidr, seconds left)` of bans or rules.
type Entries = Vec<(String, Option<f64>)>;

/// Every ban, and every operator rule.
fn listing(socket: &Path) -> (Entries, Entries) {
    let pairs = |value: &serde_json::Value, key: &str| -> Entries {
        value[key]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| key == "bans" || entry["origin"] == "operator")
            .map(|entry| {
                (
                    entry["cidr"].as_str().unwrap().to_owned(),
                    entry["expires_in_secs"].as_f64(),
                )
            })
            .collect()
    };
    let (status, bans) = over_socket(socket, "GET", "/v1/bans", b"");
    assert_eq!(status, 200);
    let (status, rules) = over_socket(socket, "GET", "/v1/rules", b"");
    assert_eq!(status, 200);
    (pairs(&json(&bans), "bans"), pairs(&json(&rules), "rules"))
}

/// The entries that will still be there in a minute.
fn lasting(entries: &Entries) -> BTreeSet<String> {
    entries
        .iter()
        .filter(|(_, left)| left.is_none_or(|left| left > 60.0))
        .map(|(cidr, _)| cidr.clone())
        .collect()
}

#[test]
fn arbitrary_json_to_every_admin_endpoint_never_breaks_the_daemon_or_its_state() {
    let Some(mut lab) = Lab::new("admin_fuzz") else {
        return;
    };
    let socket = start_xdp(&mut lab).socket().to_owned();
    // Outside every address the cases use: these must be there after the restart.
    for (path, body) in [
        ("/v1/bans", r#"{"cidr": "203.0.113.7"}"#),
        (
            "/v1/bans",
            r#"{"cidr": "203.0.113.8", "duration_secs": 315360000}"#,
        ),
        (
            "/v1/rules",
            r#"{"cidr": "203.0.113.128/25", "action": "deny", "ttl_secs": 86400}"#,
        ),
    ] {
        let (status, answer) = over_socket(&socket, "POST", path, body.as_bytes());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    }
    let mut runner = TestRunner::new(Config {
        cases: 600,
        // The daemon's state carries over between cases: shrinking would replay on another.
        max_shrink_iters: 0,
        failure_persistence: None,
        ..Config::default()
    });
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    let result = runner.run(&request(), |(method, target, body)| {
        let (status, answer) = over_socket(&socket, method, &target, &body);
        *statuses.borrow_mut().entry(status).or_default() += 1;
        let context = || {
            format!(
                "{method} {target} {} -> {status} {}",
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&answer)
            )
        };
        // Every refusal has a reason: no 500, and nothing the daemon does not answer.
        prop_assert!(
            [200, 400, 404, 409, 422, 503, 507].contains(&status),
            "{}",
            context()
        );
        let answer: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {}", context())))?;
        if status != 200 {
            prop_assert!(answer["error"].is_string(), "{}", context());
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{error}\ndaemon log:\n{}", lab.gateway().log());
    }
    let statuses = statuses.into_inner();
    eprintln!("statuses: {statuses:?}");
    assert!(
        statuses.get(&200).is_some_and(|&n| n > 40) && statuses.get(&400).is_some_and(|&n| n > 40),
        "the inputs should both pass and fail validation often: {statuses:?}"
    );
    let log = lab.gateway().log();
    assert!(!log.contains("panicked"), "{log}");

    // It saved only what it can load: a restart from the state file lists the same.
    let (bans, rules) = listing(&socket);
    eprintln!("{} bans, {} rules to restore", bans.len(), rules.len());
    let gateway = start_xdp(&mut lab);
    let log = gateway.log();
    assert!(
        !log.contains("skipped") && !log.contains("panicked"),
        "{log}"
    );
    let (bans_after, rules_after) = listing(gateway.socket());
    let cidrs = |entries: &Entries| -> BTreeSet<String> {
        entries.iter().map(|(cidr, _)| cidr.clone()).collect()
    };
    assert!(
        lasting(&bans).is_subset(&cidrs(&bans_after)),
        "{bans:?} -> {bans_after:?}"
    );
    assert!(
        cidrs(&bans_after).is_subset(&cidrs(&bans)),
        "{bans:?} -> {bans_after:?}"
    );
    assert!(
        lasting(&rules).is_subset(&cidrs(&rules_after)),
        "{rules:?} -> {rules_after:?}"
    );
    assert!(
        cidrs(&rules_after).is_subset(&cidrs(&rules)),
        "{rules:?} -> {rules_after:?}"
    );
    for seeded in ["203.0.113.7/32", "203.0.113.8/32"] {
        assert!(cidrs(&bans_after).contains(seeded), "{bans_after:?}");
    }
    assert!(
        cidrs(&rules_after).contains("203.0.113.128/25"),
        "{rules_after:?}"
    );
}

//! Timers and caps from the first byte. Every kind of connection that holds a slot without
//! finishing a request (silent, a partial HTTP/2 preface, preface and SETTINGS then
//! silence, a TLS handshake then silence, a partial head) is closed within the timeout, so
//! with the cap full a new client is served soon after. HTTP/2 peers that do not
//! acknowledge SETTINGS, answer PINGs or close after GOAWAY are closed too. Request lines
//! that are not HTTP/1.x get 400 at once; long or unlisted methods get 501. The admin and
//! metrics listeners have caps of their own that never lock out the public listener.
//!
//! Timers are 1 s; assertions are upper bounds with a wide margin (machines are shared).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::proxy_support::{
    IO_TIMEOUT, Proxy, curl, free_port, raw_exchange, raw_status, read_bytes_until_close,
    upstream_toml,
};
use gateway_tests::{Gateway, upstream::Upstream};

/// Upper bound for anything a 1 s timer must have done.
const MARGIN: Duration = Duration::from_secs(15);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u32).to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// `GET /` on stream 1, END_STREAM | END_HEADERS, HPACK without the dynamic table:
/// `:method GET`, `:scheme http`, `:path /` (static entries) and `:authority a`.
fn h2_get() -> Vec<u8> {
    frame(HEADERS, 0x5, 1, &[0x82, 0x86, 0x84, 0x41, 0x01, b'a'])
}

/// The frame types (and flags) in what an HTTP/2 server sent.
fn frame_types(mut bytes: &[u8]) -> Vec<(u8, u8)> {
    let mut types = Vec::new();
    while bytes.len() >= 9 {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        types.push((bytes[3], bytes[4]));
        bytes = &bytes[(9 + length).min(bytes.len())..];
    }
    types
}

fn connect(address: SocketAddr, first: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&address, IO_TIMEOUT).expect("connecting");
    stream.write_all(first).expect("writing");
    stream
}

fn echo_proxy(limits: &str) -> (Upstream, Proxy) {
    let upstream = Upstream::start("echo");
    let toml = format!(
        "[limits]\n{limits}\n{}[[routes]]\nname = \"all\"\nupstream = \"echo\"\n",
        upstream_toml("echo", &[(upstream.address(), 1)], "")
    );
    (upstream, Proxy::start(&toml))
}

/// `openssl s_client` with the handshake done and nothing sent after it.
fn silent_tls_client(port: u16) -> Child {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-brief",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl s_client");
    // -brief prints "CONNECTION ESTABLISHED" once the handshake is done.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    for _ in 0..50 {
        line.clear();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 || line.contains("ESTABLISHED") {
            break;
        }
    }
    assert!(line.contains("ESTABLISHED"), "no TLS handshake: {line:?}");
    child
}

/// Waits (bounded) for `child` to exit: it does when the gateway closes its connection.
fn exits_within(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

#[test]
fn connections_that_never_finish_a_request_free_their_slots_in_time() {
    let upstream = Upstream::start("echo");
    let (plain, tls) = (free_port(), free_port());
    let config = format!(
        "[admin]\nsocket = \"{{admin_socket}}\"\n[xdp]\nmode = \"off\"\n\
         [limits]\nmax_connections = 20\nheader_read_timeout = \"1s\"\n\
         tls_handshake_timeout = \"1s\"\nidle_timeout = \"60s\"\n\
         [[listeners]]\nname = \"plain\"\naddress = \"127.0.0.1:{plain}\"\n\
         [[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:{tls}\"\nprotocol = \"https\"\n\
         [listeners.tls]\n[[listeners.tls.certificates]]\nself_signed = true\n\
         names = [\"localhost\"]\n{}[[routes]]\nname = \"all\"\nupstream = \"echo\"\n",
        upstream_toml("echo", &[(upstream.address(), 1)], "")
    );
    let _gateway = Gateway::start(None, &config);
    let address: SocketAddr = format!("127.0.0.1:{plain}").parse().unwrap();
    let mut settings_and_ack = PREFACE.to_vec();
    settings_and_ack.extend(frame(SETTINGS, 0, 0, &[]));
    settings_and_ack.extend(frame(SETTINGS, 0x1, 0, &[]));
    let kinds: [(&str, Vec<u8>); 5] = [
        ("silent", Vec::new()),
        ("partial HTTP/2 preface", PREFACE[..10].to_vec()),
        ("whole preface, no SETTINGS", PREFACE.to_vec()),
        (
            "preface and SETTINGS (acknowledged), then silent",
            settings_and_ack,
        ),
        (
            "partial HTTP/1.1 head",
            b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec(),
        ),
    ];
    // 4 of each of the 5 plain kinds, minus 4, plus 4 TLS clients: the cap of 20.
    let held_at = Instant::now();
    let mut held = Vec::new();
    for (what, first) in kinds.iter().cycle().take(16) {
        held.push((*what, connect(address, first)));
    }
    let mut tls_clients: Vec<Child> = (0..4).map(|_| silent_tls_client(tls)).collect();

    for (what, stream) in &mut held {
        let left = MARGIN.saturating_sub(held_at.elapsed());
        let (_, closed) = read_bytes_until_close(stream, left);
        assert!(closed, "{what}: still open {MARGIN:?} after connecting");
    }
    for client in &mut tls_clients {
        let left = MARGIN.saturating_sub(held_at.elapsed());
        assert!(
            exits_within(client, left),
            "TLS handshake done, then silent: still open {MARGIN:?} after connecting"
        );
    }
    // The slots are free again: new clients on every protocol are served.
    assert_eq!(curl(&[&format!("http://{address}/new")]).status, 200);
    let h2 = curl(&["--http2-prior-knowledge", &format!("http://{address}/new")]);
    assert_eq!(h2.status, 200);
    let resolve = format!("localhost:{tls}:127.0.0.1");
    let https = curl(&[
        "-k",
        "--resolve",
        &resolve,
        &format!("https://localhost:{tls}/new"),
    ]);
    assert_eq!(https.status, 200);
    assert!(
        held_at.elapsed() < MARGIN + IO_TIMEOUT,
        "served only after {:?}",
        held_at.elapsed()
    );
    assert_eq!(upstream.hits(), 3);
}

#[test]
fn http2_settings_that_are_never_acknowledged_close_the_connection() {
    let (_upstream, proxy) = echo_proxy(
        "header_read_timeout = \"30s\"\nidle_timeout = \"60s\"\nhttp2_settings_timeout = \"1s\"\n\
         http2_keep_alive_interval = \"60s\"",
    );
    let mut no_ack = PREFACE.to_vec();
    no_ack.extend(frame(SETTINGS, 0, 0, &[]));
    no_ack.extend(h2_get());
    let mut stream = connect(proxy.address, &no_ack);
    let (_, closed) = read_bytes_until_close(&mut stream, MARGIN);
    assert!(
        closed,
        "SETTINGS never acknowledged: still open after {MARGIN:?}"
    );

    // The same with the acknowledgement stays open (its timers are 30 s and more).
    let mut acked = PREFACE.to_vec();
    acked.extend(frame(SETTINGS, 0, 0, &[]));
    acked.extend(frame(SETTINGS, 0x1, 0, &[]));
    acked.extend(h2_get());
    let mut stream = connect(proxy.address, &acked);
    let (got, closed) = read_bytes_until_close(&mut stream, Duration::from_secs(3));
    assert!(!closed, "closed although SETTINGS were acknowledged");
    assert!(
        frame_types(&got).iter().any(|t| t.0 == HEADERS),
        "no response: {:?}",
        frame_types(&got)
    );
}

#[test]
fn unanswered_http2_pings_close_the_connection() {
    let (_upstream, proxy) = echo_proxy(
        "header_read_timeout = \"30s\"\nidle_timeout = \"60s\"\n\
         http2_keep_alive_interval = \"1s\"\nhttp2_keep_alive_timeout = \"1s\"",
    );
    let mut request = PREFACE.to_vec();
    request.extend(frame(SETTINGS, 0, 0, &[]));
    request.extend(frame(SETTINGS, 0x1, 0, &[]));
    request.extend(h2_get());
    let mut stream = connect(proxy.address, &request);
    let (got, closed) = read_bytes_until_close(&mut stream, MARGIN);
    let types = frame_types(&got);
    assert!(
        types.iter().any(|t| t.0 == HEADERS),
        "no response: {types:?}"
    );
    assert!(types.contains(&(PING, 0)), "no PING sent: {types:?}");
    assert!(
        closed,
        "PINGs unanswered: still open after {MARGIN:?}: {types:?}"
    );
}

#[test]
fn a_peer_that_ignores_goaway_is_closed_after_the_grace_period() {
    let (_upstream, proxy) = echo_proxy(
        "header_read_timeout = \"30s\"\nidle_timeout = \"1s\"\nclose_grace = \"1s\"\n\
         http2_keep_alive_interval = \"60s\"",
    );
    let mut request = PREFACE.to_vec();
    request.extend(frame(SETTINGS, 0, 0, &[]));
    request.extend(frame(SETTINGS, 0x1, 0, &[]));
    request.extend(h2_get());
    let mut stream = connect(proxy.address, &request);
    let (got, closed) = read_bytes_until_close(&mut stream, MARGIN);
    let types = frame_types(&got);
    assert!(
        types.iter().any(|t| t.0 == HEADERS),
        "no response: {types:?}"
    );
    assert!(types.iter().any(|t| t.0 == GOAWAY), "no GOAWAY: {types:?}");
    assert!(
        closed,
        "GOAWAY ignored: still open after {MARGIN:?}: {types:?}"
    );
}

#[test]
fn request_lines_that_are_not_http_1_get_400_and_a_close_at_once() {
    let (upstream, proxy) = echo_proxy("header_read_timeout = \"30s\"");
    let cases: &[(&str, &[u8])] = &[
        ("HTTP/0.9", b"GET /\r\n"),
        ("HTTP/0.9, bare LF", b"GET /\n"),
        ("HTTP/0.9, longer path", b"GET /index.html\r\n"),
        ("HTTP/0.9, then a blank line", b"GET /\r\n\r\n"),
        ("HTTP/0.9 POST", b"POST /x\r\n\r\n"),
        ("HTTP/0.9 with fields", b"GET /\r\nHost: a\r\n\r\n"),
        (
            "HTTP/2.0 in an HTTP/1 line",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        ),
        (
            "HTTP/2 in an HTTP/1 line",
            b"GET / HTTP/2\r\nHost: a\r\n\r\n",
        ),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
        ("HTTP/1.10", b"GET / HTTP/1.10\r\nHost: a\r\n\r\n"),
        ("HTTP/3.0", b"GET / HTTP/3.0\r\nHost: a\r\n\r\n"),
        ("HTTP/0.9 version", b"GET / HTTP/0.9\r\nHost: a\r\n\r\n"),
        ("HTTP/1 without minor", b"GET / HTTP/1\r\nHost: a\r\n\r\n"),
        ("lowercase version", b"GET / http/1.1\r\nHost: a\r\n\r\n"),
        ("HTTPS/1.1", b"GET / HTTPS/1.1\r\nHost: a\r\n\r\n"),
        (
            "text after the version",
            b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n",
        ),
        ("two spaces", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("leading space", b" GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("tab separator", b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("NUL bytes", b"\x00\x00\x00\x00\r\n\r\n"),
        ("binary garbage", b"\xff\xfe\xfd\xfc\xfb\r\n\r\n"),
        ("a word", b"hello\r\n\r\n"),
        (
            "TLS to a plain listener",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ),
        (
            "preface start, then HTTP/1",
            b"PRI * HTTP/2.0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        ),
        ("PRI in HTTP/1.1", b"PRI * HTTP/1.1\r\nHost: a\r\n\r\n"),
        (
            "asterisk-form with GET",
            b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "asterisk-form with POST",
            b"POST * HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let started = Instant::now();
        let (raw, closed) = raw_exchange(proxy.address, request, Duration::from_secs(10));
        assert_eq!(raw_status(&raw), Some(400), "{what}: {raw:?}");
        assert!(closed, "{what}: not closed after the 400: {raw:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: answered only after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(upstream.hits(), 0);
    // HTTP/1.0 and HTTP/1.1 are served.
    for version in ["HTTP/1.0", "HTTP/1.1"] {
        let request = format!("GET /ok {version}\r\nHost: a\r\nConnection: close\r\n\r\n");
        let (raw, _) = raw_exchange(proxy.address, request.as_bytes(), Duration::from_secs(10));
        assert!(
            raw.starts_with(&format!("{version} 200")) || raw_status(&raw) == Some(200),
            "{version}: {raw}"
        );
    }
}

/// `method` sent raw over HTTP/1.1, and with curl over h2c; the statuses.
/// A refused method also closes the HTTP/1.1 connection at once.
fn statuses(proxy: &Proxy, method: &str) -> (Option<u16>, u16) {
    let request = format!("{method} /m HTTP/1.1\r\nHost: a\r\n\r\n");
    let (raw, closed) = raw_exchange(proxy.address, request.as_bytes(), Duration::from_secs(2));
    if raw_status(&raw) == Some(501) {
        assert!(closed, "{method}: kept open after 501: {raw}");
        assert!(raw.contains("\"code\":\"method_not_implemented\""), "{raw}");
    }
    let h2 = curl(&["--http2-prior-knowledge", "-X", method, &proxy.url("/m")]);
    if h2.status == 501 {
        assert_eq!(
            h2.json()["error"]["code"],
            "method_not_implemented",
            "{h2:?}"
        );
    }
    (raw_status(&raw), h2.status)
}

#[test]
fn long_methods_get_501_on_every_protocol() {
    let (upstream, proxy) = echo_proxy("");
    let refused = [
        "A".repeat(33),
        format!("GET{}", "X".repeat(30)),
        "PROPFIND".repeat(5),
        "A".repeat(1000),
        "A".repeat(16 * 1024),
    ];
    for method in &refused {
        let (h1, h2) = statuses(&proxy, method);
        assert_eq!(
            (h1, h2),
            (Some(501), 501),
            "a method of {} bytes",
            method.len()
        );
    }
    assert_eq!(upstream.hits(), 0);
    // At the limit, and ordinary extension methods, are forwarded.
    for method in ["A".repeat(32), "PURGE".to_owned(), "PROPFIND".to_owned()] {
        let (h1, h2) = statuses(&proxy, &method);
        assert_eq!((h1, h2), (Some(200), 200), "{method}");
    }
    assert_eq!(upstream.hits(), 6);

    // A smaller limit is the operator's to set.
    let (_upstream, proxy) = echo_proxy("max_method_bytes = 4");
    assert_eq!(statuses(&proxy, "GET"), (Some(200), 200));
    assert_eq!(statuses(&proxy, "PATCH"), (Some(501), 501));
}

#[test]
fn methods_outside_the_allow_list_get_501() {
    let (upstream, proxy) = echo_proxy("methods = [\"GET\", \"HEAD\", \"POST\"]");
    for method in [
        "DELETE", "PUT", "PATCH", "OPTIONS", "TRACE", "PURGE", "get", "Post", "GETT",
    ] {
        assert_eq!(statuses(&proxy, method), (Some(501), 501), "{method}");
    }
    assert_eq!(upstream.hits(), 0);
    for method in ["GET", "POST"] {
        assert_eq!(statuses(&proxy, method), (Some(200), 200), "{method}");
    }
    assert_eq!(upstream.hits(), 4);
}

#[test]
fn bad_connection_limits_are_config_errors_that_name_the_key() {
    let cases = [
        ("[limits]\nmax_method_bytes = 0", "limits.max_method_bytes"),
        (
            "[limits]\nmax_method_bytes = 5000",
            "limits.max_method_bytes",
        ),
        ("[limits]\nmethods = [\"G T\"]", "limits.methods[0]"),
        ("[limits]\nmethods = [\"GET\", \"\"]", "limits.methods[1]"),
        ("[limits]\nclose_grace = \"0s\"", "limits.close_grace"),
        (
            "[limits]\nhttp2_settings_timeout = \"soon\"",
            "limits.http2_settings_timeout",
        ),
        (
            "[limits]\nhttp2_keep_alive_interval = \"0s\"",
            "limits.http2_keep_alive_interval",
        ),
        (
            "[limits]\nhttp2_keep_alive_timeout = \"x\"",
            "limits.http2_keep_alive_timeout",
        ),
        (
            "[metrics]\naddress = \"127.0.0.1:9\"\nmax_connections = 0",
            "metrics.max_connections",
        ),
        (
            "[metrics]\naddress = \"127.0.0.1:9\"\nrequest_timeout = \"0s\"",
            "metrics.request_timeout",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (toml, key) in cases {
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, format!("[xdp]\nmode = \"off\"\n{toml}\n")).unwrap();
        let output = gateway_tests::gateway_cmd(&["check-config", path.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "{toml}: accepted");
        assert!(text.contains(key), "{toml}: {key} not named in {text}");
    }
    // [admin] keys too (its section comes first in a file).
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        "[admin]\nmax_connections = 100000\nheader_read_timeout = \"0s\"\n[xdp]\nmode = \"off\"\n",
    )
    .unwrap();
    let output = gateway_tests::gateway_cmd(&["check-config", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(text.contains("admin.max_connections"), "{text}");
    assert!(text.contains("admin.header_read_timeout"), "{text}");
}

#[test]
fn admin_and_metrics_floods_never_lock_out_the_public_listener() {
    let upstream = Upstream::start("echo");
    let (public, admin, metrics) = (free_port(), free_port(), free_port());
    let token = "correct-horse-battery-staple";
    let config = format!(
        "[admin]\nsocket = \"{{admin_socket}}\"\nstate_file = \"{{dir}}/state.json\"\n\
         tcp = \"127.0.0.1:{admin}\"\ntoken_env = \"GWT_ADMIN_TOKEN\"\n\
         max_connections = 4\nheader_read_timeout = \"1s\"\n\
         [metrics]\naddress = \"127.0.0.1:{metrics}\"\nmax_connections = 4\n\
         header_read_timeout = \"1s\"\n\
         [xdp]\nmode = \"off\"\n[limits]\nmax_connections = 20\n\
         [[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:{public}\"\n\
         {}[[routes]]\nname = \"all\"\nupstream = \"echo\"\n",
        upstream_toml("echo", &[(upstream.address(), 1)], "")
    );
    let gateway = Gateway::start_with_env(None, &config, &[("GWT_ADMIN_TOKEN", token)]);
    let log = gateway.log();
    assert!(
        log.contains("RLIMIT_NOFILE"),
        "the open-file limit is not reported:\n{log}"
    );

    // Far more silent connections than either cap (and than the public cap).
    let held_at = Instant::now();
    let mut held = Vec::new();
    for port in [admin, metrics] {
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..50 {
            held.push(connect(address, b""));
        }
    }
    // The public listener serves while they are held.
    for _ in 0..5 {
        assert_eq!(curl(&[&format!("http://127.0.0.1:{public}/x")]).status, 200);
    }
    // Every one of them is closed: over the cap at once, the rest by the header timeout.
    for stream in &mut held {
        let left = MARGIN.saturating_sub(held_at.elapsed());
        let (_, closed) = read_bytes_until_close(stream, left);
        assert!(
            closed,
            "an admin or metrics connection still open after {MARGIN:?}"
        );
    }
    // Then real requests are answered on both.
    let bearer = format!("Authorization: Bearer {token}");
    let stats = curl(&["-H", &bearer, &format!("http://127.0.0.1:{admin}/v1/stats")]);
    assert_eq!(stats.status, 200, "{stats:?}");
    assert_eq!(stats.json()["xdp"]["enabled"], false);
    let health = curl(&[&format!("http://127.0.0.1:{metrics}/healthz")]);
    assert_eq!(health.status, 200, "{health:?}");
    // A head trickled past the admin header timeout is cut off, not served.
    let (raw, closed) = raw_exchange(
        format!("127.0.0.1:{admin}").parse().unwrap(),
        b"GET /v1/stats HTTP/1.1\r\nHost: a\r\n",
        MARGIN,
    );
    assert!(closed, "a partial admin head stayed open: {raw:?}");
    assert_ne!(raw_status(&raw), Some(200), "{raw}");
    assert!(!gateway.log().contains("panicked"));
}

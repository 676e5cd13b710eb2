//! Client-facing limits and malformed requests: each gets its status (431, 413, 400) or a
//! closed connection (slow heads, too many connections), and the gateway keeps serving.

use std::{
    io::Write as _,
    net::TcpStream,
    time::{Duration, Instant},
};

use crate::proxy_support::{
    IO_TIMEOUT, Proxy, RustClient, curl, raw_exchange, raw_status, read_until_close, upstream_toml,
};
use gateway_tests::upstream::Upstream;

fn proxy_with(limits: &str) -> (Upstream, Proxy) {
    let upstream = Upstream::start("echo");
    let toml = format!(
        "[limits]\n{limits}\n{}[[routes]]\nname = \"all\"\nupstream = \"echo\"\n",
        upstream_toml("echo", &[(upstream.address(), 1)], "")
    );
    let proxy = Proxy::start(&toml);
    (upstream, proxy)
}

fn assert_alive(proxy: &Proxy) {
    assert_eq!(curl(&[&proxy.url("/alive")]).status, 200);
    let log = proxy.gateway.log();
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn oversized_request_heads_get_431() {
    let (upstream, proxy) = proxy_with("max_header_bytes = \"4KiB\"");
    // Over the limit but within hyper's read buffer: the gateway's JSON answer.
    let big = format!("X-Big: {}", "a".repeat(6000));
    let reply = curl(&["-H", &big, &proxy.url("/")]);
    assert_eq!(reply.status, 431, "{reply:?}");
    assert_eq!(reply.json()["error"]["code"], "headers_too_large");
    // Far over: refused by the HTTP parser while reading, also 431.
    let huge = format!("X-Huge: {}", "a".repeat(100_000));
    let (raw, _) = raw_exchange(
        proxy.address,
        format!("GET / HTTP/1.1\r\nHost: a\r\n{huge}\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    );
    assert_eq!(raw_status(&raw), Some(431), "{raw}");
    // HTTP/2 too.
    let reply = curl(&["--http2-prior-knowledge", "-H", &big, &proxy.url("/")]);
    assert_eq!(reply.status, 431, "{reply:?}");
    // Just under the limit passes.
    let fits = format!("X-Fits: {}", "a".repeat(3000));
    assert_eq!(curl(&["-H", &fits, &proxy.url("/")]).status, 200);
    assert_eq!(upstream.hits(), 1);
    assert_alive(&proxy);
}

#[test]
fn oversized_bodies_get_413() {
    let (upstream, proxy) = proxy_with("max_body_bytes = \"1KiB\"");
    // Declared too large: refused before anything is read or forwarded.
    let (raw, _) = raw_exchange(
        proxy.address,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(raw_status(&raw), Some(413), "{raw}");
    assert!(raw.contains("\"code\":\"body_too_large\""), "{raw}");
    assert_eq!(upstream.hits(), 0);

    // Streamed (chunked, no length) past the limit: cut off at the limit.
    let client = RustClient::http1();
    let body = hyper::body::Bytes::from(vec![b'x'; 4096]);
    let reply = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &"y".repeat(4096),
        &proxy.url("/upload"),
    ]);
    assert_eq!(reply.status, 413, "{reply:?}");

    // Within the limit, with a length and streamed.
    let reply = client.send("POST", &proxy.url("/upload"), &[], body.slice(..1000));
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.json()["body_bytes"], 1000);
    let reply = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &"y".repeat(1000),
        &proxy.url("/upload"),
    ]);
    assert_eq!(reply.json()["body_bytes"], 1000);
    assert_alive(&proxy);
}

#[test]
fn slow_request_heads_are_cut_off() {
    let (upstream, proxy) = proxy_with("header_read_timeout = \"1s\"");
    // Half a head, then silence: answered with 408 or closed, never served.
    let (raw, closed) = raw_exchange(
        proxy.address,
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        Duration::from_secs(10),
    );
    assert!(closed, "still open after 10 s: {raw:?}");
    assert!(raw.is_empty() || raw_status(&raw) == Some(408), "{raw}");

    // Slowloris: a header line every 200 ms never completes the head in time.
    let mut stream = TcpStream::connect_timeout(&proxy.address, IO_TIMEOUT).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut cut = false;
    for line in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        if stream
            .write_all(format!("X-Line-{line}: 1\r\n").as_bytes())
            .is_err()
            || Instant::now() > deadline
        {
            cut = true;
            break;
        }
    }
    let (raw, closed) = read_until_close(&mut stream, Duration::from_secs(10));
    assert!(cut || closed, "a trickled head was not cut off: {raw:?}");
    assert!(raw.is_empty() || raw_status(&raw) == Some(408), "{raw}");
    assert_eq!(upstream.hits(), 0);
    assert_alive(&proxy);
}

#[test]
fn malformed_requests_get_400_and_never_reach_the_upstream() {
    let (upstream, proxy) = proxy_with("");
    let cases: [(&str, &[u8]); 10] = [
        (
            "Transfer-Encoding not ending in chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        ),
        (
            "differing Content-Length values",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        ),
        (
            "two Host fields",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ),
        (
            "no Host in HTTP/1.1",
            b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
        ),
        (
            "Host with userinfo",
            b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
        ),
        (
            "Host that is not an authority",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        ),
        (
            "space before the colon",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        (
            "bare CR",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Cr: a\rb\r\n\r\n",
        ),
        (
            "not HTTP",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        // The gateway's own 400s keep the connection: stop reading after 2 s.
        let (raw, _) = raw_exchange(proxy.address, request, Duration::from_secs(2));
        assert_eq!(raw_status(&raw), Some(400), "{what}: {raw:?}");
    }
    assert_eq!(upstream.hits(), 0);
    assert_alive(&proxy);
}

/// RFC 9112 6.1 allows either refusing Content-Length with Transfer-Encoding or framing by
/// Transfer-Encoding and closing the connection after: hyper does the latter, so what
/// follows the chunked body can never be read as a smuggled second request.
#[test]
fn content_length_with_transfer_encoding_is_framed_by_chunked_and_closed() {
    let (upstream, proxy) = proxy_with("");
    let (raw, closed) = raw_exchange(
        proxy.address,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        Duration::from_secs(5),
    );
    assert!(closed, "{raw}");
    assert_eq!(
        raw.matches("HTTP/1.1 ").count(),
        1,
        "one response only: {raw}"
    );
    assert!(raw.contains("connection: close"), "{raw}");
    assert!(
        !raw.contains("content-length\":"),
        "the upstream saw Content-Length: {raw}"
    );
    assert!(!raw.contains("/smuggled"), "{raw}");
    assert_eq!(upstream.hits(), 1);
}

#[test]
fn connections_over_the_limit_are_closed() {
    let (_upstream, proxy) = proxy_with("max_connections = 2");
    let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect_timeout(&proxy.address, IO_TIMEOUT).unwrap();
        stream.write_all(request).unwrap();
        let (raw, closed) = read_until_close(&mut stream, Duration::from_millis(500));
        assert_eq!(raw_status(&raw), Some(200), "{raw}");
        assert!(!closed, "keep-alive connection closed");
        open.push(stream);
    }
    // The third is accepted and closed at once, without an answer.
    let (raw, closed) = raw_exchange(proxy.address, request, Duration::from_secs(5));
    assert!(closed && raw.is_empty(), "closed={closed} {raw:?}");
    // Closing one frees its slot (once the gateway notices: bounded retries).
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (raw, _) = raw_exchange(
            proxy.address,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        );
        if raw_status(&raw) == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed: {raw:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let (upstream, proxy) = proxy_with("idle_timeout = \"1s\"\nheader_read_timeout = \"30s\"");
    // HTTP/1.1: answered, kept open, then closed once idle for idle_timeout (well before
    // the 30 s header read timeout that would otherwise also end it).
    let mut stream = TcpStream::connect_timeout(&proxy.address, IO_TIMEOUT).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (raw, closed) = read_until_close(&mut stream, Duration::from_secs(15));
    assert_eq!(raw_status(&raw), Some(200), "{raw}");
    assert!(closed, "an idle connection stayed open for 15 s");
    // A request that takes longer than idle_timeout is not cut: only idle time counts.
    let reply = curl(&["-H", "x-upstream-delay-ms: 1500", &proxy.url("/slow")]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "x-upstream-delay-ms: 1500",
        &proxy.url("/slow"),
    ]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.hits(), 3);
}

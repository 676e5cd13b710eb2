//! HTTP/1.1 keep-alive across the idle phase (serve_http1.rs: between requests the gateway
//! keeps only the socket, and serves the next request with a fresh hyper connection): every
//! request shape, sent whole, pipelined, byte by byte, or with the next head split across
//! the idle phase, is answered in order on the same connection, plain and over TLS.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use gateway::tls_client;
use rustls_pki_types::ServerName;

use crate::proxy_support::{IO_TIMEOUT, Proxy, free_port, upstream_toml};
use gateway_tests::upstream::Upstream;

/// Bounds every exchange.
const MARGIN: Duration = Duration::from_secs(20);

/// Requests of every shape the idle phase must hand over cleanly; each answers 200 and
/// ends with a marker the reader waits for.
fn requests() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("GET", b"GET /k/get HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        ("HEAD", b"HEAD /k/head HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()),
        (
            "POST with Content-Length",
            b"POST /k/post HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
        ),
        (
            "POST chunked",
            b"POST /k/chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "GET with Connection: keep-alive",
            b"GET /k/ka HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n".to_vec(),
        ),
        (
            "OPTIONS with an empty body",
            b"OPTIONS /k/options HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
    ]
}

/// How the client writes its requests on one connection.
#[derive(Debug, Clone, Copy)]
enum Send {
    /// Each request whole, after the previous answer.
    OneByOne,
    /// All requests in one write.
    Pipelined,
    /// Each request a byte at a time, after the previous answer.
    ByteByByte,
    /// The first half of the next request right after reading an answer, the rest after a
    /// pause: the idle phase ends with a partial head.
    SplitAcrossIdle,
    /// All requests in 37-byte writes: one request's last bytes and the next one's first
    /// bytes arrive together.
    Overlapping,
}

/// A test client over plain TCP or rustls (ALPN http/1.1, the gateway's self-signed
/// certificate accepted: this test is about framing, not trust).
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn write(&mut self, bytes: &[u8]) {
        match self {
            Conn::Plain(stream) => stream.write_all(bytes).unwrap(),
            Conn::Tls(stream) => {
                stream.write_all(bytes).unwrap();
                stream.flush().unwrap();
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> usize {
        match self {
            Conn::Plain(stream) => stream.read(buf).unwrap_or(0),
            Conn::Tls(stream) => stream.read(buf).unwrap_or(0),
        }
    }

    /// Reads until `count` answers have arrived (by status line) and the last one's body
    /// has ended (the echo body is JSON ending in `}`; a HEAD answer has none).
    fn answers(&mut self, count: usize, last_has_body: bool, seen: &mut Vec<u8>) -> usize {
        let deadline = Instant::now() + MARGIN;
        let mut buf = [0u8; 16 * 1024];
        loop {
            let text = String::from_utf8_lossy(seen);
            let statuses = text.matches("HTTP/1.1 200 OK").count();
            let done = statuses >= count && (!last_has_body || text.trim_end().ends_with('}'));
            if done || Instant::now() > deadline {
                return statuses;
            }
            let read = self.read(&mut buf);
            if read == 0 {
                return statuses;
            }
            seen.extend_from_slice(&buf[..read]);
        }
    }
}

fn open(address: SocketAddr, tls: bool) -> Conn {
    let stream = TcpStream::connect_timeout(&address, IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(MARGIN)).unwrap();
    stream.set_nodelay(true).unwrap();
    if !tls {
        return Conn::Plain(stream);
    }
    // The gateway's own upstream client config with `verify = false`: any certificate, the
    // handshake signatures still checked; TLS 1.2 and 1.3.
    let mut config = tls_client::client_config(tls_client::ClientTls {
        roots: rustls::RootCertStore::empty(),
        verify: false,
        client_cert: None,
        tls13_only: false,
    });
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = ServerName::try_from("localhost").unwrap();
    let client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    Conn::Tls(Box::new(rustls::StreamOwned::new(client, stream)))
}

fn exchange(conn: &mut Conn, send: Send, what: &str) {
    let requests = requests();
    let mut seen = Vec::new();
    let ends_with_body = |index: usize| requests[index].0 != "HEAD";
    match send {
        Send::Pipelined | Send::Overlapping => {
            let all: Vec<u8> = requests.iter().flat_map(|r| r.1.clone()).collect();
            if matches!(send, Send::Pipelined) {
                conn.write(&all);
            } else {
                // Request i's tail and request i+1's head in one write.
                for piece in all.chunks(37) {
                    conn.write(piece);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let got = conn.answers(
                requests.len(),
                ends_with_body(requests.len() - 1),
                &mut seen,
            );
            assert_eq!(
                got,
                requests.len(),
                "{what}: {}",
                String::from_utf8_lossy(&seen)
            );
        }
        Send::OneByOne | Send::ByteByByte | Send::SplitAcrossIdle => {
            let mut carried: &[u8] = &[];
            for (index, (shape, request)) in requests.iter().enumerate() {
                match send {
                    Send::OneByOne => conn.write(request),
                    Send::ByteByByte => {
                        for byte in request {
                            conn.write(std::slice::from_ref(byte));
                        }
                    }
                    _ if index == 0 => conn.write(request),
                    _ => {
                        // The first half went out right after the previous answer; the
                        // rest comes after the cycle's linger (250 ms), so it parks between.
                        std::thread::sleep(Duration::from_millis(400));
                        conn.write(carried);
                    }
                }
                let got = conn.answers(index + 1, ends_with_body(index), &mut seen);
                assert_eq!(
                    got,
                    index + 1,
                    "{what}, {shape}: {}",
                    String::from_utf8_lossy(&seen)
                );
                if let (Send::SplitAcrossIdle, Some((_, next))) = (send, requests.get(index + 1)) {
                    let half = next.len() / 2;
                    conn.write(&next[..half]);
                    carried = &next[half..];
                }
            }
        }
    }
}

#[test]
fn every_request_shape_survives_the_idle_phase_however_it_is_sent() {
    let upstream = Upstream::start("echo");
    let tls_port = free_port();
    let proxy = Proxy::start(&format!(
        "[limits]\nidle_timeout = \"60s\"\nheader_read_timeout = \"30s\"\n\
         [[listeners]]\nname = \"tls\"\naddress = \"127.0.0.1:{tls_port}\"\nprotocol = \"https\"\n\
         [listeners.tls]\n[[listeners.tls.certificates]]\nself_signed = true\n\
         names = [\"localhost\"]\n{}[[routes]]\nname = \"all\"\nupstream = \"echo\"\n",
        upstream_toml("echo", &[(upstream.address(), 1)], "")
    ));
    let tls_address: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let sends = [
        Send::OneByOne,
        Send::Pipelined,
        Send::ByteByByte,
        Send::SplitAcrossIdle,
        Send::Overlapping,
    ];
    let mut served = 0;
    for tls in [false, true] {
        for send in sends {
            let what = format!("{send:?} {}", if tls { "TLS" } else { "plain" });
            let address = if tls { tls_address } else { proxy.address };
            let mut conn = open(address, tls);
            // Twice on the same connection: the idle phase after a run, then another run.
            exchange(&mut conn, send, &what);
            exchange(&mut conn, send, &format!("{what}, second run"));
            served += 2 * requests().len();
        }
    }
    assert_eq!(upstream.hits(), served);
    let log = proxy.gateway.log();
    assert!(!log.contains("panicked"), "{log}");
}

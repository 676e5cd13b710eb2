//! Fault attribution: a client's malformed, aborted, slow or oversized body is the client's
//! fault. It is answered 400, 408 or 413 (or logged 499 when the client is gone) and never
//! counts against an upstream target: no ejection, no upstream metrics. An upstream that
//! drops an idempotent request before answering is the upstream's fault, and the request is
//! retried on another target. Real binary, real upstreams, hand-written bytes on loopback;
//! every wait is bounded and timers are checked only against wide upper bounds.

use std::{
    collections::HashMap,
    io::Write as _,
    net::{Shutdown, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use crate::proxy_support::{
    IO_TIMEOUT, Proxy, RustClient, curl, free_port, raw_status, read_until_close, upstream_toml,
};
use gateway_tests::upstream::Upstream;

/// Passive ejection after this many failures in a row: a handful of blamed client faults
/// would take every target out.
const EJECT_AFTER: u32 = 3;
/// `limits.body_read_timeout` in these tests.
const BODY_TIMEOUT: Duration = Duration::from_secs(1);
/// Wide margin for any timer: only upper bounds are asserted.
const TIMER_MARGIN: Duration = Duration::from_secs(8);

/// What a client did, step by step, on one fresh connection.
#[derive(Clone, Copy)]
enum Step {
    Send(&'static [u8]),
    /// Sends the bytes `count` times, pausing `every` between sends (a trickle).
    Trickle(&'static [u8], u32, Duration),
    /// Half-closes: no more bytes from the client (it may still read).
    ShutdownWrite,
    /// Closes with a TCP reset (SO_LINGER 0): the client is gone.
    Reset,
}

/// What the client must see: an exact status, or (the client is gone) nothing at all, or a
/// 4xx if it still reads.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Status(u16),
    GoneOr4xx,
}

struct Variant {
    name: &'static str,
    steps: Vec<Step>,
    expect: Expect,
}

const POST_CHUNKED: &[u8] =
    b"POST /api HTTP/1.1\r\nHost: blame.test\r\nTransfer-Encoding: chunked\r\n\r\n";
const POST_100: &[u8] = b"POST /api HTTP/1.1\r\nHost: blame.test\r\nContent-Length: 100\r\n\r\n";

/// Every way a client can get its body wrong over HTTP/1.1.
fn http1_variants() -> Vec<Variant> {
    use Expect::*;
    use Step::*;
    vec![
        Variant {
            name: "bad chunk size hex",
            steps: vec![Send(POST_CHUNKED), Send(b"zz\r\nhello\r\n0\r\n\r\n")],
            expect: Status(400),
        },
        Variant {
            name: "chunk size with a sign",
            steps: vec![Send(POST_CHUNKED), Send(b"-5\r\nhello\r\n0\r\n\r\n")],
            expect: Status(400),
        },
        Variant {
            name: "chunk size overflow",
            steps: vec![
                Send(POST_CHUNKED),
                Send(b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            ],
            expect: Status(400),
        },
        Variant {
            name: "chunk size 2^64 - 1",
            steps: vec![
                Send(POST_CHUNKED),
                Send(b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
            ],
            // Over the body limit (or malformed): refused either way, never forwarded whole.
            expect: GoneOr4xx,
        },
        Variant {
            name: "missing CRLF after chunk data",
            steps: vec![Send(POST_CHUNKED), Send(b"5\r\nhelloXY0\r\n\r\n")],
            expect: Status(400),
        },
        Variant {
            name: "bare LF after chunk size",
            steps: vec![Send(POST_CHUNKED), Send(b"5\nhello\r\n0\r\n\r\n")],
            expect: Status(400),
        },
        Variant {
            name: "bare LF after chunk data",
            steps: vec![Send(POST_CHUNKED), Send(b"5\r\nhello\n0\r\n\r\n")],
            expect: Status(400),
        },
        Variant {
            name: "bare CR in chunk size line",
            steps: vec![Send(POST_CHUNKED), Send(b"5\rX\nhello\r\n0\r\n\r\n")],
            expect: Status(400),
        },
        Variant {
            name: "chunk extension with a bare LF",
            steps: vec![Send(POST_CHUNKED), Send(b"5;ext\nhello\r\n0\r\n\r\n")],
            expect: Status(400),
        },
        Variant {
            name: "chunk extension garbage over 16 KiB",
            steps: vec![
                Send(POST_CHUNKED),
                Send(b"5;"),
                Trickle(&[b'x'; 4096], 5, Duration::ZERO),
                Send(b"\r\nhello\r\n0\r\n\r\n"),
            ],
            expect: Status(400),
        },
        Variant {
            name: "malformed trailer",
            steps: vec![
                Send(POST_CHUNKED),
                Send(b"5\r\nhello\r\n0\r\nno colon here\r\n\r\n"),
            ],
            expect: Status(400),
        },
        Variant {
            name: "truncated chunk then close",
            steps: vec![Send(POST_CHUNKED), Send(b"5\r\nhel"), ShutdownWrite],
            expect: GoneOr4xx,
        },
        Variant {
            name: "no last chunk then close",
            steps: vec![Send(POST_CHUNKED), Send(b"5\r\nhello\r\n"), ShutdownWrite],
            expect: GoneOr4xx,
        },
        Variant {
            name: "Content-Length larger than sent then close",
            steps: vec![Send(POST_100), Send(b"only ten!!"), ShutdownWrite],
            expect: GoneOr4xx,
        },
        Variant {
            name: "Content-Length larger than sent then reset",
            steps: vec![
                Send(POST_100),
                Send(b"only ten!!"),
                Trickle(b"", 1, Duration::from_millis(200)),
                Reset,
            ],
            expect: GoneOr4xx,
        },
        Variant {
            name: "chunked body then reset",
            steps: vec![
                Send(POST_CHUNKED),
                Send(b"5\r\nhello\r\n"),
                Trickle(b"", 1, Duration::from_millis(200)),
                Reset,
            ],
            expect: GoneOr4xx,
        },
        Variant {
            name: "body stalls past the body timeout",
            steps: vec![Send(POST_100), Send(b"only ten!!")],
            expect: Status(408),
        },
        Variant {
            name: "chunked body stalls past the body timeout",
            steps: vec![Send(POST_CHUNKED), Send(b"5\r\nhello\r\n")],
            expect: Status(408),
        },
        Variant {
            name: "body trickles below the minimum rate",
            // A byte every 300 ms: never a gap of a full body timeout, far below the rate.
            steps: vec![
                Send(POST_100),
                Trickle(b"x", 60, Duration::from_millis(300)),
            ],
            expect: Status(408),
        },
        Variant {
            name: "chunked body over the limit",
            steps: vec![
                Send(POST_CHUNKED),
                Trickle(b"400\r\n", 1, Duration::ZERO),
                Trickle(&[b'y'; 1024], 1, Duration::ZERO),
                Send(b"\r\n2000\r\n"),
                Trickle(&[b'z'; 1024], 8, Duration::ZERO),
                Send(b"\r\n0\r\n\r\n"),
            ],
            expect: Status(413),
        },
        Variant {
            name: "declared length over the limit",
            steps: vec![Send(
                b"POST /api HTTP/1.1\r\nHost: blame.test\r\nContent-Length: 999999\r\n\r\n",
            )],
            expect: Status(413),
        },
    ]
}

/// Plays `steps` on a fresh connection and returns the status the client read, if any.
fn play(address: SocketAddr, steps: &[Step]) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&address, IO_TIMEOUT).expect("connecting");
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    for step in steps {
        // The gateway may answer and close early (a 400 before the rest is sent): stop then.
        let sent = match *step {
            Step::Send(bytes) => stream.write_all(bytes),
            Step::Trickle(bytes, count, every) => (0..count).try_for_each(|_| {
                thread::sleep(every);
                stream.write_all(bytes)
            }),
            Step::ShutdownWrite => stream.shutdown(Shutdown::Write),
            Step::Reset => {
                reset(&stream);
                return None;
            }
        };
        if sent.is_err() {
            break;
        }
    }
    let (raw, _closed) = read_until_close(&mut stream, BODY_TIMEOUT + TIMER_MARGIN);
    raw_status(&raw)
}

/// Closes `stream` with a RST instead of a FIN.
fn reset(stream: &TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    let _ = stream.shutdown(Shutdown::Read);
}

/// Two healthy targets that any blamed client fault would eject, a metrics listener, a
/// small body limit and a short body timeout.
struct Lab {
    proxy: Proxy,
    access_log: tempfile::TempDir,
    metrics: String,
    targets: [Upstream; 2],
}

impl Lab {
    fn start(limits: &str) -> Lab {
        let targets = [Upstream::start("a"), Upstream::start("b")];
        let metrics = format!("127.0.0.1:{}", free_port());
        let access_log = tempfile::tempdir().unwrap();
        let pool: Vec<(SocketAddr, u32)> = targets.iter().map(|t| (t.address(), 1)).collect();
        let extra = format!(
            "consecutive_failures = {EJECT_AFTER}\nejection_time = \"5m\"\nrequest_timeout = \"3s\""
        );
        let proxy = Proxy::start(&format!(
            "[metrics]\naddress = \"{metrics}\"\n[access_log]\npath = \"{}\"\n[limits]\nmax_body_bytes = \"4KiB\"\n{limits}\n\
             {}[[routes]]\nname = \"api\"\nupstream = \"pool\"\n",
            access_log.path().join("access.log").display(),
            upstream_toml("pool", &pool, &extra)
        ));
        Lab {
            proxy,
            access_log,
            metrics,
            targets,
        }
    }

    /// (status, fault) of every access-log line of a failed request (bounded wait for the
    /// background writer).
    fn access_log_faults(&self) -> Vec<(u64, String)> {
        let path = self.access_log.path().join("access.log");
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let faults: Vec<(u64, String)> = text
                .lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter_map(|line| {
                    let fault = line.get("fault")?.as_str()?.to_owned();
                    Some((line["status"].as_u64()?, fault))
                })
                .collect();
            if faults.iter().any(|(status, _)| *status == 413) || Instant::now() > deadline {
                return faults;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn scrape(&self) -> HashMap<String, f64> {
        gateway_tests::scrape::samples(&curl(&[&format!("http://{}/metrics", self.metrics)]).body)
    }

    /// Every target takes traffic, per the metrics, and answers a well-behaved client.
    fn assert_every_target_in_service(&self, after: &str) {
        let values = self.scrape();
        for target in &self.targets {
            let up = format!(
                "gateway_upstream_target_up{{target=\"{}\",upstream=\"pool\"}}",
                target.address()
            );
            assert_eq!(values.get(&up), Some(&1.0), "{after}: {up} in {values:#?}");
        }
        let client = RustClient::http1();
        let mut served = Vec::new();
        for _ in 0..4 {
            served.push(client.get(&self.proxy.url("/api"), &[]).upstream());
        }
        for target in &self.targets {
            assert!(
                served.iter().any(|name| name == target.name()),
                "{after}: {} served nothing: {served:?}",
                target.name()
            );
        }
    }
}

/// Series about upstreams: none may move because of a client's fault.
fn upstream_series(values: &HashMap<String, f64>) -> Vec<(String, f64)> {
    let mut series: Vec<(String, f64)> = values
        .iter()
        .filter(|(name, _)| {
            name.starts_with("gateway_upstream_response_seconds")
                || name.contains("cause=\"upstream\"")
        })
        .map(|(name, value)| (name.clone(), *value))
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    series
}

#[test]
fn client_body_faults_over_http1_leave_every_target_in_service() {
    let lab = Lab::start(&format!(
        "body_read_timeout = \"{}ms\"\nmin_body_rate = \"1KiB/s\"",
        BODY_TIMEOUT.as_millis()
    ));
    lab.assert_every_target_in_service("at start");
    let before = upstream_series(&lab.scrape());
    let variants = http1_variants();
    // Each variant more often than it takes to eject a target, interleaved.
    let mut failures = Vec::new();
    for round in 0..EJECT_AFTER {
        for variant in &variants {
            let started = Instant::now();
            let status = play(lab.proxy.address, &variant.steps);
            let took = started.elapsed();
            let ok = match variant.expect {
                Expect::Status(expected) => status == Some(expected),
                Expect::GoneOr4xx => status.is_none_or(|s| (400..500).contains(&s)),
            };
            if !ok {
                failures.push(format!(
                    "round {round}, {}: got {status:?}, expected {:?}",
                    variant.name, variant.expect
                ));
            }
            // Upper bound only: a body timer answers well within timeout + margin.
            assert!(
                took < BODY_TIMEOUT * 30 + TIMER_MARGIN,
                "{}: took {took:?}",
                variant.name
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let values = lab.scrape();
    assert_eq!(upstream_series(&values), before, "upstream series moved");
    lab.assert_every_target_in_service("after the malformed bodies");
    // The access log says whose fault it was: every failure here is the client's.
    let faults = lab.access_log_faults();
    for status in [400, 408, 413, 499] {
        assert!(
            faults
                .iter()
                .any(|(s, fault)| *s == status && fault == "client"),
            "no client-fault {status} in {faults:?}"
        );
    }
    assert!(
        faults.iter().all(|(_, fault)| fault == "client"),
        "{faults:?}"
    );
    // The metrics say it too.
    for code in ["malformed_body", "body_timeout", "body_too_large"] {
        let key = format!("gateway_request_errors_total{{cause=\"client\",code=\"{code}\"}}");
        assert!(
            values.get(&key).is_some_and(|&n| n > 0.0),
            "{key} in {values:#?}"
        );
    }
}

/// What an HTTP/2 client does on one stream of a fresh h2c connection.
#[derive(Clone, Copy, Debug)]
enum H2Body {
    /// Declares `content-length`, sends `sent` bytes and ends the stream.
    LengthMismatch { declared: usize, sent: usize },
    /// Sends some bytes, then resets the stream (CANCEL): the client is gone.
    ResetMidBody,
    /// Sends some bytes, then nothing (the stream stays open).
    Stall,
    /// Streams more than the body limit, with no content-length.
    OverLimit,
}

/// The status the client got, or `None` if the stream was reset instead.
fn h2_exchange(address: SocketAddr, body: H2Body) -> Option<u16> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.expect("h2c handshake");
        tokio::spawn(connection);
        let mut client = client.ready().await.expect("h2c ready");
        let mut request = hyper::Request::post(format!("http://{address}/api"));
        if let H2Body::LengthMismatch { declared, .. } = body {
            request = request.header("content-length", declared);
        }
        let (response, mut stream) = client
            .send_request(request.body(()).unwrap(), false)
            .expect("sending the head");
        let chunk = |n: usize| hyper::body::Bytes::from(vec![b'x'; n]);
        let _ = match body {
            H2Body::LengthMismatch { sent, .. } => stream.send_data(chunk(sent), true),
            H2Body::ResetMidBody => stream.send_data(chunk(10), false).map(|()| {
                std::thread::sleep(Duration::from_millis(100));
                stream.send_reset(h2::Reason::CANCEL);
            }),
            H2Body::Stall => stream.send_data(chunk(10), false),
            H2Body::OverLimit => (0..8).try_for_each(|_| {
                stream.reserve_capacity(1024);
                stream.send_data(chunk(1024), false)
            }),
        };
        let wait = BODY_TIMEOUT + TIMER_MARGIN;
        match tokio::time::timeout(wait, response).await {
            Ok(Ok(response)) => Some(response.status().as_u16()),
            Ok(Err(_reset)) => None,
            // The client reset the stream itself: nothing comes back.
            Err(_) if matches!(body, H2Body::ResetMidBody) => None,
            Err(_) => panic!("{body:?}: no answer and no reset within {wait:?}"),
        }
    })
}

#[test]
fn client_body_faults_over_h2c_leave_every_target_in_service() {
    let lab = Lab::start(&format!(
        "body_read_timeout = \"{}ms\"",
        BODY_TIMEOUT.as_millis()
    ));
    lab.assert_every_target_in_service("at start");
    let before = upstream_series(&lab.scrape());
    // (variant, what the client may see: a status, or `None` for a reset stream)
    let table: [(H2Body, &[Option<u16>]); 6] = [
        (
            H2Body::LengthMismatch {
                declared: 100,
                sent: 10,
            },
            &[Some(400), None],
        ),
        (
            H2Body::LengthMismatch {
                declared: 5,
                sent: 10,
            },
            &[Some(400), None],
        ),
        (
            H2Body::LengthMismatch {
                declared: 1,
                sent: 0,
            },
            &[Some(400), None],
        ),
        (H2Body::ResetMidBody, &[None]),
        (H2Body::Stall, &[Some(408)]),
        (H2Body::OverLimit, &[Some(413), None]),
    ];
    let mut failures = Vec::new();
    for round in 0..EJECT_AFTER {
        for (body, allowed) in table {
            let got = h2_exchange(lab.proxy.address, body);
            if !allowed.contains(&got) {
                failures.push(format!(
                    "round {round}, {body:?}: got {got:?}, expected {allowed:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        upstream_series(&lab.scrape()),
        before,
        "upstream series moved"
    );
    lab.assert_every_target_in_service("after the broken HTTP/2 bodies");
}

/// A target that reads a request head and then drops the connection unanswered: with a
/// FIN, or with a reset. Counts the requests it dropped.
struct Dropper {
    address: SocketAddr,
    dropped: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Dropper {
    fn start(with_reset: bool) -> Dropper {
        use std::io::Read as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = dropped.clone();
        // Detached; it ends with the test process. Each connection is bounded by a timeout.
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                if head.ends_with(b"\r\n\r\n") {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                match with_reset {
                    true => reset(&stream),
                    false => drop(stream),
                }
            }
        });
        Dropper { address, dropped }
    }

    fn dropped(&self) -> usize {
        self.dropped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn idempotent_requests_dropped_unanswered_are_retried_on_another_target() {
    for with_reset in [false, true] {
        let dropper = Dropper::start(with_reset);
        let good = Upstream::start("good");
        let pool = [(dropper.address, 1), (good.address(), 1)];
        let extra = "retry = { attempts = 1 }\nconsecutive_failures = 2\nejection_time = \"5m\"";
        let proxy = Proxy::start(&format!(
            "{}[[routes]]\nname = \"api\"\nupstream = \"pool\"\n",
            upstream_toml("pool", &pool, extra)
        ));
        let client = RustClient::http1();
        for method in ["GET", "HEAD", "DELETE", "OPTIONS", "GET", "GET"] {
            let reply = client.send(method, &proxy.url("/api"), &[], Default::default());
            assert_eq!(reply.status, 200, "reset {with_reset}, {method}: {reply:?}");
            assert_eq!(reply.header("x-upstream"), "good");
        }
        assert!(dropper.dropped() > 0, "the dropping target was never tried");
        // The retried failures count against the target that dropped them.
        proxy.wait_for_log("target ejected");
    }
}

#[test]
fn a_post_dropped_unanswered_is_not_retried() {
    let dropper = Dropper::start(false);
    let proxy = Proxy::start(&format!(
        "{}[[routes]]\nname = \"api\"\nupstream = \"pool\"\n",
        upstream_toml("pool", &[(dropper.address, 1)], "retry = { attempts = 1 }")
    ));
    let client = RustClient::http1();
    let reply = client.send("POST", &proxy.url("/api"), &[], "x".into());
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(dropper.dropped(), 1, "a POST was sent again");
}

#[test]
fn gets_in_flight_on_a_killed_target_succeed_on_the_other() {
    let (dying, good) = (Upstream::start("dying"), Upstream::start("good"));
    dying.set_delay(Duration::from_secs(5));
    let pool = [(dying.address(), 1), (good.address(), 1)];
    let proxy = Proxy::start(&format!(
        "{}[[routes]]\nname = \"api\"\nupstream = \"pool\"\n",
        upstream_toml(
            "pool",
            &pool,
            "retry = { attempts = 1, budget_min_per_second = 10 }"
        )
    ));
    let url = proxy.url("/api");
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || RustClient::http1().get(&url, &[]))
        })
        .collect();
    let deadline = Instant::now() + IO_TIMEOUT;
    while dying.hits() < 2 {
        assert!(
            Instant::now() < deadline,
            "no request reached the dying target"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // Killed with requests in flight: its connections close before any answer, and every
    // one of those requests is answered by the other target.
    dying.stop();
    for request in requests {
        let reply = request.join().unwrap();
        assert_eq!(reply.upstream(), "good", "{reply:?}");
    }
}

//! Fault attribution: a client's malformed, aborted, slow or oversized body is the client's
//! fault. It is answered 400, 408 or 413 (or logged 499 when the client is gone) and never
//! counts against an upstream target: no ejection, no upstream metrics. An upstream that
//! drops an idempotent request before answering is the upstream's fault, and the request is
//! retried on another target. Real binary, real upstreams, hand-written bytes on loopback;
//! every wait is bounded and timers are checked only against wide upper bounds.

mod proxy_support;

use std::{
    collections::HashMap,
    io::Write as _,
    net::{Shutdown, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::upstream::Upstream;
use proxy_support::{
    IO_TIMEOUT, Proxy, RustClient, curl, free_port, raw_status, read_until_close, upstream_toml,
};

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
    metrics: String,
    targets: [Upstream; 2],
}

impl Lab {
    fn start(limits: &str) -> Lab {
        let targets = [Upstream::start("a"), Upstream::start("b")];
        let metrics = format!("127.0.0.1:{}", free_port());
        let pool: Vec<(SocketAddr, u32)> = targets.iter().map(|t| (t.address(), 1)).collect();
        let extra = format!(
            "consecutive_failures = {EJECT_AFTER}\nejection_time = \"5m\"\nrequest_timeout = \"3s\""
        );
        let proxy = Proxy::start(&format!(
            "[metrics]\naddress = \"{metrics}\"\n[limits]\nmax_body_bytes = \"4KiB\"\n{limits}\n\
             {}[[routes]]\nname = \"api\"\nupstream = \"pool\"\n",
            upstream_toml("pool", &pool, &extra)
        ));
        Lab {
            proxy,
            metrics,
            targets,
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
    // The metrics say whose fault it was.
    for code in ["malformed_body", "body_timeout", "body_too_large"] {
        let key = format!("gateway_request_errors_total{{cause=\"client\",code=\"{code}\"}}");
        assert!(
            values.get(&key).is_some_and(|&n| n > 0.0),
            "{key} in {values:#?}"
        );
    }
}

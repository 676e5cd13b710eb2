//! WebSocket upgrades and gRPC through the real binary: a real WebSocket echo upstream and
//! client (tokio-tungstenite), and a gRPC-style upstream over h2c (hyper's HTTP/2 server,
//! raw length-prefixed gRPC frames and trailers) called by a hyper HTTP/2 client.
//! Loopback only; every wait bounded.

use crate::proxy_support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use crate::proxy_support::{IO_TIMEOUT, Proxy, free_port, raw_exchange, raw_status, upstream_toml};
use futures_util::{SinkExt as _, StreamExt as _};
use gateway_tests::upstream::Upstream;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{
    HeaderMap, Request, Response,
    body::{Bytes, Incoming},
    header::HeaderValue,
    service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

type GrpcBody = BoxBody<Bytes, Infallible>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A WebSocket server that echoes every text and binary message back.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                // A close from the client is answered by tungstenite; the stream then ends.
                while let Some(Ok(message)) = socket.next().await {
                    if (message.is_text() || message.is_binary())
                        && socket.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    address
}

#[test]
fn websocket_messages_go_both_ways_through_the_gateway() {
    let runtime = runtime();
    let upstream = runtime.block_on(websocket_echo());
    let proxy = Proxy::start(&format!(
        "{}\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\nmatch = {{ path_prefix = \"/ws\" }}\n",
        upstream_toml("ws", &[(upstream, 1)], "")
    ));
    let url = format!("ws://{}/ws/echo", proxy.address);
    runtime.block_on(async {
        let (mut socket, response) =
            tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
                .await
                .expect("handshake in time")
                .expect("WebSocket handshake through the gateway");
        assert_eq!(response.status(), 101);
        assert!(response.headers().contains_key("x-request-id"));
        for i in 0..5u8 {
            let text = Message::Text(format!("hello {i}"));
            let binary = Message::Binary(vec![i; 1000 * usize::from(i) + 1]);
            for message in [text, binary] {
                socket.send(message.clone()).await.expect("sending");
                let echoed = tokio::time::timeout(IO_TIMEOUT, socket.next())
                    .await
                    .expect("echo in time")
                    .expect("the connection stays open")
                    .expect("a message");
                assert_eq!(echoed, message);
            }
        }
        socket.close(None).await.expect("closing");
        // The server's close frame, then the end of the stream.
        loop {
            match tokio::time::timeout(IO_TIMEOUT, socket.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Close(_))) => {}
                Some(Ok(other)) => panic!("unexpected message after close: {other:?}"),
                Some(Err(error)) => panic!("unclean close: {error}"),
                None => break,
            }
        }
    });
}

#[test]
fn a_websocket_tunnel_holds_its_connection_slot_until_it_closes() {
    let runtime = runtime();
    let upstream = runtime.block_on(websocket_echo());
    let proxy = Proxy::start(&format!(
        "[limits]\nmax_connections = 1\n{}\n[[routes]]\nname = \"ws\"\nupstream = \"ws\"\n",
        upstream_toml("ws", &[(upstream, 1)], "")
    ));
    let url = format!("ws://{}/ws", proxy.address);
    let request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    runtime.block_on(async {
        let (mut socket, _) =
            tokio::time::timeout(IO_TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
                .await
                .expect("handshake in time")
                .expect("WebSocket handshake through the gateway");
        // The tunnel is the one connection allowed: another is closed unanswered.
        let (raw, closed) =
            tokio::task::block_in_place(|| raw_exchange(proxy.address, request, IO_TIMEOUT));
        assert!(closed && raw.is_empty(), "closed={closed} {raw:?}");
        // The tunnel itself still works.
        socket
            .send(Message::Text("still here".into()))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(IO_TIMEOUT, socket.next())
            .await
            .unwrap();
        assert_eq!(echoed.unwrap().unwrap(), Message::Text("still here".into()));
        socket.close(None).await.expect("closing");
        while let Ok(Some(Ok(_))) = tokio::time::timeout(IO_TIMEOUT, socket.next()).await {}
    });
    // Closed, its slot is free again (once the gateway notices: bounded retries).
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let (raw, _) = raw_exchange(proxy.address, request, IO_TIMEOUT);
        if raw_status(&raw).is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot never freed: {raw:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn other_upgrades_are_not_forwarded() {
    let echo = Upstream::start("plain");
    let proxy = Proxy::start(&format!(
        "{}\n[[routes]]\nname = \"plain\"\nupstream = \"plain\"\n",
        upstream_toml("plain", &[(echo.address(), 1)], "")
    ));
    let request = "GET /plain HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, close\r\n\
                   Upgrade: foo/1\r\n\r\n";
    let (raw, _) = raw_exchange(proxy.address, request.as_bytes(), IO_TIMEOUT);
    assert_eq!(raw_status(&raw), Some(200), "{raw}");
    let body = raw.split_once("\r\n\r\n").expect("a head").1;
    let echo: serde_json::Value = serde_json::from_str(body).expect("the echo's JSON");
    let headers = echo["headers"].as_object().unwrap();
    assert!(!headers.contains_key("upgrade"), "{echo}");
    assert_eq!(echo.get("upstream").unwrap(), "plain");
}

/// A plain (not gRPC) upstream that speaks only HTTP/2 with prior knowledge: it answers
/// with the protocol version and path it got, and counts its TCP connections.
async fn h2c_only_upstream(connections: Arc<AtomicUsize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            connections.fetch_add(1, Ordering::SeqCst);
            let service = service_fn(|req: Request<Incoming>| async move {
                let text = format!("{:?} {}", req.version(), req.uri().path());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    address
}

#[test]
fn an_h2c_upstream_gets_http2_over_one_pooled_connection() {
    let runtime = runtime();
    let connections = Arc::new(AtomicUsize::new(0));
    let upstream = runtime.block_on(h2c_only_upstream(connections.clone()));
    let proxy = Proxy::start(&format!(
        "{}\n[[routes]]\nname = \"h2\"\nupstream = \"h2\"\n",
        upstream_toml("h2", &[(upstream, 1)], "protocol = \"h2c\"")
    ));
    for i in 0..10 {
        // The client speaks HTTP/1.1; the upstream gets HTTP/2.
        let reply = proxy_support::curl(&["--http1.1", &proxy.url(&format!("/item/{i}"))]);
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body, format!("HTTP/2.0 /item/{i}"));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one pooled h2 connection"
    );
}

/// A raw gRPC message: compressed flag, 4-byte big-endian length, payload.
fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// A gRPC-style unary echo over h2c: answers the request's message with `reply:` before
/// its payload, and trailers `grpc-status: 0`, `grpc-message: ok` and the client's
/// `x-client-trailer` as `x-echoed-trailer`. Its head tells what the upstream got. Under
/// `/slow.Slow/` it answers far later than the gateway's `request_timeout`.
async fn grpc_echo(req: Request<Incoming>) -> Result<Response<GrpcBody>, Infallible> {
    if req.uri().path().starts_with("/slow.Slow/") {
        tokio::time::sleep(IO_TIMEOUT).await;
    }
    let version = format!("{:?}", req.version());
    let te = req.headers().get("te").cloned();
    let collected = req.into_body().collect().await.expect("the request body");
    let client_trailer = collected
        .trailers()
        .and_then(|trailers| trailers.get("x-client-trailer"))
        .cloned();
    let message = collected.to_bytes();
    assert!(message.len() >= 5, "a gRPC frame");
    let mut payload = b"reply:".to_vec();
    payload.extend_from_slice(&message[5..]);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("grpc-message", HeaderValue::from_static("ok"));
    if let Some(value) = client_trailer {
        trailers.insert("x-echoed-trailer", value);
    }
    let mut response = Response::builder()
        .header("content-type", "application/grpc")
        .header("x-upstream-version", version);
    if let Some(te) = te {
        response = response.header("x-upstream-te", te);
    }
    let body = Full::new(grpc_frame(&payload))
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    Ok(response.body(body).unwrap())
}

async fn grpc_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(grpc_echo)),
            );
        }
    });
    address
}

/// One gRPC call over HTTP/2 with prior knowledge: the response head, body and trailers.
async fn grpc_call(
    gateway: SocketAddr,
    path: &str,
    message: Bytes,
) -> (Response<()>, Bytes, Option<HeaderMap>) {
    let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake with the gateway");
    tokio::spawn(connection);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-client-trailer", HeaderValue::from_static("from-client"));
    let body: GrpcBody = Full::new(message)
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    let request = Request::post(format!("http://{gateway}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let response = tokio::time::timeout(IO_TIMEOUT, sender.send_request(request))
        .await
        .expect("a response in time")
        .expect("a response");
    let (head, body) = response.into_parts();
    let collected = tokio::time::timeout(IO_TIMEOUT, body.collect())
        .await
        .expect("the body in time")
        .expect("the body");
    let trailers = collected.trailers().cloned();
    (
        Response::from_parts(head, ()),
        collected.to_bytes(),
        trailers,
    )
}

fn grpc_proxy(upstream: SocketAddr) -> Proxy {
    let down: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    Proxy::start(&format!(
        "{}{}{}\n[[routes]]\nname = \"echo\"\nupstream = \"grpc\"\n\
         match = {{ path_prefix = \"/echo.Echo/\" }}\n\
         [[routes]]\nname = \"down\"\nupstream = \"down\"\n\
         match = {{ path_prefix = \"/down.Down/\" }}\n\
         [[routes]]\nname = \"slow\"\nupstream = \"slow\"\n\
         match = {{ path_prefix = \"/slow.Slow/\" }}\n",
        upstream_toml("grpc", &[(upstream, 1)], ""),
        upstream_toml("down", &[(down, 1)], ""),
        upstream_toml("slow", &[(upstream, 1)], "request_timeout = \"300ms\""),
    ))
}

#[test]
fn grpc_call_keeps_body_and_trailers_end_to_end() {
    let runtime = runtime();
    let upstream = runtime.block_on(grpc_upstream());
    let proxy = grpc_proxy(upstream);
    runtime.block_on(async {
        for i in 0..3 {
            let payload = format!("message {i}");
            let (head, body, trailers) = grpc_call(
                proxy.address,
                "/echo.Echo/Say",
                grpc_frame(payload.as_bytes()),
            )
            .await;
            assert_eq!(head.status(), 200);
            let headers = head.headers();
            assert_eq!(headers["content-type"], "application/grpc");
            assert_eq!(
                headers["x-upstream-version"], "HTTP/2.0",
                "h2c to the upstream"
            );
            assert_eq!(headers["x-upstream-te"], "trailers");
            assert!(headers.contains_key("x-request-id"));
            assert_eq!(body, grpc_frame(format!("reply:{payload}").as_bytes()));
            let trailers = trailers.expect("response trailers");
            assert_eq!(trailers["grpc-status"], "0");
            assert_eq!(trailers["grpc-message"], "ok");
            assert_eq!(
                trailers["x-echoed-trailer"], "from-client",
                "request trailers"
            );
        }
    });
}

#[test]
fn gateway_errors_on_grpc_requests_carry_grpc_status() {
    let runtime = runtime();
    let upstream = runtime.block_on(grpc_upstream());
    let proxy = grpc_proxy(upstream);
    runtime.block_on(async {
        let cases = [
            ("/no.Route/Call", "12"),  // UNIMPLEMENTED
            ("/down.Down/Call", "14"), // UNAVAILABLE
            ("/slow.Slow/Call", "4"),  // DEADLINE_EXCEEDED
        ];
        for (path, grpc_status) in cases {
            let (head, body, trailers) = grpc_call(proxy.address, path, grpc_frame(b"x")).await;
            assert_eq!(head.status(), 200, "{path}");
            let headers = head.headers();
            assert_eq!(headers["content-type"], "application/grpc", "{path}");
            // Trailers-only: the status is in the head (or in trailers, equally valid).
            let status = headers
                .get("grpc-status")
                .or_else(|| trailers.as_ref()?.get("grpc-status"))
                .unwrap_or_else(|| panic!("{path}: no grpc-status in {headers:?}"));
            assert_eq!(status, grpc_status, "{path}");
            assert!(headers.contains_key("grpc-message"), "{path}");
            assert!(body.is_empty(), "{path}: {body:?}");
        }
    });
    // Not gRPC: the same miss is still the JSON 404.
    let plain = proxy_support::curl(&[&proxy.url("/no.Route/Call")]);
    assert_eq!(plain.status, 404);
    assert_eq!(plain.json()["error"]["code"], "no_route");
}

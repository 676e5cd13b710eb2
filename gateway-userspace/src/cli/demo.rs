//! `gateway demo-upstream ADDRESS...`: a tiny HTTP service to try the gateway with. Every
//! request gets JSON describing it and which address answered, so a `curl` through the
//! gateway shows routing, rewriting and the forwarding headers. `cargo xtask run` starts it on
//! the addresses the example config's upstreams use.

use std::{convert::Infallible, net::SocketAddr};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub async fn run(addresses: &[SocketAddr]) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for &address in addresses {
        if !address.ip().is_loopback() {
            anyhow::bail!("{address}: the demo upstream only listens on loopback addresses");
        }
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        tracing::info!(%address, "demo upstream listening");
        tasks.spawn(serve(listener, address));
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = tasks.join_next() => {}
    }
    Ok(())
}

async fn serve(listener: TcpListener, address: SocketAddr) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(move |request| async move {
                Ok::<_, Infallible>(describe(address, &request))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn describe(address: SocketAddr, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value.into())
        })
        .collect();
    let body = serde_json::json!({
        "served_by": address.to_string(),
        "method": request.method().as_str(),
        "path": request.uri().path_and_query().map_or("/", |path| path.as_str()),
        "headers": headers,
    });
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(format!("{body:#}\n"))))
        .expect("static response parts are valid")
}

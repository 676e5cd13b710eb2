//! The `forward` stage: send the request to the chosen target over a pooled keep-alive
//! client, within the upstream's timeouts, and hand back its response.

use hyper::{Request, Response, Uri, Version, http::uri::Scheme};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use crate::config::UpstreamConfig;

use super::{
    RequestContext,
    body::{ProxyBody, boxed},
    error::{ErrorKind, ProxyError},
    limits::is_body_limit,
};

/// One pool per upstream, so each has its own timeouts.
pub type UpstreamClient = Client<HttpConnector, ProxyBody>;

pub fn client(config: &UpstreamConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(config.idle_timeout)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

pub async fn forward(
    ctx: &RequestContext,
    mut req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upstream = ctx.upstream();
    let target = &upstream.config.targets[ctx.target.expect("balance ran before forward")];
    let path = ctx.upstream_path.clone().expect("route ran before forward");
    *req.uri_mut() = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(target.address.as_str())
        .path_and_query(path)
        .build()
        .map_err(|error| ProxyError::new(ErrorKind::Internal, format!("upstream URI: {error}")))?;
    // Upstreams get HTTP/1.1 whatever the client spoke.
    *req.version_mut() = Version::HTTP_11;

    let timeout = upstream.config.request_timeout;
    let describe = |what: &str| format!("{what} {} ({})", target.address, upstream.config.name);
    match tokio::time::timeout(timeout, upstream.client.request(req)).await {
        Err(_elapsed) => Err(ProxyError {
            sent: true,
            ..ProxyError::new(
                ErrorKind::UpstreamTimeout,
                describe(&format!("no response within {timeout:?} from")),
            )
        }),
        Ok(Ok(mut response)) => {
            // The client gets its own protocol version back, not the upstream's.
            *response.version_mut() = Version::HTTP_11;
            Ok(response.map(boxed))
        }
        Ok(Err(error)) => Err(classify(&error, describe)),
    }
}

/// Maps a client error to who caused it: the body limit (413), a connect timeout (504), or
/// any other upstream failure (502).
fn classify(
    error: &hyper_util::client::legacy::Error,
    describe: impl Fn(&str) -> String,
) -> ProxyError {
    if is_body_limit(error) {
        return ProxyError::new(ErrorKind::BodyTooLarge, "request body over the limit");
    }
    let timed_out = chain(error).any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    });
    let (kind, what) = match (error.is_connect(), timed_out) {
        (true, true) => (ErrorKind::UpstreamTimeout, "connect timed out to"),
        (true, false) => (ErrorKind::UpstreamFailed, "cannot connect to"),
        (false, _) => (ErrorKind::UpstreamFailed, "request failed to"),
    };
    ProxyError {
        // Not connected: nothing reached the upstream, so any request may be retried.
        sent: !error.is_connect(),
        ..ProxyError::new(
            kind,
            format!(
                "{}: {}",
                describe(what),
                chain(error).last().map_or(String::new(), |e| e.to_string())
            ),
        )
    }
}

fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |error| error.source())
}

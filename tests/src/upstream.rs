//! A real HTTP/1.1 upstream for proxy tests, on 127.0.0.1 with a port the kernel picks.
//!
//! Every response is JSON describing the request it got:
//! `{"upstream": NAME, "method": "GET", "path": "/a?b", "headers": {"host": "..."}, "body_bytes": 0}`
//! (repeated header fields are joined with ", "). It counts hits, and can be told to delay
//! or to answer with another status, for every request ([`Upstream::set_delay`],
//! [`Upstream::set_status`]) or per request with the `x-upstream-delay-ms` and
//! `x-upstream-status` request headers, or per path ([`Upstream::set_status_on`], e.g. a
//! failing `/healthz`; [`Upstream::hits_on`] counts one path's requests). Per path it can
//! also add response headers ([`Upstream::set_headers_on`]: `Cache-Control`, `ETag`,
//! `Vary`...) and delay ([`Upstream::set_delay_on`]); a request whose `If-None-Match` names
//! the `ETag` set for its path is answered 304 with no body (a revalidation). It runs on its own thread and stops
//! when dropped; [`Upstream::stop`] and [`Upstream::restart`] take it down and bring it back
//! on the same address (for stale-if-error). [`Upstream::start_tls`] serves the same over
//! TLS (rustls, with the ALPN and client-certificate rules of the server config given).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Bytes, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::oneshot;

/// Longest delay a test may ask for: keeps a broken test from hanging.
const MAX_DELAY: Duration = Duration::from_secs(30);

/// A running upstream; stopped when dropped.
pub struct Upstream {
    name: String,
    address: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

struct State {
    name: String,
    hits: AtomicUsize,
    status: Mutex<u16>,
    delay: Mutex<Duration>,
    /// Per path (without the query): a status that overrides `status`, and hits.
    path_status: Mutex<BTreeMap<String, u16>>,
    path_hits: Mutex<BTreeMap<String, usize>>,
    path_headers: Mutex<BTreeMap<String, Vec<(String, String)>>>,
    path_delay: Mutex<BTreeMap<String, Duration>>,
}

impl Upstream {
    /// Starts an upstream called `name` (echoed in every response as `"upstream"`).
    pub fn start(name: &str) -> Upstream {
        Self::start_at(name, "127.0.0.1:0".parse().unwrap())
    }

    /// Like [`Upstream::start`], on a given address (e.g. a port a test kept free).
    pub fn start_at(name: &str, address: SocketAddr) -> Upstream {
        Self::launch(name, address, None)
    }

    /// Like [`Upstream::start`], over TLS with `tls` (its certificate, ALPN, client auth).
    pub fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> Upstream {
        Self::launch(name, "127.0.0.1:0".parse().unwrap(), Some(tls))
    }

    fn launch(name: &str, address: SocketAddr, tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
        let listener = std::net::TcpListener::bind(address).expect("binding an upstream");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let address = listener.local_addr().expect("the upstream's address");
        let state = Arc::new(State {
            name: name.to_owned(),
            hits: AtomicUsize::new(0),
            status: Mutex::new(200),
            delay: Mutex::new(Duration::ZERO),
            path_status: Mutex::new(BTreeMap::new()),
            path_hits: Mutex::new(BTreeMap::new()),
            path_headers: Mutex::new(BTreeMap::new()),
            path_delay: Mutex::new(BTreeMap::new()),
        });
        let (stop, stopped) = oneshot::channel();
        let thread = {
            let state = state.clone();
            thread::Builder::new()
                .name(format!("upstream-{name}"))
                .spawn(move || serve(listener, state, stopped, tls))
                .expect("spawning the upstream thread")
        };
        Upstream {
            name: name.to_owned(),
            address,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `127.0.0.1:PORT`, as a config's target address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Requests answered so far (or being answered).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Status for every following response (200 to start with).
    pub fn set_status(&self, status: u16) {
        *self.state.status.lock().unwrap() = status;
    }

    /// Requests for `path` (without the query) so far.
    pub fn hits_on(&self, path: &str) -> usize {
        let hits = self.state.path_hits.lock().unwrap();
        hits.get(path).copied().unwrap_or(0)
    }

    /// Status for every following response to `path` (e.g. a health check's).
    pub fn set_status_on(&self, path: &str, status: u16) {
        let mut statuses = self.state.path_status.lock().unwrap();
        statuses.insert(path.to_owned(), status);
    }

    /// Response headers for every following response to `path` (replacing earlier ones).
    pub fn set_headers_on(&self, path: &str, headers: &[(&str, &str)]) {
        let headers = headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        let mut all = self.state.path_headers.lock().unwrap();
        all.insert(path.to_owned(), headers);
    }

    /// Delay before every following response to `path`.
    pub fn set_delay_on(&self, path: &str, delay: Duration) {
        let mut all = self.state.path_delay.lock().unwrap();
        all.insert(path.to_owned(), delay.min(MAX_DELAY));
    }

    /// Stops serving (connections close, the port is released) and returns the address,
    /// for [`Upstream::restart`].
    pub fn stop(self) -> SocketAddr {
        self.address
    }

    /// A fresh upstream (no hits, no settings) on the address a stopped one had.
    pub fn restart(name: &str, address: SocketAddr) -> Upstream {
        Self::start_at(name, address)
    }

    /// Delay before every following response (none to start with).
    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay.min(MAX_DELAY);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(
    listener: std::net::TcpListener,
    state: Arc<State>,
    stopped: oneshot::Receiver<()>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the upstream's runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        tokio::pin!(stopped);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                _ = &mut stopped => break,
            };
            let state = state.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(state.clone(), req));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    // A failed handshake (a client refusing the certificate) just closes.
                    Some(acceptor) => {
                        let accept = acceptor.accept(stream);
                        if let Ok(Ok(stream)) = tokio::time::timeout(MAX_DELAY, accept).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            });
        }
    });
    // Dropping the runtime here ends every connection task.
}

async fn answer(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let header_number = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
    };
    let path_delay = state
        .path_delay
        .lock()
        .unwrap()
        .get(req.uri().path())
        .copied();
    let delay = header_number("x-upstream-delay-ms")
        .map(Duration::from_millis)
        .or(path_delay)
        .unwrap_or(*state.delay.lock().unwrap())
        .min(MAX_DELAY);
    let extra_headers = state
        .path_headers
        .lock()
        .unwrap()
        .get(req.uri().path())
        .cloned()
        .unwrap_or_default();
    let path_status = {
        let path = req.uri().path().to_owned();
        *state
            .path_hits
            .lock()
            .unwrap()
            .entry(path.clone())
            .or_insert(0) += 1;
        state.path_status.lock().unwrap().get(&path).copied()
    };
    let status = header_number("x-upstream-status")
        .and_then(|status| u16::try_from(status).ok())
        .or(path_status)
        .unwrap_or(*state.status.lock().unwrap());

    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    let etag = extra_headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("etag"))
        .map(|(_, value)| value.as_str());
    let not_modified = etag.is_some()
        && req
            .headers()
            .get("if-none-match")
            .and_then(|value| value.to_str().ok())
            == etag;
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), ToString::to_string);
    let version = format!("{:?}", req.version());
    let body_bytes = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => 0,
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let json = serde_json::json!({
        "upstream": state.name,
        "method": method,
        "path": path,
        "version": version,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut response = Response::builder()
        .status(if not_modified { 304 } else { status })
        .header("content-type", "application/json")
        .header("x-upstream", state.name.as_str());
    for (name, value) in &extra_headers {
        response = response.header(name.as_str(), value.as_str());
    }
    let body = match not_modified {
        true => Bytes::new(),
        false => Bytes::from(json.to_string()),
    };
    let response = response.body(Full::new(body)).expect("a valid response");
    Ok(response)
}

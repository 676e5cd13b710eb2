//! The daemon side of the admin API.

use std::{
    convert::Infallible,
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::{net::UnixListener, task::JoinHandle};

use super::api::{self, ApiError, InterfaceStats, ReasonStats, Stats, XdpStats};
use crate::xdp::XdpFirewall;

/// What the admin API can see and change in the running daemon.
pub struct DaemonState {
    pub xdp: Mutex<Option<XdpFirewall>>,
}

impl DaemonState {
    pub fn stats(&self) -> Result<Stats, String> {
        let xdp = self
            .xdp
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(xdp) = xdp.as_ref() else {
            return Ok(Stats {
                xdp: XdpStats {
                    enabled: false,
                    interfaces: Vec::new(),
                    reasons: Vec::new(),
                },
            });
        };
        let counters = xdp.counters().map_err(|error| error.to_string())?;
        Ok(Stats {
            xdp: XdpStats {
                enabled: true,
                interfaces: xdp
                    .attachments()
                    .iter()
                    .map(|attachment| InterfaceStats {
                        name: attachment.interface.clone(),
                        mode: attachment.mode,
                    })
                    .collect(),
                reasons: counters
                    .into_iter()
                    .map(|(reason, counter)| ReasonStats {
                        reason: reason.name().to_owned(),
                        verdict: if reason.is_drop() { "drop" } else { "pass" }.to_owned(),
                        packets: counter.packets,
                        bytes: counter.bytes,
                    })
                    .collect(),
            },
        })
    }
}

/// The listening admin socket; dropping it stops serving and removes the socket file.
pub struct AdminServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Fails if another daemon answers on `path`: call it before touching the kernel, so a
    /// second daemon stops before it disturbs the first one's interfaces.
    pub async fn ensure_free(path: &Path) -> anyhow::Result<()> {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another gateway is already running: its admin socket {} answers; stop it first",
                path.display()
            );
        }
        Ok(())
    }

    /// Binds the socket (root-only: mode 0600) and serves it. A stale socket file from a
    /// crashed daemon is replaced. Bind it last: a connectable socket means "fully up".
    pub async fn bind(path: &Path, state: Arc<DaemonState>) -> anyhow::Result<AdminServer> {
        use anyhow::Context as _;
        Self::ensure_free(path).await?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| {
                format!("creating the admin socket directory {}", parent.display())
            })?;
        }
        if path.exists() {
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale admin socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding the admin socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting the admin socket {}", path.display()))?;
        let task = tokio::spawn(accept_loop(listener, state));
        Ok(AdminServer {
            path: path.to_owned(),
            task,
        })
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove the admin socket");
        }
    }
}

async fn accept_loop(listener: UnixListener, state: Arc<DaemonState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, request)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

fn handle<B>(state: &DaemonState, request: Request<B>) -> Response<Full<Bytes>> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, api::STATS_PATH) => match state.stats() {
            Ok(stats) => json(StatusCode::OK, &stats),
            Err(error) => json(
                StatusCode::INTERNAL_SERVER_ERROR,
                &ApiError {
                    error: format!("reading the XDP counters failed: {error}"),
                },
            ),
        },
        (_, path) => json(
            StatusCode::NOT_FOUND,
            &ApiError {
                error: format!("no admin endpoint {} {path}", request.method()),
            },
        ),
    }
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).expect("API types serialize");
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

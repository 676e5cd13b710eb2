//! The daemon side of the admin API.

use std::{
    convert::Infallible,
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use serde::{Serialize, de::DeserializeOwned};
use tokio::{net::UnixListener, task::JoinHandle};

use super::api::{
    self, ApiError, Ban, BanList, BanRequest, InterfaceStats, ReasonStats, SourceDrops, Stats,
    UnbanRequest, XdpStats,
};
use crate::xdp::{self, XdpFirewall};

/// Sources listed under "top sources" in stats.
const TOP_SOURCES: usize = 10;
/// Largest admin request body accepted.
const MAX_BODY: usize = 1 << 20;

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
                    top_sources: Vec::new(),
                },
            });
        };
        let counters = xdp.counters().map_err(|error| error.to_string())?;
        let top_sources = xdp
            .top_dropped_sources(TOP_SOURCES)
            .map_err(|error| error.to_string())?
            .into_iter()
            .map(|(address, packets)| SourceDrops {
                address: address.to_string(),
                packets,
            })
            .collect();
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
                top_sources,
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
                async move { Ok::<_, Infallible>(handle(&state, request).await) }
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

async fn handle(state: &DaemonState, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let result = match (&method, path.as_str()) {
        (&Method::GET, api::STATS_PATH) => state
            .stats()
            .map(|stats| json(StatusCode::OK, &stats))
            .map_err(|error| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("reading the XDP counters failed: {error}"),
                )
            }),
        (&Method::GET, api::BANS_PATH) => state.bans().map(|bans| json(StatusCode::OK, &bans)),
        (&Method::POST, api::BANS_PATH) => match body::<BanRequest>(request).await {
            Ok(ban) => state.ban(&ban).map(|ban| json(StatusCode::OK, &ban)),
            Err(error) => Err(error),
        },
        (&Method::POST, api::UNBAN_PATH) => match body::<UnbanRequest>(request).await {
            Ok(unban) => state
                .unban(&unban.cidr)
                .map(|ban| json(StatusCode::OK, &ban)),
            Err(error) => Err(error),
        },
        _ => Err((
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {path}"),
        )),
    };
    result.unwrap_or_else(|(status, error)| json(status, &ApiError { error }))
}

/// The request's JSON body, or a 400 that says what is wrong with it.
async fn body<T: DeserializeOwned>(request: Request<Incoming>) -> Result<T, (StatusCode, String)> {
    let bytes = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|error| {
            (
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {error}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|error| {
        (
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {error}"),
        )
    })
}

/// An address or CIDR as the API accepts it.
fn parse_net(text: &str) -> Result<IpNet, (StatusCode, String)> {
    let net = text
        .parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                format!("{text:?} is not an IP address or CIDR (e.g. 192.0.2.7, 2001:db8::/64)"),
            )
        })?;
    if net.trunc() != net {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("{text:?} has host bits set: did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

impl DaemonState {
    fn firewall(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, Option<XdpFirewall>>, (StatusCode, String)> {
        let guard = self
            .xdp
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if guard.is_none() {
            return Err((
                StatusCode::CONFLICT,
                "bans need the XDP program, and xdp.mode is \"off\"".to_owned(),
            ));
        }
        Ok(guard)
    }

    fn bans(&self) -> Result<BanList, (StatusCode, String)> {
        let guard = self.firewall()?;
        let xdp = guard.as_ref().expect("checked by firewall()");
        let now = xdp::now();
        let mut bans: Vec<Ban> = xdp
            .bans()
            .map_err(internal)?
            .into_iter()
            .map(|(net, expires)| Ban {
                cidr: net.to_string(),
                expires_in_secs: expires.map(|at| at.saturating_sub(now).as_secs_f64()),
            })
            .collect();
        bans.sort_by(|a, b| a.cidr.cmp(&b.cidr));
        Ok(BanList { bans })
    }

    fn ban(&self, request: &BanRequest) -> Result<Ban, (StatusCode, String)> {
        let net = parse_net(&request.cidr)?;
        let duration = match request.duration_secs {
            Some(secs) if !(secs.is_finite() && secs > 0.0) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("duration_secs must be a positive number, not {secs}"),
                ));
            }
            Some(secs) => Some(std::time::Duration::from_secs_f64(secs)),
            None => None,
        };
        let mut guard = self.firewall()?;
        let xdp = guard.as_mut().expect("checked by firewall()");
        xdp.ban(net, duration.map(|duration| xdp::now() + duration))
            .map_err(internal)?;
        tracing::info!(%net, ?duration, "source banned");
        Ok(Ban {
            cidr: net.to_string(),
            expires_in_secs: duration.map(|duration| duration.as_secs_f64()),
        })
    }

    fn unban(&self, cidr: &str) -> Result<BanList, (StatusCode, String)> {
        let net = parse_net(cidr)?;
        {
            let mut guard = self.firewall()?;
            let xdp = guard.as_mut().expect("checked by firewall()");
            if !xdp.unban(net).map_err(internal)? {
                return Err((StatusCode::NOT_FOUND, format!("{net} is not banned")));
            }
        }
        tracing::info!(%net, "ban lifted");
        self.bans()
    }

    /// Removes expired bans from the kernel maps (they already stopped matching).
    pub fn sweep_expired_bans(&self) {
        let mut guard = self
            .xdp
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(xdp) = guard.as_mut() {
            match xdp.sweep_expired_bans() {
                Ok(expired) => {
                    for net in expired {
                        tracing::info!(%net, "ban expired");
                    }
                }
                Err(error) => tracing::warn!(%error, "sweeping expired bans failed"),
            }
        }
    }
}

fn internal(error: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).expect("API types serialize");
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

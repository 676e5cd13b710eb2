//! The daemon side of the admin API.

use std::{
    convert::Infallible,
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::{
    net::UnixListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{
    ReloadRequest,
    api::{
        self, ApiError, BanRequest, Done, ImportRequest, ImportResult, Reloaded, RemoveRuleRequest,
        RuleRequest, UnbanRequest,
    },
    state::{ApiFailure, DaemonState},
};

/// Largest import accepted (100k CIDRs are about 2 MiB).
const MAX_IMPORT: usize = 64 << 20;
/// Largest other admin request body accepted.
const MAX_BODY: usize = 1 << 20;

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
    pub async fn bind(
        path: &Path,
        state: Arc<DaemonState>,
        reloads: mpsc::Sender<ReloadRequest>,
    ) -> anyhow::Result<AdminServer> {
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
        let task = tokio::spawn(accept_loop(listener, Arc::new(Api { state, reloads })));
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

/// What request handlers reach: the daemon's state and its reload loop.
struct Api {
    state: Arc<DaemonState>,
    reloads: mpsc::Sender<ReloadRequest>,
}

async fn accept_loop(listener: UnixListener, api: Arc<Api>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let api = api.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(handle(&api, request).await) }
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

async fn handle(api: &Api, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let state = &api.state;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let result = match (&method, path.as_str()) {
        (&Method::GET, api::STATS_PATH) => state.stats().map(|stats| json(&stats)),
        (&Method::GET, api::RULES_PATH) => state.rules().map(|rules| json(&rules)),
        (&Method::POST, api::RULES_PATH) => match body::<RuleRequest>(request, MAX_BODY).await {
            Ok(rule) => state.add_rule(&rule).map(|entry| json(&entry)),
            Err(failure) => Err(failure),
        },
        (&Method::POST, api::REMOVE_RULE_PATH) => {
            match body::<RemoveRuleRequest>(request, MAX_BODY).await {
                Ok(rule) => state
                    .remove_rule(&rule.cidr)
                    .map(|()| json(&Done { ok: true })),
                Err(failure) => Err(failure),
            }
        }
        (&Method::POST, api::IMPORT_PATH) => match body::<ImportRequest>(request, MAX_IMPORT).await
        {
            Ok(import) => state
                .import(&import)
                .map(|imported| json(&ImportResult { imported })),
            Err(failure) => Err(failure),
        },
        (&Method::POST, api::RELOAD_PATH) => reload(&api.reloads).await,
        (&Method::GET, api::BANS_PATH) => state.bans().map(|bans| json(&bans)),
        (&Method::POST, api::BANS_PATH) => match body::<BanRequest>(request, MAX_BODY).await {
            Ok(ban) => state.ban(&ban).map(|ban| json(&ban)),
            Err(failure) => Err(failure),
        },
        (&Method::POST, api::UNBAN_PATH) => match body::<UnbanRequest>(request, MAX_BODY).await {
            Ok(unban) => state.unban(&unban.cidr).map(|()| json(&Done { ok: true })),
            Err(failure) => Err(failure),
        },
        _ => Err(ApiFailure {
            status: StatusCode::NOT_FOUND,
            message: format!("no admin endpoint {method} {path}"),
        }),
    };
    result.unwrap_or_else(|failure| {
        let mut response = json(&ApiError {
            error: failure.message,
        });
        *response.status_mut() = failure.status;
        response
    })
}

/// Hands the reload to the daemon's main loop (the one place reloads happen) and waits.
async fn reload(
    reloads: &mpsc::Sender<ReloadRequest>,
) -> Result<Response<Full<Bytes>>, ApiFailure> {
    let gone = || ApiFailure {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "the daemon is shutting down".to_owned(),
    };
    let (reply, answer) = oneshot::channel();
    reloads.send(reply).await.map_err(|_| gone())?;
    match answer.await.map_err(|_| gone())? {
        Ok(message) => Ok(json(&Reloaded { message })),
        Err(message) => Err(ApiFailure {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message,
        }),
    }
}

/// The request's JSON body, or a 400 that says what is wrong with it.
async fn body<T: DeserializeOwned>(
    request: Request<Incoming>,
    limit: usize,
) -> Result<T, ApiFailure> {
    let bad = |message: String| ApiFailure {
        status: StatusCode::BAD_REQUEST,
        message,
    };
    let bytes = Limited::new(request.into_body(), limit)
        .collect()
        .await
        .map_err(|error| bad(format!("reading the request body: {error}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|error| bad(format!("invalid request body: {error}")))
}

fn json(body: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).expect("API types serialize");
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

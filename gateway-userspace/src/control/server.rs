//! The daemon side of the admin API.

use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
};
use serde::{Serialize, de::DeserializeOwned};
use subtle::ConstantTimeEq as _;
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{
    ReloadRequest,
    failure::ApiFailure,
    listen::{Listen, serve_connections},
};
use crate::{
    api::{
        self, ApiError, BanRequest, Done, ImportRequest, ImportResult, Reloaded, RemoveRuleRequest,
        RuleRequest, UnbanRequest,
        valid::{self, ValidPage},
    },
    cluster::{Cluster, LocalMetering},
    config::{AdminConfig, SideLimits},
    defend::Defender,
    firewall::{Firewall, FirewallResult},
};

/// Chunks of a streamed import read ahead of the parser.
const IMPORT_READ_AHEAD: usize = 4;
/// Largest other admin request body accepted.
const MAX_BODY: usize = 1 << 20;

/// The listening admin socket; dropping it stops serving and removes the socket file.
pub struct AdminServer {
    path: PathBuf,
    tasks: Vec<JoinHandle<()>>,
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

    /// Binds the socket (root-only: mode 0600), and the loopback TCP listener if configured,
    /// and serves them. A stale socket file from a crashed daemon is replaced. Bind it last:
    /// a connectable socket means "fully up".
    pub async fn bind(
        admin: &AdminConfig,
        firewall: Arc<Firewall>,
        defender: Arc<Defender>,
        cluster: Option<Arc<Cluster>>,
        reloads: mpsc::Sender<ReloadRequest>,
        cache: Arc<crate::proxy::cache::Store>,
        metering: Arc<dyn LocalMetering>,
    ) -> anyhow::Result<AdminServer> {
        use anyhow::Context as _;
        let path = admin.socket.as_path();
        let api = Arc::new(Api {
            firewall,
            defender,
            cluster,
            reloads,
            cache,
            metering,
        });
        let mut tasks = Vec::new();
        // TCP first: the socket appearing is the "ready" signal.
        if let Some(tcp) = &admin.tcp {
            let listener = TcpListener::bind(tcp.address)
                .await
                .with_context(|| format!("admin.tcp: binding {}", tcp.address))?;
            tracing::info!(address = %tcp.address, "admin API listening on TCP (bearer token required)");
            let token: Arc<str> = tcp.token.as_str().into();
            tasks.push(tokio::spawn(accept(
                listener,
                "admin-tcp",
                admin.limits,
                api.clone(),
                Some(token),
            )));
        }
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
        tasks.push(tokio::spawn(accept(
            listener,
            "admin-socket",
            admin.limits,
            api,
            None,
        )));
        Ok(AdminServer {
            path: path.to_owned(),
            tasks,
        })
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "could not remove the admin socket");
        }
    }
}

/// What request handlers reach: the daemon's firewall, its reload loop and the proxy's
/// response cache.
struct Api {
    firewall: Arc<Firewall>,
    defender: Arc<Defender>,
    /// Cluster mode (`[cluster]`): the cluster-wide metering.
    cluster: Option<Arc<Cluster>>,
    reloads: mpsc::Sender<ReloadRequest>,
    cache: Arc<crate::proxy::cache::Store>,
    /// This node's proxy metering.
    metering: Arc<dyn LocalMetering>,
}

/// Serves one admin listener. Over TCP every request must carry the bearer token; the unix
/// socket is guarded by its file permissions instead.
async fn accept<L: Listen>(
    listener: L,
    name: &'static str,
    limits: SideLimits,
    api: Arc<Api>,
    token: Option<Arc<str>>,
) {
    serve_connections(listener, name, limits, move |request: Request<Incoming>| {
        let (api, token) = (api.clone(), token.clone());
        async move {
            if let Some(token) = token
                && !bearer_matches(&request, &token)
            {
                return unauthorized();
            }
            handle(&api, request).await
        }
    })
    .await;
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn bearer_matches<B>(request: &Request<B>, token: &str) -> bool {
    let Some(given) = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Unequal lengths answer at once: the length is not the secret.
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut response = json(&ApiError {
        field: None,
        error: "the admin API over TCP needs `Authorization: Bearer <token>` with the token \
                from admin.token_env (the CLI reads $GATEWAY_ADMIN_TOKEN)"
            .to_owned(),
    });
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        hyper::header::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn handle(api: &Api, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let firewall = &api.firewall;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().map(str::to_owned);
    let result = match (&method, path.as_str()) {
        (&Method::GET, api::STATS_PATH) => {
            blocking(firewall, |f| f.stats()).await.map(|s| json(&s))
        }
        (&Method::GET, api::EXPLAIN_PATH) => {
            let address = query
                .as_deref()
                .and_then(|query| query.strip_prefix("address="))
                .unwrap_or("")
                .to_owned();
            // The defender's view joins the firewall's here: neither service knows the other.
            let defender = api.defender.clone();
            blocking(firewall, move |f| {
                let mut explanation = f.explain(&address)?;
                let address = valid::address("address", &address)?;
                explanation.l7 = Some(defender.view(address));
                Ok(explanation)
            })
            .await
            .map(|explanation| json(&explanation))
        }
        (&Method::GET, api::METERING_PATH) if query.as_deref() == Some("cluster=1") => {
            cluster_metering(api.cluster.as_deref())
                .await
                .map(|metering| json(&metering))
        }
        (&Method::GET, api::METERING_PATH) => Ok(json(&api.metering.totals())),
        (&Method::GET, api::RULES_PATH) => match page(query.as_deref()) {
            Ok(page) => blocking(firewall, move |f| f.rules(page))
                .await
                .map(|rules| json(&rules)),
            Err(failure) => Err(failure),
        },
        (&Method::POST, api::RULES_PATH) => match body::<RuleRequest>(request, MAX_BODY).await {
            Ok(rule) => blocking(firewall, move |f| f.add_rule(&rule))
                .await
                .map(|entry| json(&entry)),
            Err(failure) => Err(failure),
        },
        (&Method::POST, api::REMOVE_RULE_PATH) => {
            match body::<RemoveRuleRequest>(request, MAX_BODY).await {
                Ok(rule) => blocking(firewall, move |f| f.remove_rule(&rule.cidr))
                    .await
                    .map(|()| json(&Done { ok: true })),
                Err(failure) => Err(failure),
            }
        }
        (&Method::POST, api::PROMOTE_PATH) => {
            match body::<RemoveRuleRequest>(request, MAX_BODY).await {
                Ok(rule) => blocking(firewall, move |f| f.promote(&rule.cidr))
                    .await
                    .map(|()| json(&Done { ok: true })),
                Err(failure) => Err(failure),
            }
        }
        (&Method::GET, api::RATE_LIMITS_PATH) => blocking(firewall, |f| Ok(f.rate_limits()))
            .await
            .map(|limits| json(&limits)),
        (&Method::POST, api::RATE_LIMITS_PATH) => {
            match body::<api::RawLimits>(request, MAX_BODY).await {
                Ok(limits) => blocking(firewall, move |f| f.set_rate_limits(Some(limits)))
                    .await
                    .map(|limits| json(&limits)),
                Err(failure) => Err(failure),
            }
        }
        (&Method::POST, api::RATE_LIMITS_RESET_PATH) => {
            blocking(firewall, |f| f.set_rate_limits(None))
                .await
                .map(|limits| json(&limits))
        }
        (&Method::POST, api::IMPORT_PATH) if is_import_lines(&request) => {
            import_lines(firewall, query.as_deref(), request)
                .await
                .map(|imported| json(&ImportResult { imported }))
        }
        (&Method::POST, api::IMPORT_PATH) => match body::<ImportRequest>(request, MAX_BODY).await {
            Ok(import) => blocking(firewall, move |f| f.import(&import))
                .await
                .map(|imported| json(&ImportResult { imported })),
            Err(failure) => Err(failure),
        },
        (&Method::POST, api::RELOAD_PATH) => reload(&api.reloads).await,
        (&Method::POST, api::CACHE_PURGE_PATH) => {
            match body::<api::PurgeRequest>(request, MAX_BODY).await {
                Ok(purge) => purge_cache(&api.cache, purge).await,
                Err(failure) => Err(failure),
            }
        }
        (&Method::GET, api::UNDER_ATTACK_PATH) => Ok(json(&api.defender.under_attack_status())),
        (&Method::POST, api::UNDER_ATTACK_PATH) => {
            match body::<api::UnderAttackRequest>(request, MAX_BODY).await {
                Ok(switch) => api
                    .defender
                    .switch_under_attack(switch.on, "operator".to_owned())
                    .map(|status| json(&status))
                    .map_err(ApiFailure::from),
                Err(failure) => Err(failure),
            }
        }
        (&Method::POST, api::KNOWN_GOOD_PATH) => {
            match body::<api::KnownGoodRequest>(request, MAX_BODY).await {
                Ok(known) => {
                    known
                        .validate()
                        .map_err(ApiFailure::from)
                        .and_then(|(address, ttl)| {
                            api.defender
                                .mark_known_good(address, ttl)
                                .map(|known| json(&known))
                                .map_err(ApiFailure::from)
                        })
                }
                Err(failure) => Err(failure),
            }
        }
        (&Method::GET, api::BANS_PATH) => match page(query.as_deref()) {
            Ok(page) => blocking(firewall, move |f| f.bans(page))
                .await
                .map(|bans| json(&bans)),
            Err(failure) => Err(failure),
        },
        (&Method::POST, api::BANS_PATH) => match body::<BanRequest>(request, MAX_BODY).await {
            Ok(ban) => blocking(firewall, move |f| f.ban(&ban))
                .await
                .map(|ban| json(&ban)),
            Err(failure) => Err(failure),
        },
        (&Method::POST, api::UNBAN_PATH) => match body::<UnbanRequest>(request, MAX_BODY).await {
            Ok(unban) => blocking(firewall, move |f| f.unban(&unban.cidr))
                .await
                .map(|()| json(&Done { ok: true })),
            Err(failure) => Err(failure),
        },
        _ => Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {path}"),
        )),
    };
    result.unwrap_or_else(|failure| {
        let mut response = json(&ApiError {
            error: failure.message,
            field: failure.field,
        });
        *response.status_mut() = failure.status;
        response
    })
}

/// Runs a firewall call on a blocking thread: it syncs the store to disk, and may parse and
/// write megabytes, so never on the async workers the proxy shares.
async fn blocking<T: Send + 'static>(
    firewall: &Arc<Firewall>,
    call: impl FnOnce(&Firewall) -> FirewallResult<T> + Send + 'static,
) -> Result<T, ApiFailure> {
    let firewall = firewall.clone();
    tokio::task::spawn_blocking(move || call(&firewall))
        .await
        .map_err(|error| {
            ApiFailure::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the firewall call failed: {error}"),
            )
        })?
        .map_err(ApiFailure::from)
}

/// A query string's `key=value` pairs, values percent-decoded; a key without `=` has "".
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key, percent_decode(value))
        })
}

/// `?limit=N&after=CIDR` of a listing.
fn page(query: Option<&str>) -> Result<ValidPage, ApiFailure> {
    let mut page = api::PageQuery::default();
    for (key, value) in query_pairs(query) {
        match key {
            "limit" => {
                page.limit = Some(value.parse().map_err(|_| {
                    let mut failure = ApiFailure::new(
                        StatusCode::BAD_REQUEST,
                        format!("limit: {value:?} is not a number of entries"),
                    );
                    failure.field = Some("limit".to_owned());
                    failure
                })?)
            }
            "after" => page.after = Some(value),
            _ => {
                return Err(ApiFailure::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {key:?}: give limit and after"),
                ));
            }
        }
    }
    page.validate().map_err(ApiFailure::from)
}

/// `%XX` escapes decoded (a CIDR's `/` and `:` may arrive escaped).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = bytes
            .get(index + 1..index + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[index], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                index += 3;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The request's body, whole, up to `limit` bytes (a 400 beyond, or when reading fails).
async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, ApiFailure> {
    Ok(Limited::new(request.into_body(), limit)
        .collect()
        .await
        .map_err(|error| {
            ApiFailure::new(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {error}"),
            )
        })?
        .to_bytes())
}

/// A streamed import: the body is its lines (not JSON).
fn is_import_lines<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case(api::IMPORT_LINES_TYPE))
}

/// What a chunk reader tells the parser.
enum Chunk {
    Data(Bytes),
    /// The body ended as sent: what was read is the whole import.
    End,
}

/// Imports the lines of the body as they arrive, never holding it whole: the chunks go to a
/// blocking thread that parses them (and then writes the store and the maps), while this
/// task only reads. A refusal (a bad line, more rules than fit) stops the reading at once;
/// a body cut short imports nothing.
async fn import_lines(
    firewall: &Arc<Firewall>,
    query: Option<&str>,
    request: Request<Incoming>,
) -> Result<usize, ApiFailure> {
    let options = import_query(query)?;
    // A declared count that cannot fit is refused before the body is read.
    let mut import = blocking(firewall, move |f| f.start_import(options.lines)).await?;
    let (chunks, mut arriving) = mpsc::channel::<Chunk>(IMPORT_READ_AHEAD);
    let firewall = firewall.clone();
    let parser = tokio::task::spawn_blocking(move || {
        loop {
            match arriving.blocking_recv() {
                Some(Chunk::Data(data)) => import.push(&data)?,
                Some(Chunk::End) => break,
                None => {
                    return Err(ApiFailure::new(
                        StatusCode::BAD_REQUEST,
                        "reading the request body failed before its end; nothing was imported",
                    ));
                }
            }
        }
        firewall
            .finish_import(import, options.action, options.comment.as_deref())
            .map_err(ApiFailure::from)
    });
    let mut body = request.into_body();
    let read = loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            // The parser refused (its answer says why): the rest is not read.
            () = chunks.closed() => break Ok(()),
        };
        let chunk = match frame {
            None => Chunk::End,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => Chunk::Data(data),
                // Trailers: nothing to import.
                Err(_) => continue,
            },
            Some(Err(error)) => break Err(error),
        };
        let end = matches!(chunk, Chunk::End);
        if chunks.send(chunk).await.is_err() || end {
            break Ok(());
        }
    };
    drop(chunks);
    let imported = parser.await.unwrap_or_else(|error| {
        Err(ApiFailure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the import failed: {error}"),
        ))
    });
    match (read, imported) {
        (Err(error), Err(_)) => Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            format!("reading the request body: {error}; nothing was imported"),
        )),
        (_, imported) => imported,
    }
}

/// `?action=allow|deny&comment=TEXT&lines=N` of a streamed import.
fn import_query(query: Option<&str>) -> Result<api::import_lines::ImportQuery, ApiFailure> {
    let bad = |field: &str, message: String| {
        let mut failure = ApiFailure::new(StatusCode::BAD_REQUEST, message);
        failure.field = Some(field.to_owned());
        failure
    };
    let (mut action, mut comment, mut lines) = (None, None, None);
    for (key, value) in query_pairs(query) {
        match key {
            "action" => {
                action = Some(match value.as_str() {
                    "allow" => api::RuleAction::Allow,
                    "deny" => api::RuleAction::Deny,
                    _ => {
                        return Err(bad(
                            "action",
                            format!("action: {value:?} is neither allow nor deny"),
                        ));
                    }
                })
            }
            "comment" => comment = Some(value),
            "lines" => {
                lines = Some(value.parse().map_err(|_| {
                    bad(
                        "lines",
                        format!("lines: {value:?} is not a number of networks"),
                    )
                })?)
            }
            _ => {
                return Err(ApiFailure::new(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {key:?}: give action, comment and lines"),
                ));
            }
        }
    }
    let action = action.ok_or_else(|| {
        bad(
            "action",
            "action: missing; give ?action=allow or ?action=deny".to_owned(),
        )
    })?;
    Ok(api::import_lines::ImportQuery {
        action,
        comment,
        lines,
    })
}

/// Hands the reload to the daemon's main loop (the one place reloads happen) and waits.
async fn reload(
    reloads: &mpsc::Sender<ReloadRequest>,
) -> Result<Response<Full<Bytes>>, ApiFailure> {
    let gone = || {
        ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down",
        )
    };
    let (reply, answer) = oneshot::channel();
    reloads.send(reply).await.map_err(|_| gone())?;
    match answer.await.map_err(|_| gone())? {
        Ok(message) => Ok(json(&Reloaded { message })),
        Err(message) => Err(ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, message)),
    }
}

/// The request's JSON body, or a 400 that says what is wrong with it.
async fn body<T: DeserializeOwned>(
    request: Request<Incoming>,
    limit: usize,
) -> Result<T, ApiFailure> {
    parse_body(&read_body(request, limit).await?)
}

/// A JSON body as `T`; a value of the wrong type is a 400 that names its field.
fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiFailure> {
    let bad = |message: String| ApiFailure::new(StatusCode::BAD_REQUEST, message);
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut json).map_err(|error| {
        let field = error.path().to_string();
        let mut failure = bad(format!("invalid request body: {error}"));
        failure.field = (field != ".").then_some(field);
        failure
    })?;
    json.end()
        .map_err(|error| bad(format!("invalid request body: {error}")))?;
    Ok(value)
}

fn json(body: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).expect("API types serialize");
    Response::builder()
        .status(StatusCode::OK)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Removes cached responses by exact key or by prefix.
async fn purge_cache(
    cache: &crate::proxy::cache::Store,
    purge: api::PurgeRequest,
) -> Result<Response<Full<Bytes>>, ApiFailure> {
    use crate::proxy::cache::PurgeTarget;
    let bad = |message: &str| ApiFailure::new(StatusCode::BAD_REQUEST, message);
    let target = match (purge.key, purge.prefix) {
        (Some(key), None) if !key.trim().is_empty() => PurgeTarget::Key(key),
        (None, Some(prefix)) if !prefix.is_empty() => PurgeTarget::Prefix(prefix),
        (Some(_), Some(_)) => return Err(bad("give key or prefix, not both")),
        _ => {
            return Err(bad(
                "give a key (\"GET host/path?query\") or a prefix (\"host/path\" or \"/path\")",
            ));
        }
    };
    let purged = cache.purge(&target).await;
    tracing::info!(?target, purged, "cache purged");
    Ok(json(&api::Purged { purged }))
}

/// Metering totals of every node (`?cluster=1`).
async fn cluster_metering(cluster: Option<&Cluster>) -> Result<api::Metering, ApiFailure> {
    let Some(cluster) = cluster else {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "cluster mode is off: there is no [cluster] section in the config",
        ));
    };
    cluster.metering().await.map_err(|error| {
        ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading the cluster's metering from Redis failed: {error}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_of_the_wrong_shape_is_a_400_naming_the_field() {
        let table: [(&str, Option<&str>); 10] = [
            (
                r#"{"cidr": "192.0.2.7", "duration_secs": "10"}"#,
                Some("duration_secs"),
            ),
            (
                r#"{"cidr": "192.0.2.7", "duration_secs": [1]}"#,
                Some("duration_secs"),
            ),
            (
                r#"{"cidr": "192.0.2.7", "duration_secs": {}}"#,
                Some("duration_secs"),
            ),
            (
                r#"{"cidr": "192.0.2.7", "duration_secs": 1e400}"#,
                Some("duration_secs"),
            ),
            (r#"{"cidr": 7}"#, Some("cidr")),
            (
                r#"{"cidr": "192.0.2.7", "comment": false}"#,
                Some("comment"),
            ),
            (r#"{"duration_secs": 1}"#, None),
            (r#"{"cidr": "192.0.2.7"} trailing"#, None),
            ("", None),
            ("[]", None),
        ];
        for (body, field) in table {
            let failure = parse_body::<BanRequest>(body.as_bytes()).unwrap_err();
            assert_eq!(failure.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(
                failure.field.as_deref(),
                field,
                "{body}: {}",
                failure.message
            );
            assert!(
                failure.message.starts_with("invalid request body: "),
                "{body}"
            );
        }
        let ban: BanRequest =
            parse_body(br#"{"cidr": "192.0.2.7", "duration_secs": null}"#).unwrap();
        assert_eq!(ban.duration_secs, None);
    }

    #[test]
    fn only_the_exact_bearer_token_matches() {
        let token = "s3cret-token";
        let with = |value: &str| {
            let mut request = Request::new(());
            request.headers_mut().insert(
                hyper::header::AUTHORIZATION,
                hyper::header::HeaderValue::from_str(value).unwrap(),
            );
            bearer_matches(&request, token)
        };
        assert!(with("Bearer s3cret-token"));
        for refused in [
            "Bearer S3cret-token",
            "Bearer s3cret-tokem",
            "Bearer s3cret-toke",
            "Bearer s3cret-token ",
            "Bearer s3cret-tokenx",
            "Bearer ",
            "Bearer",
            "bearer s3cret-token",
            "Basic s3cret-token",
            "s3cret-token",
        ] {
            assert!(!with(refused), "{refused:?}");
        }
        assert!(!bearer_matches(&Request::new(()), token));
    }

    #[tokio::test]
    async fn purge_needs_exactly_one_of_key_and_prefix() {
        let both = api::PurgeRequest {
            key: Some("GET a.test/x".into()),
            prefix: Some("/x".into()),
        };
        let blank = api::PurgeRequest {
            key: Some("  ".into()),
            prefix: None,
        };
        let cache = crate::proxy::cache::Store::new(&Default::default());
        for request in [api::PurgeRequest::default(), both, blank] {
            let failure = purge_cache(&cache, request.clone()).await.unwrap_err();
            assert_eq!(failure.status, StatusCode::BAD_REQUEST, "{request:?}");
        }
        let fine = api::PurgeRequest {
            key: None,
            prefix: Some("/x".into()),
        };
        assert_eq!(
            purge_cache(&cache, fine).await.unwrap().status(),
            StatusCode::OK
        );
    }
}

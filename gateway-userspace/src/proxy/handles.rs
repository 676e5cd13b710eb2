//! What the daemon hands the proxy at start: its neighbours, each behind what the proxy needs
//! of it. The proxy defines these traits; the daemon implements them for the services that
//! answer (wiring.rs), so the proxy knows no other service.

use std::{net::IpAddr, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;

use crate::guard::AcceptGuard;

use super::{observe::ProxyMetrics, otlp::Spans};
use crate::api::tickets::{KeyBytes, TicketKeys};

/// Handles the pipeline reaches through its snapshot; a reload carries them over.
#[derive(Clone, Default)]
pub struct Handles {
    /// The bans enforced at accept when XDP is off.
    pub guard: Arc<AcceptGuard>,
    /// Where every finished request is reported (the defender's L7 signals); `None`: nowhere.
    pub signals: Option<Arc<dyn RequestSignals>>,
    /// Cluster-wide rate limits (`[cluster]`); `None`: every limit is local.
    pub limiter: Option<Arc<dyn SharedLimiter>>,
    /// The request metrics and metering: built once by the daemon, read by the metrics
    /// endpoint, the admin API and the cluster's metering push.
    pub metrics: Arc<ProxyMetrics>,
    /// OTLP span export (`[otlp]`); `None`: off.
    pub spans: Option<Arc<Spans>>,
    /// Session ticket keys shared by every node (`[cluster]`); `None`: each node its own.
    pub ticket_keys: Option<Arc<dyn SharedTicketKeys>>,
}

/// One finished request, as the proxy reports it.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub client: IpAddr,
    pub status: u16,
    /// The normalised path (the raw one if normalising refused it).
    pub path: &'a str,
    /// The route's name, shared: a receiver that keeps it holds it without a copy.
    pub route: Option<&'a Arc<str>>,
    pub identity: Option<&'a str>,
}

/// Receives every finished request. Called on the request's task: must never block.
pub trait RequestSignals: Send + Sync + 'static {
    fn finished(&self, request: Finished<'_>);
}

/// Rate limits shared by every node (the cluster's limiter). Called on the request's task.
pub trait SharedLimiter: Send + Sync + 'static {
    /// Takes one request from `key`'s bucket: `count` per `period`, `burst` at once.
    fn check<'a>(
        &'a self,
        key: &'a str,
        count: u32,
        period: Duration,
        burst: u32,
    ) -> BoxFuture<'a, SharedDecision>;
}

/// Session ticket keys shared by every node (the cluster's), so a client resumes anywhere.
pub trait SharedTicketKeys: Send + Sync + 'static {
    /// The keys of `listener`, rotated first when `rotation` has passed since the last
    /// rotation (`fresh` becomes the current key). `None`: the store cannot be reached.
    fn sync<'a>(
        &'a self,
        listener: &'a str,
        rotation: Duration,
        fresh: KeyBytes,
    ) -> BoxFuture<'a, Option<TicketKeys>>;
}

/// What the shared limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedDecision {
    /// `remaining` requests left in the burst.
    Allowed { remaining: u32 },
    /// Over the limit: retry after the wait (`None`: the limit's own interval).
    Refused { retry_after: Option<Duration> },
    /// The shared store is down and the config says fail closed: a 503, not a 429.
    Unavailable,
}

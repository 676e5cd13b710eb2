//! What the daemon hands the proxy at start: its neighbours, each behind what the proxy needs
//! of it. The proxy defines these traits; the daemon implements them for the services that
//! answer (wiring.rs), so the proxy knows no other service.

use std::{net::IpAddr, sync::Arc};

use crate::{cluster::ClusterLimiter, guard::AcceptGuard};

/// Handles the pipeline reaches through its snapshot; a reload carries them over.
#[derive(Clone, Default)]
pub struct Handles {
    /// The bans enforced at accept when XDP is off.
    pub guard: Arc<AcceptGuard>,
    /// Where every finished request is reported (the defender's L7 signals); `None`: nowhere.
    pub signals: Option<Arc<dyn RequestSignals>>,
    /// Cluster-wide rate limits (`[cluster]`); `None`: every limit is local.
    pub limiter: Option<Arc<ClusterLimiter>>,
}

/// One finished request, as the proxy reports it.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub client: IpAddr,
    pub status: u16,
    /// The normalised path (the raw one if normalising refused it).
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub identity: Option<&'a str>,
}

/// Receives every finished request. Called on the request's task: must never block.
pub trait RequestSignals: Send + Sync + 'static {
    fn finished(&self, request: Finished<'_>);
}

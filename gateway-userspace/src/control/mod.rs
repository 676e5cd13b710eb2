//! The control plane: an HTTP/1.1 admin API on a unix socket (root-only by default), served
//! by the daemon and used by the CLI. A thin adapter: wire types ([`crate::api`]) in, domain calls
//! ([`crate::firewall`]), domain errors out as statuses ([`failure`]).

mod client;
mod failure;
mod listen;
mod metrics;
mod server;

pub use client::{Client, ClientError};
pub use failure::{ApiFailure, ApiResult};
pub use metrics::{Metrics, MetricsServer};
pub use server::AdminServer;

/// A reload asked for through the admin API: the daemon answers on the channel with what it
/// reloaded, or why it kept the running config.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<String, String>>;

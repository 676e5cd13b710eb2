//! The control plane: an HTTP/1.1 admin API on a unix socket (root-only by default), served
//! by the daemon and used by the CLI.

pub mod api;
mod client;
mod listen;
mod metrics;
mod server;
mod state;
pub mod valid;

pub use client::{Client, ClientError};
pub use metrics::MetricsServer;
pub use server::AdminServer;
pub use state::{ApiFailure, ApiResult, DaemonState};

/// A reload asked for through the admin API: the daemon answers on the channel with what it
/// reloaded, or why it kept the running config.
pub type ReloadRequest = tokio::sync::oneshot::Sender<Result<String, String>>;

//! The gateway daemon and CLI as a library, so integration tests and benchmarks drive the
//! same code as the `gateway` binary.

pub mod api;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod daemon;
pub mod defend;
pub mod firewall;
pub mod guard;
pub mod http;
pub mod proxy;
pub mod rlimit;
pub mod tls_client;
pub mod wiring;
pub mod xdp;

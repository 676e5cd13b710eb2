//! The integration tests: one binary, one module a former test file (aya's layout), so the
//! suite links once and `proxy_support` is compiled once. Select with a module path, e.g.
//! `cargo xtask test -- -p gateway-tests proxy_tls::` or `... xdp_verdicts::some_test`.
//!
//! Tests of different modules now share a process and run in parallel: nothing here may
//! touch process-wide state (environment, current directory, rlimits, signal handlers);
//! kernel tests make their own network namespaces, named after the process and a counter.

mod proxy_support;

mod access_log;
mod admin_input;
mod cli;
mod cluster;
mod cluster_catch_up;
mod cluster_limits;
mod cluster_metering;
mod crash;
mod defend;
mod import_stream;
mod metrics;
mod operator;
mod otlp;
mod paging;
mod proxy_aggregate;
mod proxy_auth;
mod proxy_balancing;
mod proxy_blame;
mod proxy_cache;
mod proxy_cors;
mod proxy_keep_alive;
mod proxy_lifecycle;
mod proxy_limits;
mod proxy_metrics;
mod proxy_mtls;
mod proxy_normalise;
mod proxy_routing;
mod proxy_throttle;
mod proxy_timers;
mod proxy_tls;
mod proxy_tls_resume;
mod proxy_upgrade_grpc;
mod service;
mod upstream_tls;
mod xdp_firewall;
mod xdp_limits;
mod xdp_verdicts;

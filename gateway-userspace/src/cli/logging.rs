//! The daemon's and the tools' logging: human lines on stderr, access-log lines as JSON.

use anyhow::Context as _;

/// Logs to stderr (RUST_LOG, default info) and, for the daemon, access-log lines as JSON to
/// their own non-blocking writer. Keep the returned guard: dropping it flushes the writer.
pub(super) fn init(
    access_log: Option<&crate::config::AccessLogConfig>,
) -> anyhow::Result<Option<tracing_appender::non_blocking::WorkerGuard>> {
    use tracing_subscriber::{
        Layer as _, filter, layer::SubscriberExt as _, util::SubscriberInitExt as _,
    };
    let access_target = crate::proxy::observe::TARGET;
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let human = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(env)
        .with_filter(filter::filter_fn(move |meta| {
            meta.target() != access_target
        }));
    let (access, guard) = match access_log {
        Some(config) => {
            let file = match &config.path {
                Some(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("access_log.path: opening {}", path.display()))?,
                // Our own handle on stdout: std's Stdout would write every line on its own.
                None => std::fs::File::from(
                    std::os::fd::AsFd::as_fd(&std::io::stdout())
                        .try_clone_to_owned()
                        .context("access_log: duplicating stdout")?,
                ),
            };
            // The writer thread drains every queued line into the buffer, then flushes once
            // the queue is empty: one write per burst, not per line, and no line waits.
            let (writer, guard) =
                tracing_appender::non_blocking(std::io::BufWriter::with_capacity(64 * 1024, file));
            let layer = crate::proxy::AccessLogLayer::new(writer).with_filter(filter::filter_fn(
                move |meta| meta.target() == access_target,
            ));
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(human)
        .with(access)
        .init();
    Ok(guard)
}

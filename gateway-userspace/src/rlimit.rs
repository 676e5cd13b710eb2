//! The open-file limit (`RLIMIT_NOFILE`), raised at start to what the configured connection
//! caps can use: a proxied client connection may need an upstream socket as well, and the
//! side listeners, maps, logs and pools need some more. With too few descriptors, accepts
//! fail with "Too many open files" long before `limits.max_connections` is reached.

use crate::config::Config;

/// Descriptors beyond the connections: listeners, BPF maps and programs, log files, the
/// state file, Redis, health checks, idle pooled upstream connections.
const HEADROOM: u64 = 1024;

/// How many descriptors the config's caps can use at once.
pub fn wanted(config: &Config) -> u64 {
    let proxy = 2 * u64::from(config.proxy.limits.max_connections);
    let admin_listeners = 1 + u64::from(config.admin.tcp.is_some());
    let admin = admin_listeners * u64::from(config.admin.limits.max_connections);
    let metrics = config
        .metrics
        .map_or(0, |metrics| u64::from(metrics.limits.max_connections));
    proxy + admin + metrics + HEADROOM
}

/// Raises the soft limit to `wanted` (and the hard limit too, where the process may), and
/// says what it set; warns with what to do when the hard limit stays too low.
pub fn raise_open_files(wanted: u64) {
    let Some((soft, hard)) = get() else {
        tracing::warn!(
            "cannot read RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
        return;
    };
    if soft >= wanted {
        tracing::info!(soft, hard, wanted, "RLIMIT_NOFILE already high enough");
        return;
    }
    // Raising the hard limit needs CAP_SYS_RESOURCE; without it, go as far as it allows.
    if hard < wanted && set(wanted, wanted) {
        tracing::info!(
            from = soft,
            to = wanted,
            "RLIMIT_NOFILE raised (soft and hard)"
        );
        return;
    }
    let to = wanted.min(hard);
    if !set(to, hard) {
        tracing::warn!(
            soft,
            hard,
            "cannot raise RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
        return;
    }
    if to < wanted {
        tracing::warn!(
            soft = to,
            hard,
            wanted,
            "RLIMIT_NOFILE: the hard limit is below the descriptors the connection caps can use \
             (2 x limits.max_connections, plus the admin and metrics caps, plus {HEADROOM}); \
             raise it (LimitNOFILE= in the systemd unit, `ulimit -Hn`, or give the daemon \
             CAP_SYS_RESOURCE) or lower limits.max_connections, or accepts fail with \
             \"Too many open files\" under load"
        );
    } else {
        tracing::info!(from = soft, to, hard, "RLIMIT_NOFILE soft limit raised");
    }
}

fn get() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some((limit.rlim_cur, limit.rlim_max))
}

fn set(soft: u64, hard: u64) -> bool {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 }
}

//! Errors of the kernel half, each saying what failed and what to do about it.

use std::io;

use aya::{EbpfError, maps::MapError, programs::ProgramError};

use super::AttachMode;
use crate::config::XdpMode;

const OFF_HINT: &str = "or set xdp.mode = \"off\" to enforce the rules in userspace";

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(
        "loading the XDP program needs root, or the capabilities CAP_BPF, CAP_NET_ADMIN and \
         CAP_PERFMON (missing: {missing}): run as root, grant them (config/gateway.service \
         shows how), {OFF_HINT}"
    )]
    Permission { missing: String },
    #[error("BPF is not available in this kernel ({0}): {OFF_HINT}")]
    Unsupported(io::Error),
    #[error("the kernel refused the XDP program: {reason}{log}")]
    Rejected { reason: String, log: String },
    #[error(
        "no interface named {0:?} on this host (list them with `ip -br link`); fix xdp.interfaces"
    )]
    UnknownInterface(String),
    #[error("{0}")]
    Attach(String),
    #[error("the eBPF object has no program `gateway_xdp`: the build is broken, rebuild it")]
    MissingProgram,
    #[error("the eBPF object has no map `{0}`: the build is broken, rebuild it")]
    MissingMap(&'static str),
    #[error("updating BPF map {name} failed: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("xdp.mode is \"off\": nothing to attach")]
    Off,
    #[error("{0}")]
    Pin(String),
    /// bpffs cannot be mounted or written here (permissions, a read-only /sys): the daemon
    /// runs unpinned and says so.
    #[error("{0}")]
    PinUnavailable(String),
}

impl XdpError {
    pub(super) fn map(name: &'static str, source: MapError) -> Self {
        XdpError::Map { name, source }
    }

    /// Creating maps or parsing the object failed.
    pub(super) fn from_load(error: EbpfError) -> Self {
        match os_error(&error) {
            Some(libc::EPERM | libc::EACCES) => XdpError::Permission {
                missing: "the kernel said EPERM".into(),
            },
            Some(libc::ENOSYS) => XdpError::Unsupported(io::Error::from_raw_os_error(libc::ENOSYS)),
            _ => XdpError::Rejected {
                reason: error.to_string(),
                log: String::new(),
            },
        }
    }

    /// The verifier or the kernel rejected the program.
    pub(super) fn from_program_load(error: ProgramError) -> Self {
        // EACCES here is the verifier refusing something, not a missing privilege: keep the log.
        if let Some(libc::EPERM) = os_error(&error) {
            return XdpError::Permission {
                missing: "the kernel said EPERM".into(),
            };
        }
        let log = match &error {
            ProgramError::LoadError { verifier_log, .. } => {
                let text = verifier_log.to_string();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("\nverifier log (last lines):\n{}", tail.join("\n"))
            }
            _ => String::new(),
        };
        XdpError::Rejected {
            reason: error.to_string(),
            log,
        }
    }

    pub(super) fn attach(
        interface: &str,
        attempt: AttachMode,
        requested: XdpMode,
        error: ProgramError,
    ) -> Self {
        let errno = os_error(&error);
        let hint = match (errno, attempt, requested) {
            (Some(libc::EBUSY | libc::EEXIST), ..) => format!(
                "another XDP program is already attached to {interface} (see `ip link show {interface}`); \
                 remove it with `ip link set dev {interface} xdp off`"
            ),
            (Some(libc::EPERM | libc::EACCES), ..) => {
                "attaching needs CAP_NET_ADMIN: run as root or grant the capability".to_owned()
            }
            (_, AttachMode::Native, XdpMode::Native) => format!(
                "the driver of {interface} may not support native XDP: try xdp.mode = \"auto\" or \"skb\""
            ),
            _ => format!("check that {interface} is up and supports XDP, {OFF_HINT}"),
        };
        let mode = match attempt {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        };
        XdpError::Attach(format!(
            "attaching the XDP program to {interface} in {mode} mode failed: {}: {hint}",
            error_chain(&error)
        ))
    }
}

/// Checks the effective capabilities before touching BPF, so the error is precise.
pub(super) fn check_privileges() -> Result<(), XdpError> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Some(effective) = effective_capabilities() else {
        return Ok(()); // Cannot tell; let the kernel decide.
    };
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    // The verifier only lets a CAP_PERFMON holder subtract packet pointers (frame length)
    // and add a pointer to a scalar, both of which the compiled program does.
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(XdpError::Permission {
            missing: missing.join(", "),
        })
    }
}

fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The errno at the bottom of an error chain, if any.
fn os_error(error: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        current = error.source();
    }
    None
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut current = error.source();
    while let Some(error) = current {
        let text = error.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        current = error.source();
    }
    parts.join(": ")
}

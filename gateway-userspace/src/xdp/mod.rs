//! The kernel half: load the XDP program, size and fill its maps, attach it to interfaces,
//! read its counters. Userspace owns the maps; the program only reads rules and counts.

mod error;
mod maps;

use std::ffi::CString;

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use gateway_common::{Counter, PROGRAM_NAME, Reason, maps as map_names};
use serde::{Deserialize, Serialize};

pub use error::XdpError;

use crate::config::{FirewallConfig, XdpConfig, XdpMode};

/// The compiled XDP program, embedded at build time (see build.rs).
static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-xdp"));

/// How the program ended up attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    Native,
    Skb,
}

#[derive(Debug)]
pub struct Attachment {
    pub interface: String,
    pub mode: AttachMode,
    link: XdpLinkId,
}

/// The loaded program and its maps. Dropping it detaches the program everywhere.
pub struct XdpFirewall {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    /// Last value written per port, so re-applying only touches what changed.
    ports: Vec<u8>,
}

impl XdpFirewall {
    /// Loads the program into the kernel with maps sized from `config`. Nothing is attached
    /// yet: fill the maps with [`apply`](Self::apply) first, so the first packet already
    /// meets the full rule set.
    pub fn load(config: &XdpConfig) -> Result<Self, XdpError> {
        error::check_privileges()?;
        raise_memlock_limit();
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(map_names::RULES_V4, config.max_rules_v4)
            .map_max_entries(map_names::RULES_V6, config.max_rules_v6)
            .load(PROGRAM_OBJECT)
            .map_err(XdpError::from_load)?;
        let program: &mut Xdp = program_mut(&mut ebpf)?;
        program.load().map_err(XdpError::from_program_load)?;
        Ok(Self {
            ebpf,
            attachments: Vec::new(),
            ports: vec![0; gateway_common::PORT_SLOTS as usize],
        })
    }

    /// Writes policy, protected ports and rules into the maps; stale rules are removed.
    /// Takes effect for the next packet, without reloading the program.
    pub fn apply(&mut self, firewall: &FirewallConfig) -> Result<(), XdpError> {
        maps::write_settings(&mut self.ebpf, firewall)?;
        maps::write_ports(&mut self.ebpf, &mut self.ports, &firewall.protected_ports)?;
        maps::sync_rules(&mut self.ebpf, firewall)
    }

    /// Attaches to `interface`. `Auto` tries native (driver) mode, then generic (skb).
    pub fn attach(&mut self, interface: &str, mode: XdpMode) -> Result<AttachMode, XdpError> {
        let if_index = interface_index(interface)?;
        let attempts: &[AttachMode] = match mode {
            XdpMode::Native => &[AttachMode::Native],
            XdpMode::Skb => &[AttachMode::Skb],
            XdpMode::Auto => &[AttachMode::Native, AttachMode::Skb],
            XdpMode::Off => return Err(XdpError::Off),
        };
        let program = program_mut(&mut self.ebpf)?;
        let mut last_error = None;
        for &attempt in attempts {
            let aya_mode = match attempt {
                AttachMode::Native => AyaXdpMode::Driver,
                AttachMode::Skb => AyaXdpMode::Skb,
            };
            match program.attach_to_if_index(if_index, aya_mode) {
                Ok(link) => {
                    self.attachments.push(Attachment {
                        interface: interface.to_owned(),
                        mode: attempt,
                        link,
                    });
                    return Ok(attempt);
                }
                Err(error) => {
                    if mode == XdpMode::Auto {
                        tracing::info!(interface, ?attempt, %error, "XDP attach failed, trying the next mode");
                    }
                    last_error = Some(XdpError::attach(interface, attempt, mode, error));
                }
            }
        }
        Err(last_error.expect("at least one attach attempt"))
    }

    /// Detaches from every interface (the program stays loaded until dropped).
    pub fn detach_all(&mut self) {
        let Ok(program) = program_mut(&mut self.ebpf) else {
            return;
        };
        for attachment in self.attachments.drain(..) {
            match program.detach(attachment.link) {
                Ok(()) => tracing::info!(interface = %attachment.interface, "XDP program detached"),
                Err(error) => {
                    tracing::warn!(interface = %attachment.interface, %error, "XDP detach failed")
                }
            }
        }
    }

    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Packets and bytes per reason, summed over CPUs, in [`Reason::ALL`] order.
    pub fn counters(&self) -> Result<Vec<(Reason, Counter)>, XdpError> {
        maps::read_counters(&self.ebpf)
    }

    /// The loaded program, e.g. for `BPF_PROG_TEST_RUN` in tests and benchmarks.
    pub fn program_mut(&mut self) -> &mut Xdp {
        program_mut(&mut self.ebpf).expect("the program was loaded")
    }
}

impl Drop for XdpFirewall {
    fn drop(&mut self) {
        self.detach_all();
    }
}

fn program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, XdpError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or(XdpError::MissingProgram)?
        .try_into()
        .map_err(|_| XdpError::MissingProgram)
}

/// The interface's index, or an error naming it.
pub fn interface_index(interface: &str) -> Result<u32, XdpError> {
    let unknown = || XdpError::UnknownInterface(interface.to_owned());
    let name = CString::new(interface).map_err(|_| unknown())?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(unknown()),
        index => Ok(index),
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it so big rule maps load there.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels with memcg accounting");
    }
}

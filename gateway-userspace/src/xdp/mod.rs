//! The kernel half: load the XDP program, size and fill its maps, attach it to interfaces,
//! read its counters. Userspace owns the maps; the program only reads rules and counts.

mod attack;
mod bans;
mod error;
mod maps;

use std::{ffi::CString, net::IpAddr, time::Duration};

use ipnet::IpNet;

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode as AyaXdpMode, xdp::XdpLinkId},
};
use gateway_common::{Counter, PROGRAM_NAME, Reason, Settings, maps as map_names};
use serde::{Deserialize, Serialize};

pub use attack::NewSources;
pub use error::XdpError;

use crate::config::{FirewallConfig, XdpConfig, XdpMode};
pub use bans::now;

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
    /// Rules as last written, in id order (id = index + 1): changed ids get their hit
    /// counters reset, so a count always belongs to the rule listed with it.
    rules: Vec<maps::KernelRule>,
    /// The settings entry as last written.
    settings: Settings,
}

/// How many sources the "top dropped sources" table tracks (least recent forgotten first).
const TRACKED_DROP_SOURCES: u32 = 65_536;
/// Rate-class prefixes across all classes.
const MAX_RATE_PREFIXES: u32 = 4096;

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
            .map_max_entries(
                map_names::RULE_HITS,
                config.max_rules_v4 + config.max_rules_v6 + 1,
            )
            .map_max_entries(map_names::BANS_V4, config.max_bans)
            .map_max_entries(map_names::BANS_V6, config.max_bans)
            .map_max_entries(map_names::RATE_STATE, config.max_sources)
            .map_max_entries(map_names::RATE_PREFIXES_V4, MAX_RATE_PREFIXES)
            .map_max_entries(map_names::RATE_PREFIXES_V6, MAX_RATE_PREFIXES)
            .map_max_entries(map_names::DROPS_BY_SOURCE, TRACKED_DROP_SOURCES)
            .map_max_entries(map_names::KNOWN_GOOD, config.max_sources)
            .load(PROGRAM_OBJECT)
            .map_err(XdpError::from_load)?;
        let program: &mut Xdp = program_mut(&mut ebpf)?;
        program.load().map_err(XdpError::from_program_load)?;
        Ok(Self {
            ebpf,
            attachments: Vec::new(),
            ports: vec![0; gateway_common::PORT_SLOTS as usize],
            rules: Vec::new(),
            settings: Settings::default(),
        })
    }

    /// Writes policy, protected ports and rules into the maps; stale rules are removed.
    /// Takes effect for the next packet, without reloading the program.
    pub fn apply(&mut self, firewall: &FirewallConfig) -> Result<(), XdpError> {
        // IPv4 first, so ids follow the order rule listings use.
        let rules: Vec<maps::KernelRule> = firewall
            .rules_v4()
            .chain(firewall.rules_v6())
            .map(|rule| (rule.net, rule.action, rule.shadow))
            .collect();
        let changed = (0..rules.len().max(self.rules.len()))
            .filter(|&index| rules.get(index) != self.rules.get(index))
            .map(|index| index as u32 + 1);
        maps::reset_rule_hits(&mut self.ebpf, changed)?;
        maps::write_rate_limits(&mut self.ebpf, firewall)?;
        maps::write_ports(&mut self.ebpf, &mut self.ports, &firewall.protected_ports)?;
        maps::sync_rules(&mut self.ebpf, &maps::rule_values(&rules))?;
        self.rules = rules;
        // Last: sources pick their rate class again against the new prefixes.
        let generation = self.settings.rate_generation.wrapping_add(1);
        self.write_settings(Settings {
            under_attack: self.settings.under_attack,
            ..maps::settings_for(firewall, generation, self.settings.bans != 0)
        })
    }

    /// Switches under-attack mode: only known-good sources and `budget` new ones pass.
    pub fn set_under_attack(&mut self, on: bool, budget: &NewSources) -> Result<(), XdpError> {
        if on {
            // The budget first, so the first packet under attack meets it.
            attack::write_budget(&mut self.ebpf, budget)?;
        }
        let settings = Settings {
            under_attack: u8::from(on),
            ..self.settings
        };
        self.write_settings(settings)
    }

    pub fn under_attack(&self) -> bool {
        self.settings.under_attack != 0
    }

    /// Marks `source` known-good until `expires` (monotonic clock, as [`now`]).
    pub fn mark_known_good(&mut self, source: IpAddr, expires: Duration) -> Result<(), XdpError> {
        attack::mark(&mut self.ebpf, source, expires)
    }

    /// Until when `source` is known-good (monotonic clock), if it is.
    pub fn known_good(&self, source: IpAddr) -> Result<Option<Duration>, XdpError> {
        attack::known_good(&self.ebpf, source)
    }

    fn write_settings(&mut self, settings: Settings) -> Result<(), XdpError> {
        maps::write_settings(&mut self.ebpf, settings)?;
        self.settings = settings;
        Ok(())
    }

    /// Turns the program's ban lookup on or off (it is skipped while no ban exists).
    fn set_bans_present(&mut self, present: bool) -> Result<(), XdpError> {
        if (self.settings.bans != 0) == present {
            return Ok(());
        }
        let settings = Settings {
            bans: u8::from(present),
            ..self.settings
        };
        self.write_settings(settings)
    }

    /// Packets matched per rule, in the order `apply` was given them (IPv4 first).
    pub fn rule_hits(&self) -> Result<Vec<(IpNet, u64)>, XdpError> {
        let hits = maps::read_rule_hits(&self.ebpf, self.rules.len())?;
        Ok(self.rules.iter().map(|(net, ..)| *net).zip(hits).collect())
    }

    /// Bans `net` until `expires` (monotonic clock, as [`now`]; `None`: until unbanned).
    pub fn ban(&mut self, net: IpNet, expires: Option<Duration>) -> Result<(), XdpError> {
        // Lookups first, so the ban holds from the moment it is in the map.
        self.set_bans_present(true)?;
        bans::insert(&mut self.ebpf, net, expires)
    }

    /// Lifts a ban; `false` if there was none.
    pub fn unban(&mut self, net: IpNet) -> Result<bool, XdpError> {
        let lifted = bans::remove(&mut self.ebpf, net)?;
        let any_left = !bans::entries(&self.ebpf)?.is_empty();
        self.set_bans_present(any_left)?;
        Ok(lifted)
    }

    /// Current bans with their expiry (monotonic clock; `None`: permanent). Expired ones
    /// still in the map (not swept yet) are left out: they no longer match.
    pub fn bans(&self) -> Result<Vec<(IpNet, Option<Duration>)>, XdpError> {
        bans::list(&self.ebpf)
    }

    /// Deletes expired bans from the maps; returns them.
    pub fn sweep_expired_bans(&mut self) -> Result<Vec<IpNet>, XdpError> {
        let expired = bans::sweep(&mut self.ebpf)?;
        if !expired.is_empty() {
            let any_left = !bans::entries(&self.ebpf)?.is_empty();
            self.set_bans_present(any_left)?;
        }
        Ok(expired)
    }

    /// The source's rate-limit state, if the program has seen it since it was last evicted.
    pub fn rate_bucket(&self, source: IpAddr) -> Result<Option<gateway_common::Bucket>, XdpError> {
        let name = map_names::RATE_STATE;
        let map = self.ebpf.map(name).ok_or(XdpError::MissingMap(name))?;
        let state: aya::maps::HashMap<&aya::maps::MapData, [u8; 16], gateway_common::Bucket> =
            aya::maps::HashMap::try_from(map).map_err(|error| XdpError::map(name, error))?;
        let key = match source {
            IpAddr::V4(addr) => addr.to_ipv6_mapped().octets(),
            IpAddr::V6(addr) => addr.octets(),
        };
        match state.get(&key, 0) {
            Ok(bucket) => Ok(Some(bucket)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(XdpError::map(name, error)),
        }
    }

    /// The `limit` sources with the most dropped packets, most first.
    pub fn top_dropped_sources(&self, limit: usize) -> Result<Vec<(IpAddr, u64)>, XdpError> {
        bans::top_dropped_sources(&self.ebpf, limit)
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

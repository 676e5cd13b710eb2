//! Network namespaces and veth pairs made by a test, removed when dropped (also on panic).
//!
//! Names carry the test process's pid, so a later run can tell which leftovers belong to a
//! process that died without unwinding (killed by a timeout, say) and remove them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, OnceLock};
use std::thread;

use crate::process::{COMMAND_TIMEOUT, find_program, ip, output_with_timeout, run_ok};

/// Prefix of every namespace this library makes.
const NS_PREFIX: &str = "gwt-";

static NEXT_NS: AtomicU32 = AtomicU32::new(0);
static NEXT_LINK: AtomicU32 = AtomicU32::new(0);

/// A network namespace (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Makes a fresh namespace `gwt-{tag}-{pid}-{n}` with `lo` up and IPv6 made quiet and
    /// immediately usable (no DAD, no router solicitations) for interfaces added later.
    pub fn new(tag: &str) -> NetNs {
        reap_stale_namespaces();
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(16)
            .collect();
        let n = NEXT_NS.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NS_PREFIX}{tag}-{}-{n}", std::process::id());
        run_ok(ip().args(["netns", "add", &name]));
        // From here on, Drop removes the namespace even if the setup below panics.
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.write_sysctls(&quiet_ipv6_sysctls("default"));
        ns.write_sysctls(&quiet_ipv6_sysctls("all"));
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip netns exec NAME args...` (bounded to 30 s) and returns its output, whatever
    /// its exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        output_with_timeout(&mut self.exec_command(args), COMMAND_TIMEOUT)
    }

    /// Like [`NetNs::exec`], but panics with stderr unless the command succeeds; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        run_ok(&mut self.exec_command(args))
    }

    /// Runs `ip -n NAME args...`, panicking with stderr on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        run_ok(ip().args(["-n", &self.name]).args(args))
    }

    /// A `Command` for `ip netns exec NAME args...`, for callers that need to spawn it
    /// themselves (a daemon inside the namespace, say).
    pub fn exec_command(&self, args: &[&str]) -> Command {
        let mut cmd = ip();
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns its result.
    ///
    /// Sockets created by `f` belong to the namespace and keep working after the thread ends.
    /// A panic in `f` is re-raised here.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = self.path();
        thread::scope(|scope| {
            let worker = scope.spawn(move || {
                join_net_namespace(&path);
                f()
            });
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Sets sysctls (`("net/ipv6/conf/all/forwarding", "1")`, path under /proc/sys) inside the
    /// namespace. Network sysctls resolve against the writer's namespace, hence `enter`.
    pub fn write_sysctls(&self, settings: &[(String, &str)]) {
        self.enter(|| {
            for (key, value) in settings {
                let path = format!("/proc/sys/{key}");
                std::fs::write(&path, value)
                    .unwrap_or_else(|e| panic!("writing {value} to {path} in {}: {e}", self.name));
            }
        });
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace also destroys the veth ends and VLANs inside it (once no
        // socket or process keeps it alive). Errors are ignored: there is nothing left to do.
        let _ = output_with_timeout(ip().args(["netns", "del", &self.name]), COMMAND_TIMEOUT);
    }
}

/// Moves the calling thread into the network namespace at `path`.
fn join_net_namespace(path: &std::path::Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: a valid open fd and a valid namespace type; setns only affects this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!(
            "setns({}): {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
}

/// Sysctls that make IPv6 on interface `conf` ("all", "default" or a device) usable at once
/// and quiet: no duplicate address detection, no router solicitations.
fn quiet_ipv6_sysctls(conf: &str) -> Vec<(String, &'static str)> {
    ["accept_dad", "dad_transmits", "router_solicitations"]
        .into_iter()
        .map(|key| (format!("net/ipv6/conf/{conf}/{key}"), "0"))
        .collect()
}

/// Deletes `gwt-*-{pid}-{n}` namespaces whose process no longer exists: left by a test run
/// that was killed before its destructors ran. Once per process.
fn reap_stale_namespaces() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            if !PathBuf::from(format!("/proc/{pid}")).exists() {
                let _ = output_with_timeout(ip().args(["netns", "del", &name]), COMMAND_TIMEOUT);
            }
        }
    });
}

/// The pid in a namespace name made by [`NetNs::new`], or `None` if it is not one of ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let _counter: u32 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?; // the tag
    Some(pid)
}

/// One end of a veth pair, or of a link made on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// One end of a [`VethLink`].
#[derive(Clone, Debug)]
pub struct VethEnd {
    /// The namespace this end lives in.
    pub ns: String,
    /// Interface name (at most 10 characters, so `NAME.4094` VLAN names fit in 15).
    pub name: String,
    pub mac: [u8; 6],
    pub ifindex: u32,
}

/// A veth pair with end `a` in one namespace and end `b` in another, both up.
///
/// Dropping it deletes the pair (if the namespaces still exist); deleting a namespace
/// deletes its end too, so the pair never outlives either.
#[derive(Debug)]
#[must_use = "dropping the link deletes the veth pair"]
pub struct VethLink {
    pub a: VethEnd,
    pub b: VethEnd,
    /// The caller's tag, for messages.
    pub tag: String,
}

impl VethLink {
    /// Makes the pair directly inside the two namespaces (it never appears in the host's).
    pub fn new(a: &NetNs, b: &NetNs, tag: &str) -> VethLink {
        let n = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
        // Unique in the process (counter) and readable across processes (pid), in base 36 to
        // stay short: "va" + up to 5 + up to 3 characters.
        let suffix = format!("{}{}", base36(std::process::id()), base36(n % 46_656));
        let (name_a, name_b) = (format!("va{suffix}"), format!("vb{suffix}"));
        a.ip(&[
            "link", "add", &name_a, "type", "veth", "peer", "name", &name_b, "netns", &b.name,
        ]);
        let mut link = VethLink {
            a: placeholder_end(a, &name_a),
            b: placeholder_end(b, &name_b),
            tag: tag.to_owned(),
        };
        // `link` now owns the pair: a panic below deletes it.
        for (ns, name) in [(a, &name_a), (b, &name_b)] {
            ns.write_sysctls(&quiet_ipv6_sysctls(name));
            ns.ip(&["link", "set", name, "up"]);
        }
        link.a = read_end(a, &name_a);
        link.b = read_end(b, &name_b);
        link
    }

    /// The end on `side`.
    pub fn end(&self, side: Side) -> &VethEnd {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    /// Adds an address (`"10.200.1.1/24"`, `"fd00:200:1::1/64"`) to the end on `side`.
    /// IPv6 addresses get `nodad`, so they are usable at once.
    pub fn add_addr(&self, side: Side, cidr: &str) {
        self.add_addr_on(side, &self.end(side).name, cidr);
    }

    /// Adds an address to interface `dev` (a VLAN made by [`VethLink::add_vlan`], say) in the
    /// namespace of `side`.
    pub fn add_addr_on(&self, side: Side, dev: &str, cidr: &str) {
        let mut args = vec!["-n", &self.end(side).ns, "addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        run_ok(ip().args(args));
    }

    /// Adds an 802.1Q VLAN subinterface `NAME.id` on the end on `side`, brings it up and
    /// returns its name.
    pub fn add_vlan(&self, side: Side, id: u16) -> String {
        self.add_vlan_proto(side, id, "802.1Q")
    }

    /// Like [`VethLink::add_vlan`] with a chosen protocol: `"802.1Q"` (TPID 0x8100) or
    /// `"802.1ad"` (0x88a8). `dev` defaults to the veth end; pass a VLAN name for QinQ via
    /// [`VethLink::add_vlan_on`].
    pub fn add_vlan_proto(&self, side: Side, id: u16, proto: &str) -> String {
        let dev = self.end(side).name.clone();
        self.add_vlan_on(side, &dev, id, proto)
    }

    /// Adds VLAN `id` with `proto` on interface `dev` in the namespace of `side`, up; returns
    /// its name (`dev.id` when that fits in 15 characters, else a short unique name).
    pub fn add_vlan_on(&self, side: Side, dev: &str, id: u16, proto: &str) -> String {
        let ns = &self.end(side).ns;
        let mut name = format!("{dev}.{id}");
        if name.len() > 15 {
            let n = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
            name = format!("vl{}{}", base36(std::process::id()), base36(n % 46_656));
        }
        let id = id.to_string();
        let out = output_with_timeout(
            ip().args(["-n", ns, "link", "add", "link", dev, "name", &name])
                .args(["type", "vlan", "protocol", proto, "id", &id]),
            COMMAND_TIMEOUT,
        );
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("Unknown device type") {
                panic!("{NO_VLAN_SUPPORT}");
            }
            panic!("adding VLAN {id} on {dev} in {ns}: {stderr}");
        }
        run_ok(ip().args(["-n", ns, "link", "set", &name, "up"]));
        name
    }

    /// Turns off VLAN tag insertion offload on the end on `side` (`ethtool -K DEV txvlan off`),
    /// so frames sent through a VLAN on it carry the tag in their bytes, where XDP on the peer
    /// can see it.
    pub fn set_tx_vlan_offload_off(&self, side: Side) {
        let Some(ethtool) = find_program("ethtool") else {
            panic!("ethtool is not installed: `apt-get install ethtool` (`cargo xtask setup`)");
        };
        let end = self.end(side);
        let ethtool = ethtool.to_string_lossy();
        run_ok(ip().args([
            "netns", "exec", &end.ns, &ethtool, "-K", &end.name, "txvlan", "off",
        ]));
    }
}

const NO_VLAN_SUPPORT: &str = "this kernel cannot make VLAN interfaces (CONFIG_VLAN_8021Q is \
    off): check vlan_supported() first, and send tagged frames with RawSocket instead";

/// Whether the kernel can make 802.1Q/802.1ad VLAN interfaces (`CONFIG_VLAN_8021Q`). Without
/// it, tagged frames can still be sent raw ([`crate::raw::RawSocket`]) and seen by XDP, but the
/// receiving stack does not deliver them. Probed once, in a scratch namespace.
pub fn vlan_supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        let ns = NetNs::new("vlanprobe");
        let out = output_with_timeout(
            ip().args([
                "-n",
                ns.name(),
                "link",
                "add",
                "link",
                "lo",
                "name",
                "probe.1",
            ])
            .args(["type", "vlan", "id", "1"]),
            COMMAND_TIMEOUT,
        );
        // Any other failure (VLANs refused on lo, say) still means the type exists.
        out.status.success()
            || !String::from_utf8_lossy(&out.stderr).contains("Unknown device type")
    })
}

impl Drop for VethLink {
    fn drop(&mut self) {
        // Deleting one end deletes both. If the namespace is already gone, so is the pair.
        let _ = output_with_timeout(
            ip().args(["-n", &self.a.ns, "link", "del", &self.a.name]),
            COMMAND_TIMEOUT,
        );
    }
}

fn placeholder_end(ns: &NetNs, name: &str) -> VethEnd {
    VethEnd {
        ns: ns.name.clone(),
        name: name.to_owned(),
        mac: [0; 6],
        ifindex: 0,
    }
}

/// Reads an interface's MAC and ifindex from `ip -j link show`.
fn read_end(ns: &NetNs, name: &str) -> VethEnd {
    let json = ns.ip(&["-j", "link", "show", "dev", name]);
    let parsed: serde_json::Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("parsing `ip -j link show dev {name}`: {e}\n{json}"));
    let info = &parsed[0];
    let mac = info["address"]
        .as_str()
        .and_then(parse_mac)
        .unwrap_or_else(|| panic!("no MAC address for {name} in {json}"));
    let ifindex = info["ifindex"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ifindex for {name} in {json}"));
    VethEnd {
        ns: ns.name.clone(),
        name: name.to_owned(),
        mac,
        ifindex: ifindex as u32,
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII digits")
}

/// `(tx_packets, tx_bytes, rx_packets, rx_bytes)` of interface `dev` in `ns`.
///
/// Read through `ip netns exec`, which mounts a /sys for the namespace: a plain read of
/// /sys/class/net shows the devices of the namespace that mounted /sys, whatever thread reads.
pub fn iface_stats(ns: &NetNs, dev: &str) -> (u64, u64, u64, u64) {
    let files = ["tx_packets", "tx_bytes", "rx_packets", "rx_bytes"]
        .map(|counter| format!("/sys/class/net/{dev}/statistics/{counter}"));
    let mut args = vec!["cat"];
    args.extend(files.iter().map(String::as_str));
    let text = ns.run(&args);
    let values: Vec<u64> = text
        .lines()
        .map(|line| {
            line.trim()
                .parse()
                .unwrap_or_else(|e| panic!("statistics of {dev} in {}: {e}: {text}", ns.name))
        })
        .collect();
    match values[..] {
        [tx_packets, tx_bytes, rx_packets, rx_bytes] => {
            (tx_packets, tx_bytes, rx_packets, rx_bytes)
        }
        _ => panic!(
            "statistics of {dev} in {}: expected 4 lines, got {text:?}",
            ns.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_our_names_only() {
        assert_eq!(owner_pid("gwt-xdp-1234-0"), Some(1234));
        assert_eq!(owner_pid("gwt-my_tag-99-17"), Some(99));
        assert_eq!(owner_pid("gwt-1234-0"), None);
        assert_eq!(owner_pid("other-xdp-1234-0"), None);
        assert_eq!(owner_pid("gwt-xdp-abc-0"), None);
    }

    #[test]
    fn names_fit_interface_limits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        // The largest pid (2^22) and link counter still leave room for ".4094".
        let name = format!("va{}{}", base36(4_194_304), base36(46_655));
        assert!(format!("{name}.4094").len() <= 15, "{name}");
    }

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
    }
}

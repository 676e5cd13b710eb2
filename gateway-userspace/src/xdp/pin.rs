//! The gate stays shut across restarts: the maps and the XDP links are pinned in bpffs, one
//! directory per protected set of interfaces in a network namespace. A daemon that stops or
//! crashes leaves the program attached and the maps in place; the next one adopts them
//! (counters, bans and all) and swaps its own program into the pinned links atomically.
//!
//! Layout: `<xdp.pin_dir>/<instance>/layout-<hash>/` holds `map-<NAME>` per map and
//! `link-<interface>@<mode>` per attachment (bpffs holds only BPF objects and directories, so
//! what a regular file would say is in the names). The hash covers the program object and the
//! map sizes: pins made by another build or other limits are never adopted; the daemon
//! refuses to start instead, and the old program keeps filtering until `gateway xdp detach`.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use super::{AttachMode, XdpError};
use crate::config::XdpConfig;

/// `f_type` of a bpf filesystem (statfs).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs lives by convention; mounted by the daemon when missing.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// FNV-1a: stable across builds (std's hasher is not promised to be).
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The layout the current build and config make.
pub(super) fn layout(object: &[u8], config: &XdpConfig) -> String {
    let sizes = format!(
        "{}/{}/{}/{}",
        config.max_rules_v4, config.max_rules_v6, config.max_bans, config.max_sources
    );
    format!("{:016x}", fnv(&[object, sizes.as_bytes()]))
}

/// The network namespace this process is in (its inode), so namespaces never share pins.
fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net").map_or(0, |meta| meta.ino())
}

/// `<pin_dir>/<netns>-<hash of the interfaces>`: the same for every daemon that protects the
/// same interfaces in the same namespace (only one can).
pub fn instance_dir(pin_dir: &Path, interfaces: &[String]) -> PathBuf {
    let mut sorted = interfaces.to_vec();
    sorted.sort();
    let joined = sorted.join(",");
    pin_dir.join(format!(
        "ns{}-{:08x}",
        netns_inode(),
        fnv(&[joined.as_bytes()]) as u32
    ))
}

pub(super) fn map_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("map-{name}"))
}

pub(super) fn link_path(dir: &Path, interface: &str, mode: AttachMode) -> PathBuf {
    let mode = match mode {
        AttachMode::Native => "native",
        AttachMode::Skb => "skb",
    };
    // bpffs refuses names with dots (VLAN interfaces have them): escape them.
    let interface = interface.replace('%', "%25").replace('.', "%2e");
    dir.join(format!("link-{interface}@{mode}"))
}

/// The pinned link for `interface` in `dir`, with the mode it was attached in.
pub(super) fn find_link(dir: &Path, interface: &str) -> Option<(PathBuf, AttachMode)> {
    [AttachMode::Native, AttachMode::Skb]
        .into_iter()
        .map(|mode| (link_path(dir, interface, mode), mode))
        .find(|(path, _)| path.exists())
}

/// The layout directories pinned in `instance` other than `layout` (another build's pins).
pub(super) fn other_layouts(instance: &Path, layout: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(instance) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name().is_some_and(|name| {
                let name = name.to_string_lossy();
                name.starts_with("layout-") && name != format!("layout-{layout}").as_str()
            })
        })
        .collect()
}

pub(super) fn layout_dir(instance: &Path, layout: &str) -> PathBuf {
    instance.join(format!("layout-{layout}"))
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(name) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid path and a zeroed statfs the kernel fills.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(name.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC }
}

/// Makes sure `pin_dir` is on bpffs, mounting it at /sys/fs/bpf if that is where it goes and
/// nothing is mounted there yet; creates `dir`.
pub(super) fn prepare(pin_dir: &Path, dir: &Path) -> Result<(), XdpError> {
    let root = Path::new(BPFFS_ROOT);
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        let source = CString::new("bpf").expect("no NUL");
        let target = CString::new(BPFFS_ROOT).expect("no NUL");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let mounted = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                source.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if mounted != 0 {
            return Err(XdpError::PinUnavailable(format!(
                "mounting bpffs at {BPFFS_ROOT} failed ({}): mount it (`mount -t bpf bpf \
                 {BPFFS_ROOT}`), or set xdp.pin = false",
                io::Error::last_os_error()
            )));
        }
        tracing::info!("mounted bpffs at {BPFFS_ROOT}");
    }
    std::fs::create_dir_all(dir).map_err(|error| {
        let message = format!(
            "creating the pin directory {} failed ({error}): make xdp.pin_dir writable for the \
             daemon (config/gateway.service shows how), or set xdp.pin = false",
            dir.display()
        );
        match error.raw_os_error() {
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => XdpError::PinUnavailable(message),
            _ => XdpError::Pin(message),
        }
    })?;
    if !is_bpffs(dir) {
        return Err(XdpError::Pin(format!(
            "xdp.pin_dir {} is not on a bpf filesystem: mount one there (`mount -t bpf bpf \
             {}`), or pick a directory under {BPFFS_ROOT}",
            pin_dir.display(),
            pin_dir.display()
        )));
    }
    Ok(())
}

/// Removes every pin under the instance directory `dir` and the directories: pinned links
/// go first, so their programs detach once no process holds them. Returns what was removed.
pub fn clear(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    // Layout directories hold the pins.
    let (dirs, files): (Vec<PathBuf>, Vec<PathBuf>) = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .partition(|path| path.is_dir());
    for sub in dirs {
        removed.extend(clear(&sub));
    }
    let entries = files;
    let mut paths = entries;
    // Links first: the gate opens before its maps go, never the other way round.
    paths.sort_by_key(|path| !is_link(path));
    for path in paths {
        if is_link(&path) {
            // Removing the pin frees the link later, from a kernel work queue; detaching it
            // first opens the gate before this returns.
            let _ = detach_link(&path);
        }
        if std::fs::remove_file(&path).is_ok() {
            removed.push(path);
        }
    }
    let _ = std::fs::remove_dir(dir);
    removed
}

fn is_link(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with("link-"))
}

/// Detaches the pinned link at `path` from its interface now (`BPF_LINK_DETACH`), whoever
/// else holds it.
fn detach_link(path: &Path) -> io::Result<()> {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let bpf = |command: libc::c_long, attr: &mut [u64; 8]| {
        // SAFETY: `attr` is a zeroed bpf_attr of the given size, laid out for `command`.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                attr.as_mut_ptr(),
                std::mem::size_of_val(attr),
            )
        };
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    };
    let name = CString::new(path.as_os_str().as_bytes())?;
    // bpf_attr for BPF_OBJ_GET: the path's address first.
    let mut attr = [0u64; 8];
    attr[0] = name.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)? as libc::c_int;
    // SAFETY: a descriptor the kernel just gave this process, closed once, here.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // bpf_attr for BPF_LINK_DETACH: the link's descriptor.
    let mut attr = [0u64; 8];
    attr[0] = u64::from(fd.as_raw_fd() as u32);
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_dirs_depend_on_the_interface_set_not_its_order() {
        let base = Path::new("/sys/fs/bpf/gateway");
        let a = instance_dir(base, &["eth0".into(), "eth1".into()]);
        let b = instance_dir(base, &["eth1".into(), "eth0".into()]);
        let c = instance_dir(base, &["eth0".into()]);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with(base));
    }
}

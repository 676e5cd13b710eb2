//! Many map entries in one `bpf` syscall (`BPF_MAP_UPDATE_BATCH`): an import of a million
//! rules is a few dozen syscalls, not a million. aya has no batch API, so the attribute is
//! built here. A kernel without batch support for the map type answers `EINVAL` or
//! `ENOTSUPP`; then the entries are written one by one.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    Ebpf, Pod,
    maps::{LpmTrie, Map, MapData, lpm_trie::Key},
};

use super::XdpError;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// The kernel's internal "not supported" (not in libc).
const ENOTSUPP: i32 = 524;
/// Entries per syscall: bounds the time the syscall holds the CPU without a reschedule.
const CHUNK: usize = 65_536;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Inserts or replaces every `(key, value)` of `entries` in the LPM trie `name`.
pub(super) fn update_trie<const N: usize, V: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    entries: &[(Key<[u8; N]>, V)],
) -> Result<(), XdpError>
where
    [u8; N]: Pod,
{
    if entries.is_empty() {
        return Ok(());
    }
    let map = ebpf.map(name).ok_or(XdpError::MissingMap(name))?;
    // The typed view checks the map's key and value sizes against `N` and `V`.
    LpmTrie::<&MapData, [u8; N], V>::try_from(map).map_err(|error| XdpError::map(name, error))?;
    let Map::LpmTrie(data) = map else {
        return Err(XdpError::MissingMap(name));
    };
    let fd = raw_fd(data);
    for chunk in entries.chunks(CHUNK) {
        let (keys, values): (Vec<Key<[u8; N]>>, Vec<V>) = chunk.iter().copied().unzip();
        match update(fd, &keys, &values) {
            Ok(()) => {}
            Err(error) if unsupported(&error) => return update_one_by_one(ebpf, name, entries),
            Err(error) => {
                return Err(XdpError::map(
                    name,
                    aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_update_batch",
                        io_error: error,
                    }),
                ));
            }
        }
    }
    Ok(())
}

fn raw_fd(data: &MapData) -> u32 {
    data.fd().as_fd().as_raw_fd() as u32
}

fn unsupported(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL | ENOTSUPP))
}

/// One `BPF_MAP_UPDATE_BATCH` of `keys` and `values` (same length).
fn update<K, V>(fd: u32, keys: &[K], values: &[V]) -> std::io::Result<()> {
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr.batch` (the kernel takes a shorter attr as
    // zero-extended); `keys` and `values` hold `count` entries of the map's key and value
    // sizes (checked by the caller's typed view), and outlive the call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn update_one_by_one<const N: usize, V: Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    entries: &[(Key<[u8; N]>, V)],
) -> Result<(), XdpError>
where
    [u8; N]: Pod,
{
    let mut trie: LpmTrie<&mut MapData, [u8; N], V> = super::maps::map_mut(ebpf, name)?;
    for (key, value) in entries {
        trie.insert(key, *value, 0)
            .map_err(|error| XdpError::map(name, error))?;
    }
    Ok(())
}

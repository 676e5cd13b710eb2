//! Putting exact frames on a real interface: VLAN-tagged, malformed, anything.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::netns::NetNs;

/// An `AF_PACKET`/`SOCK_RAW` socket bound to one interface inside a namespace. It only sends:
/// created with protocol 0, it receives nothing, so nothing queues up in it.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifname: String,
    ifindex: u32,
}

impl RawSocket {
    /// Opens the socket inside `ns` (the socket keeps that namespace) bound to `ifname`.
    pub fn open_in(ns: &NetNs, ifname: &str) -> RawSocket {
        ns.enter(|| RawSocket::open_here(ifname))
            .unwrap_or_else(|e| panic!("raw socket on {ifname} in {}: {e}", ns.name()))
    }

    /// Opens the socket in the calling thread's namespace.
    fn open_here(ifname: &str) -> io::Result<RawSocket> {
        let c_name = CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        // SAFETY: sockaddr_ll is plain data; all-zero is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = 0; // send only: receive no protocol
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawSocket {
            fd,
            ifname: ifname.to_owned(),
            ifindex,
        })
    }

    /// Sends `frame` exactly as given (Ethernet header included, no FCS). Panics if the kernel
    /// refuses it or sends less.
    ///
    /// Note: a frame shorter than 14 bytes is zero-padded by the kernel for root; an untagged
    /// frame longer than MTU + 14 is refused (EMSGSIZE).
    pub fn send(&self, frame: &[u8]) {
        match self.try_send(frame) {
            Ok(n) if n == frame.len() => {}
            Ok(n) => panic!(
                "raw send on {}: sent {n} of {} bytes",
                self.ifname,
                frame.len()
            ),
            Err(e) => panic!("raw send of {} bytes on {}: {e}", frame.len(), self.ifname),
        }
    }

    /// Sends `frame`, returning the byte count or the error.
    pub fn try_send(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: the buffer is valid for `frame.len()` bytes; the socket is bound.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// The interface's index (in its namespace).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
}

impl AsFd for RawSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

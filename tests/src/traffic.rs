//! Real TCP and UDP between namespaces. Every wait is bounded in time and every loop in count.
//!
//! Sockets are made inside a namespace with [`NetNs::enter`] and stay in it; the returned
//! std sockets are then used from any thread.

use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::netns::NetNs;

/// Read timeout of the UDP sockets made here: the longest a single `recv` blocks.
pub const UDP_READ_TIMEOUT: Duration = Duration::from_millis(100);

/// At most this many datagrams are collected by one receive helper call.
const MAX_DATAGRAMS: usize = 1_000_000;

/// A UDP socket bound to `bind` inside `ns`, with a [`UDP_READ_TIMEOUT`] read timeout.
pub fn udp_receiver(ns: &NetNs, bind: SocketAddr) -> UdpSocket {
    ns.enter(|| {
        let sock = UdpSocket::bind(bind)
            .unwrap_or_else(|e| panic!("binding UDP {bind} in {}: {e}", ns.name()));
        sock.set_read_timeout(Some(UDP_READ_TIMEOUT))
            .expect("setting a read timeout");
        sock
    })
}

/// A UDP socket bound to source `src` inside `ns`, for many sends (`send_to`). Same as
/// [`udp_receiver`]; the name says what it is for.
pub fn udp_sender(ns: &NetNs, src: SocketAddr) -> UdpSocket {
    udp_receiver(ns, src)
}

/// Sends one datagram from `src` (bound, so the source address is exactly that) to `dst`.
pub fn udp_send_from(ns: &NetNs, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
    let sock = udp_sender(ns, src);
    let sent = sock
        .send_to(payload, dst)
        .unwrap_or_else(|e| panic!("UDP send {src} -> {dst} in {}: {e}", ns.name()));
    assert_eq!(sent, payload.len(), "short UDP send {src} -> {dst}");
}

/// Every datagram that arrives on `sock` within `wait`, with its source.
pub fn recv_all(sock: &UdpSocket, wait: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + wait;
    let mut received = Vec::new();
    while Instant::now() < deadline && received.len() < MAX_DATAGRAMS {
        if let Some(datagram) = recv_one(sock) {
            received.push(datagram);
        }
    }
    received
}

/// The datagrams that arrive on `sock` before one whose payload is `sentinel` (not included),
/// waiting at most `max_wait`. Send the sentinel last, from a source that must get through,
/// to know that everything sent before it has been processed. A missing sentinel is reported
/// on stderr, not a panic: the caller's assertions say what matters.
pub fn recv_until_sentinel(
    sock: &UdpSocket,
    sentinel: &[u8],
    max_wait: Duration,
) -> Vec<(SocketAddr, Vec<u8>)> {
    let deadline = Instant::now() + max_wait;
    let mut received = Vec::new();
    while Instant::now() < deadline && received.len() < MAX_DATAGRAMS {
        match recv_one(sock) {
            Some((_, payload)) if payload == sentinel => return received,
            Some(datagram) => received.push(datagram),
            None => {}
        }
    }
    eprintln!(
        "recv_until_sentinel: no sentinel {:?} within {max_wait:?} ({} datagrams before it)",
        String::from_utf8_lossy(sentinel),
        received.len()
    );
    received
}

/// One datagram, or `None` when the read timeout passes first.
fn recv_one(sock: &UdpSocket) -> Option<(SocketAddr, Vec<u8>)> {
    let mut buf = vec![0u8; 65536];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            buf.truncate(n);
            Some((from, buf))
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("UDP receive: {e}"),
    }
}

/// A TCP listener on `addr` inside `ns`.
pub fn tcp_listener(ns: &NetNs, addr: SocketAddr) -> TcpListener {
    ns.enter(|| {
        TcpListener::bind(addr)
            .unwrap_or_else(|e| panic!("listening on TCP {addr} in {}: {e}", ns.name()))
    })
}

/// The next connection on `listener`, or `None` if none arrives within `timeout`.
pub fn accept_timeout(listener: &TcpListener, timeout: Duration) -> Option<TcpStream> {
    if !poll_fd(listener.as_fd(), libc::POLLIN, timeout).expect("polling a listener") {
        return None;
    }
    let (stream, _) = listener.accept().expect("accepting a ready connection");
    Some(stream)
}

/// Connects from `src` (bound: exact source address; port 0 picks one) to `dst` inside `ns`,
/// giving up after `timeout` with `ErrorKind::TimedOut`.
pub fn tcp_connect_from(
    ns: &NetNs,
    src: SocketAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    ns.enter(|| connect_here(src, dst, timeout))?.into_stream()
}

/// Like [`tcp_connect_from`] but keeps the socket whatever happens, so a failed attempt can
/// still say how many SYNs it sent ([`ConnectAttempt::syns_sent`]). Panics if the socket
/// cannot even be made or bound.
pub fn tcp_connect_attempt(
    ns: &NetNs,
    src: SocketAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> ConnectAttempt {
    ns.enter(|| connect_here(src, dst, timeout))
        .unwrap_or_else(|e| panic!("TCP socket bound to {src} in {}: {e}", ns.name()))
}

/// A TCP connect attempt: the socket (still open) and how the connect went.
#[derive(Debug)]
pub struct ConnectAttempt {
    socket: OwnedFd,
    /// `Ok` if connected; `TimedOut` if no answer within the timeout; the socket error
    /// otherwise (`ConnectionRefused` for a RST).
    pub result: io::Result<()>,
}

impl ConnectAttempt {
    /// SYNs sent so far: see [`tcp_syn_count`].
    pub fn syns_sent(&self) -> u32 {
        tcp_syn_count(&self.socket)
    }

    /// The connected stream (blocking again), or the connect error.
    pub fn into_stream(self) -> io::Result<TcpStream> {
        self.result?;
        let stream = TcpStream::from(self.socket);
        stream.set_nonblocking(false)?;
        Ok(stream)
    }
}

impl AsFd for ConnectAttempt {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// SYNs a connecting socket has sent: 1 + `tcpi_total_retrans` from `TCP_INFO`. Meaningful
/// while the socket has only ever connected (later data retransmits count too). The count
/// grows with the kernel's SYN backoff: 1 s, 2 s, 4 s, ... after the first.
pub fn tcp_syn_count(socket: &impl AsFd) -> u32 {
    // SAFETY: tcp_info is plain data; all-zero is valid.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes, and the kernel writes at most `len`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        panic!("getsockopt(TCP_INFO): {}", io::Error::last_os_error());
    }
    1 + info.tcpi_total_retrans
}

/// Makes a non-blocking TCP socket bound to `src` in the calling thread's namespace, starts
/// connecting to `dst` and waits up to `timeout` for the outcome.
fn connect_here(src: SocketAddr, dst: SocketAddr, timeout: Duration) -> io::Result<ConnectAttempt> {
    let domain = if src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    let (addr, len) = sockaddr(src);
    // SAFETY: `addr` holds a valid sockaddr of `len` bytes.
    if unsafe { libc::bind(raw, (&raw const addr).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (addr, len) = sockaddr(dst);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(raw, (&raw const addr).cast(), len) };
    let result = if rc == 0 {
        Ok(())
    } else {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINPROGRESS) {
            wait_connected(socket.as_fd(), timeout)
        } else {
            Err(err)
        }
    };
    Ok(ConnectAttempt { socket, result })
}

/// Waits for a non-blocking connect to finish; its outcome comes from `SO_ERROR`.
fn wait_connected(socket: BorrowedFd<'_>, timeout: Duration) -> io::Result<()> {
    if !poll_fd(socket, libc::POLLOUT, timeout)? {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TCP connect timed out after {timeout:?}"),
        ));
    }
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` is writable for `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    match err {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// Whether `fd` becomes ready for `events` within `timeout` (retrying on EINTR).
fn poll_fd(fd: BorrowedFd<'_>, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up so a sub-millisecond remainder still waits rather than spins.
        let millis = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        match unsafe { libc::poll(&mut pfd, 1, millis) } {
            n if n > 0 => return Ok(true),
            0 => return Ok(false),
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted || left.is_zero() {
                    return Err(err);
                }
            }
        }
    }
}

/// A `sockaddr_storage` holding `addr`, and its length.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

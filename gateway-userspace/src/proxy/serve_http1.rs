//! HTTP/1.1 with an owned idle phase: each request (or pipelined run of requests) is served
//! by a fresh hyper connection, a "cycle", and between requests the task keeps only the
//! socket (for TLS, the rustls session) and waits for readability with no buffer. hyper's
//! read and write buffers and its connection state live only while a request does: an idle
//! keep-alive connection costs a parked task, not a hyper connection.
//!
//! A cycle ends when its response has been sent and flushed and a read finds nothing more
//! (cycle_io.rs). The task then asks hyper to close if idle and polls it once: hyper
//! closes an idle connection at once without reading, and the socket comes back with any
//! bytes hyper read but did not parse (replayed in the next cycle). If hyper reads instead,
//! it was mid-message (a request body still arriving after its answer): that cycle finishes
//! its message and the connection closes, as hyper would close it anyway.
//!
//! A connection whose next request comes within [`LINGER`] of its last response gets a cycle
//! that parks only once no response has ended for LINGER: requests that come back to back
//! (the common keep-alive load) are served by one cycle, so the price of owning the idle
//! phase is a hyper connection set up per busy period, not per request (set up per request,
//! it cost about 16k instructions, a fifth of a proxied GET), for about 2 KiB instead of
//! 28 KiB per idle connection.
//!
//! A connection answered 101 never goes idle: it is a tunnel (forward.rs) from then on.
//!
//! Timers are those of one long hyper connection: the next head must arrive within
//! `header_read_timeout` of the last response (of the connection's start, for the first),
//! the idle phase ends after `idle_timeout` with nothing in flight, and shutdown closes an
//! idle connection at once and a busy one when its request is done.

use std::{future::poll_fn, sync::Arc, task::Poll, time::Duration};

use hyper::{body::Bytes, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::time::Instant;

use crate::config::HttpLimits;

/// How long after its last response a cycle keeps hyper's state before it may park.
const LINGER: Duration = Duration::from_millis(250);

use super::{
    activity::Activity,
    cycle_io::{CycleIo, CycleState},
    listener::Shared,
    serve::{Service, Socket, closing_overdue, stopped},
};

/// Serves HTTP/1.1 requests on `stream` until the connection closes; `replay` holds bytes
/// already read from it.
pub async fn serve<S: Socket>(
    mut stream: S,
    mut replay: Bytes,
    limits: Arc<HttpLimits>,
    activity: Arc<Activity>,
    service: Service,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        // The idle phase: the socket, the bytes to replay, and nothing else.
        if replay.is_empty() {
            let wait = limits.header_read_timeout.min(limits.idle_timeout);
            let deadline = activity.last_end() + wait;
            tokio::select! {
                readable = stream.readable() => if readable.is_err() { return },
                () = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(
                        "idle keep-alive connection closed (limits.idle_timeout {:?}, \
                         limits.header_read_timeout {:?})",
                        limits.idle_timeout,
                        limits.header_read_timeout
                    );
                    return;
                }
                () = stopped(&mut shutdown) => return,
            }
        }
        // Boxed: its state is allocated only while a request is being served.
        let cycle = Box::pin(cycle(stream, replay, &limits, &activity, &service, &shared));
        match cycle.await {
            Some((socket, unread)) => (stream, replay) = (socket, unread),
            None => return,
        }
    }
}

/// Serves requests with one hyper connection until the connection is idle (returns the
/// socket and bytes read but not parsed) or closes (`None`).
async fn cycle<S: Socket>(
    stream: S,
    replay: Bytes,
    limits: &HttpLimits,
    activity: &Arc<Activity>,
    service: &Service,
    shared: &Shared,
) -> Option<(S, Bytes)> {
    // The head timer runs from the last response (or the connection's start), as it would
    // on one long hyper connection.
    let head_deadline = activity.last_end() + limits.header_read_timeout;
    let head_timeout = head_deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    // Only a connection that came back within LINGER of its last response lingers: a client
    // sending back to back. Its first cycle, or one after an idle phase, serves its burst
    // and parks, so a connection used once costs its socket at once. hyper applies
    // `head_timeout` to every head of the cycle: lingering shortens no timer by more than
    // LINGER.
    let mut lingering = activity.requests() > 0
        && head_timeout + LINGER >= limits.header_read_timeout
        && LINGER < limits.header_read_timeout;
    let state = match lingering {
        true => CycleState::lingering(),
        false => Arc::new(CycleState::default()),
    };
    let linger = tokio::time::sleep_until(activity.last_end().max(Instant::now()) + LINGER);
    tokio::pin!(linger);
    let io = CycleIo::new(stream, replay, state.clone(), Some(activity.clone()));
    // With upgrades: a WebSocket handshake answered 101 hands the connection to forward.rs.
    let mut conn = builder(limits, head_timeout)
        .serve_connection(TokioIo::new(io), service.hyper())
        .with_upgrades();
    let mut shutdown = shared.shutdown.clone();
    // Set when the gateway starts closing.
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            // hyper first, then the park check: a park is seen in the same round.
            biased;
            result = &mut conn => {
                if let Err(error) = result {
                    tracing::debug!("connection ended: {error}");
                }
                return None;
            }
            () = parked(&state) => {
                state.probe();
                std::pin::Pin::new(&mut conn).graceful_shutdown();
                let probed = poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut conn).poll(cx))).await;
                match probed {
                    Poll::Ready(Ok(())) if state.probe_found_idle() => {
                        let parts = conn.into_parts()?;
                        let (stream, rest) = parts.io.into_inner().into_parts();
                        return Some((stream, unread(parts.read_buf, rest)));
                    }
                    Poll::Ready(_) => return None,
                    // Mid-message: it finishes and closes.
                    Poll::Pending => {
                        state.pass();
                        closing.get_or_insert_with(Instant::now);
                    }
                }
            }
            // Quiet for LINGER: the cycle may park; hyper, polled next, reads and parks it.
            () = &mut linger, if lingering => {
                let quiet = activity.last_end() + LINGER;
                if activity.is_idle() && quiet <= Instant::now() {
                    lingering = false;
                    state.stop_lingering();
                } else if activity.is_idle() {
                    linger.as_mut().reset(quiet);
                } else {
                    linger.as_mut().reset(Instant::now() + LINGER);
                }
            }
            // Graceful: a request in flight finishes, then the connection closes.
            _ = activity.idle_for(limits.idle_timeout), if closing.is_none() => {
                closing = Some(Instant::now());
                state.pass();
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
            () = stopped(&mut shutdown), if closing.is_none() => {
                closing = Some(Instant::now());
                state.pass();
                std::pin::Pin::new(&mut conn).graceful_shutdown();
            }
            () = closing_overdue(activity, closing, limits.close_grace), if closing.is_some() => {
                tracing::debug!(
                    "closed: limits.close_grace ({:?}) passed after closing began, nothing in flight",
                    limits.close_grace
                );
                return None;
            }
        }
    }
}

/// Resolves once the cycle's IO has parked.
async fn parked(state: &CycleState) {
    poll_fn(|_| {
        if state.is_parked() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// What hyper had read but not parsed, then what it had not read of the replay yet. Copied
/// out: hyper's `read_buf`, even empty, holds on to its whole read buffer.
fn unread(read_buf: Bytes, rest: Bytes) -> Bytes {
    if read_buf.is_empty() {
        return rest;
    }
    [&read_buf[..], &rest[..]].concat().into()
}

fn builder(limits: &HttpLimits, head_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Also bounds a head that has begun to arrive after an idle phase.
        .header_read_timeout(head_timeout)
        // An oversized head is refused (431) while it is read; the exact limit is checked on
        // the parsed head (limits.rs). hyper's buffer must be at least 8 KiB.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
}

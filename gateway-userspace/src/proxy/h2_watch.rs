//! Watches what an HTTP/2 client sends for the acknowledgement of the gateway's SETTINGS:
//! hyper (h2) sends them but has no deadline for the answer. Only frame headers are read,
//! and only until the acknowledgement or until the bytes are clearly not HTTP/2.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::watch,
};

/// The client connection preface (RFC 9113 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;

/// What has been seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not enough bytes yet to tell.
    Nothing,
    /// The HTTP/2 preface: the gateway's SETTINGS are on their way and need an ACK.
    Preface,
    /// The client acknowledged the SETTINGS.
    SettingsAcked,
    /// Not HTTP/2: nothing to watch.
    NotHttp2,
}

enum Parse {
    Preface {
        matched: usize,
    },
    Header {
        bytes: [u8; FRAME_HEADER],
        have: usize,
    },
    Payload {
        left: usize,
    },
    Done,
}

/// A stream whose reads are watched; writes pass through untouched.
pub struct H2Watch<S> {
    inner: S,
    parse: Parse,
    seen: watch::Sender<Seen>,
}

impl<S> H2Watch<S> {
    pub fn new(inner: S) -> (Self, watch::Receiver<Seen>) {
        let (seen, receiver) = watch::channel(Seen::Nothing);
        let watched = H2Watch {
            inner,
            parse: Parse::Preface { matched: 0 },
            seen,
        };
        (watched, receiver)
    }

    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.parse {
                Parse::Done => return,
                Parse::Preface { matched } => {
                    let take = bytes.len().min(PREFACE.len() - *matched);
                    if bytes[..take] != PREFACE[*matched..*matched + take] {
                        self.finish(Seen::NotHttp2);
                        return;
                    }
                    *matched += take;
                    bytes = &bytes[take..];
                    if *matched == PREFACE.len() {
                        self.seen.send_replace(Seen::Preface);
                        self.parse = Parse::Header {
                            bytes: [0; FRAME_HEADER],
                            have: 0,
                        };
                    }
                }
                Parse::Header {
                    bytes: header,
                    have,
                } => {
                    let take = bytes.len().min(FRAME_HEADER - *have);
                    header[*have..*have + take].copy_from_slice(&bytes[..take]);
                    *have += take;
                    bytes = &bytes[take..];
                    if *have == FRAME_HEADER {
                        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]);
                        let (kind, flags) = (header[3], header[4]);
                        if kind == SETTINGS && flags & ACK != 0 {
                            self.finish(Seen::SettingsAcked);
                            return;
                        }
                        self.parse = Parse::Payload {
                            left: length as usize,
                        };
                    }
                }
                Parse::Payload { left } => {
                    let take = bytes.len().min(*left);
                    *left -= take;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        self.parse = Parse::Header {
                            bytes: [0; FRAME_HEADER],
                            have: 0,
                        };
                    }
                }
            }
        }
        // A frame with an empty payload ends exactly at a header.
        if let Parse::Payload { left: 0 } = self.parse {
            self.parse = Parse::Header {
                bytes: [0; FRAME_HEADER],
                have: 0,
            };
        }
    }

    fn finish(&mut self, seen: Seen) {
        self.parse = Parse::Done;
        self.seen.send_replace(seen);
    }
}

/// Resolves when an HTTP/2 client has not acknowledged the SETTINGS within `timeout` of
/// its preface; never for other clients.
pub async fn settings_overdue(mut seen: watch::Receiver<Seen>, timeout: Duration) {
    let Ok(first) = seen
        .wait_for(|seen| *seen != Seen::Nothing)
        .await
        .map(|s| *s)
    else {
        return std::future::pending().await;
    };
    if first != Seen::Preface {
        return std::future::pending().await;
    }
    let acked = seen.wait_for(|seen| *seen == Seen::SettingsAcked);
    if tokio::time::timeout(timeout, acked).await.is_err() {
        return;
    }
    std::future::pending().await
}

impl<S: AsyncRead + Unpin> AsyncRead for H2Watch<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if !matches!(self.parse, Parse::Done) {
            self.observe(&buf.filled()[before..]);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H2Watch<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let length = (payload.len() as u32).to_be_bytes();
        let mut frame = vec![length[1], length[2], length[3], kind, flags, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        frame
    }

    fn watch(stream: &[u8], chunk: usize) -> Seen {
        let (mut watched, seen) = H2Watch::new(());
        for piece in stream.chunks(chunk) {
            watched.observe(piece);
        }
        *seen.borrow()
    }

    #[test]
    fn finds_the_settings_ack_however_the_bytes_are_split() {
        let mut stream = PREFACE.to_vec();
        stream.extend(frame(SETTINGS, 0, &[0, 3, 0, 0, 0, 100]));
        stream.extend(frame(0x8, 0, &[0, 1, 0, 0])); // WINDOW_UPDATE
        stream.extend(frame(0x6, 0, &[0; 8])); // PING
        let before_ack = stream.clone();
        stream.extend(frame(SETTINGS, ACK, &[]));
        for chunk in [1, 2, 5, 9, 24, 1000] {
            assert_eq!(watch(&before_ack, chunk), Seen::Preface, "chunk {chunk}");
            assert_eq!(watch(&stream, chunk), Seen::SettingsAcked, "chunk {chunk}");
        }
    }

    #[test]
    fn a_settings_ack_inside_a_payload_is_not_one() {
        let mut stream = PREFACE.to_vec();
        // A DATA-like frame whose payload looks like a SETTINGS ACK header.
        stream.extend(frame(0x0, 0, &frame(SETTINGS, ACK, &[])));
        assert_eq!(watch(&stream, 3), Seen::Preface);
    }

    #[test]
    fn other_protocols_are_left_alone() {
        for stream in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PRI * HTTP/1.1\r\n",
            b"\x16\x03\x01",
        ] {
            assert_eq!(watch(stream, 1), Seen::NotHttp2, "{stream:?}");
        }
        assert_eq!(watch(&PREFACE[..10], 1), Seen::Nothing);
    }
}

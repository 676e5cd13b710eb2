//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>). Every request belongs to a
//! trace: a valid incoming `traceparent` keeps its trace id and flags, anything else starts a
//! new trace. The gateway is a hop of its own, so the upstream gets a `traceparent` whose
//! parent id is the gateway's span id; `tracestate` passes through untouched.

use hyper::{HeaderMap, header::HeaderName, header::HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The trace a request belongs to, and the gateway's span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    /// The gateway's own span for this request.
    pub span_id: u64,
    /// The caller's span, when the request came with a valid `traceparent`.
    pub parent_id: Option<u64>,
    pub sampled: bool,
}

impl TraceContext {
    /// Continues the caller's trace, or starts one (sampled: the access log records it).
    pub fn from_headers(headers: &HeaderMap) -> TraceContext {
        let span_id = nonzero_u64();
        match headers
            .get(TRACEPARENT)
            .and_then(|value| parse(value.as_bytes()))
        {
            Some((trace_id, parent_id, flags)) => TraceContext {
                trace_id,
                span_id,
                parent_id: Some(parent_id),
                sampled: flags & 1 == 1,
            },
            None => TraceContext {
                trace_id: loop {
                    let id = fastrand::u128(..);
                    if id != 0 {
                        break id;
                    }
                },
                span_id,
                parent_id: None,
                sampled: true,
            },
        }
    }

    /// `00-<trace id>-<the gateway's span id>-<flags>`, for the upstream. Written into a
    /// fixed buffer: no formatting machinery on every request.
    pub fn traceparent(&self) -> HeaderValue {
        let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
        lower_hex_into(&mut value[3..35], self.trace_id);
        lower_hex_into(&mut value[36..52], u128::from(self.span_id));
        lower_hex_into(&mut value[53..55], u128::from(self.sampled));
        HeaderValue::from_bytes(&value).expect("hex is a valid header value")
    }

    /// The trace id as 32 lowercase hex digits, written into `out` (no allocation).
    pub fn trace_id_hex<'a>(&self, out: &'a mut [u8; 32]) -> &'a str {
        lower_hex_into(out, self.trace_id);
        std::str::from_utf8(out).expect("hex digits are ASCII")
    }
}

/// Writes `value`'s low `out.len()` hex digits into `out`, lowercase and zero-padded (as
/// `{:0width$x}` would, without allocating).
pub fn lower_hex_into(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

fn nonzero_u64() -> u64 {
    fastrand::u64(1..)
}

/// `version-traceid-parentid-flags`: (trace id, parent id, flags), or `None` if invalid.
/// Version 00 is exactly 55 characters; a later version may append fields after a '-', and
/// its first four fields are read the same way. Version ff, zero ids and upper-case hex are
/// invalid.
fn parse(value: &[u8]) -> Option<(u128, u64, u8)> {
    let text = std::str::from_utf8(value).ok()?;
    let version = u8::from_str_radix(lower_hex(text.get(0..2)?)?, 16).ok()?;
    let fits = match version {
        0 => text.len() == 55,
        0xff => false,
        _ => text.len() == 55 || text.as_bytes().get(55) == Some(&b'-'),
    };
    if !fits || [2, 35, 52].iter().any(|&at| text.as_bytes()[at] != b'-') {
        return None;
    }
    let trace_id = u128::from_str_radix(lower_hex(&text[3..35])?, 16).ok()?;
    let parent_id = u64::from_str_radix(lower_hex(&text[36..52])?, 16).ok()?;
    let flags = u8::from_str_radix(lower_hex(&text[53..55])?, 16).ok()?;
    (trace_id != 0 && parent_id != 0).then_some((trace_id, parent_id, flags))
}

fn lower_hex(field: &str) -> Option<&str> {
    field
        .bytes()
        .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn context(traceparent: Option<&str>) -> TraceContext {
        let mut headers = HeaderMap::new();
        if let Some(value) = traceparent {
            headers.insert(TRACEPARENT, HeaderValue::from_str(value).unwrap());
        }
        TraceContext::from_headers(&headers)
    }

    #[test]
    fn hex_is_written_as_format_writes_it() {
        let values = [0, 1, 0xf, 0x10, 0xabc, u128::from(u64::MAX), u128::MAX];
        for value in values
            .into_iter()
            .chain((0..200).map(|_| fastrand::u128(..)))
        {
            let mut wide = [0u8; 32];
            lower_hex_into(&mut wide, value);
            assert_eq!(std::str::from_utf8(&wide).unwrap(), format!("{value:032x}"));
            let mut narrow = [0u8; 16];
            lower_hex_into(&mut narrow, value & u128::from(u64::MAX));
            let low = value as u64;
            assert_eq!(std::str::from_utf8(&narrow).unwrap(), format!("{low:016x}"));
        }
        let trace = context(None);
        let expected = format!("00-{:032x}-{:016x}-01", trace.trace_id, trace.span_id);
        assert_eq!(trace.traceparent(), expected.as_str());
    }

    #[test]
    fn a_valid_traceparent_is_continued_with_the_gateways_span() {
        let trace = context(Some(VALID));
        assert_eq!(trace.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(trace.parent_id, Some(0x00f067aa0ba902b7));
        assert!(trace.sampled);
        let sent = trace.traceparent();
        let sent = sent.to_str().unwrap();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{sent}"
        );
        assert_ne!(
            &sent[36..52],
            "00f067aa0ba902b7",
            "the gateway's own span id"
        );
        assert!(sent.ends_with("-01"));
        let unsampled = context(Some(&VALID.replace("-01", "-00")));
        assert!(!unsampled.sampled);
        assert!(unsampled.traceparent().to_str().unwrap().ends_with("-00"));
        // A later version with more fields: its first four are read.
        let future = context(Some(&format!("{}-extra", VALID.replacen("00", "cc", 1))));
        assert_eq!(future.parent_id, Some(0x00f067aa0ba902b7));
    }

    /// Kept by hand, not the OpenTelemetry propagator: that one reads fields split on '-'
    /// with `from_str_radix`, so it takes short ids, a '+' sign, a truncated flags field and
    /// a trailing '-' (the rows marked below), all of which W3C Trace Context refuses.
    #[test]
    fn an_invalid_traceparent_starts_a_new_trace() {
        let invalid = [
            // Accepted by the OpenTelemetry propagator:
            &VALID[..54],
            &format!("{VALID}-"),
            "00-1-1-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-1-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-+1",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Refused by both:
            "",
            "garbage",
            &VALID.replacen("00", "ff", 1),
            &VALID.to_uppercase(),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ];
        for value in invalid {
            let trace = context(Some(value));
            assert_eq!(trace.parent_id, None, "{value:?} accepted");
            assert_ne!(
                trace.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736,
                "{value:?}"
            );
            assert!(trace.sampled);
            assert_eq!(
                parse(trace.traceparent().as_bytes()).unwrap().0,
                trace.trace_id
            );
        }
        assert_eq!(context(None).parent_id, None);
    }
}

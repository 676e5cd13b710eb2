//! The access log's tracing layer: each `access_log` event becomes one JSON line, written to
//! a non-blocking writer. It replaces tracing-subscriber's generic JSON formatter, which cost
//! about as much as proxying the request itself (a serde map per event, every field through
//! `Debug`): here each field is appended straight into one reused buffer per thread.

use std::{cell::RefCell, fmt::Write as _, io::Write as _, time::SystemTime};

use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{fmt::MakeWriter, layer::Context};

pub struct AccessLogLayer<W> {
    writer: W,
}

impl<W> AccessLogLayer<W> {
    pub fn new(writer: W) -> Self {
        AccessLogLayer { writer }
    }
}

impl<S, W> tracing_subscriber::Layer<S> for AccessLogLayer<W>
where
    S: Subscriber,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        thread_local! {
            static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            let now = humantime::format_rfc3339_micros(SystemTime::now());
            let _ = write!(line, "{{\"timestamp\":\"{now}\"");
            event.record(&mut JsonFields(line));
            line.push_str("}\n");
            // The writer queues the line for its own thread; a full queue drops it.
            let _ = self.writer.make_writer().write_all(line.as_bytes());
        });
    }
}

/// Appends `,"name":value` for each field.
struct JsonFields<'a>(&'a mut String);

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.0.push_str(",\"");
        escape_into(self.0, field.name());
        self.0.push_str("\":");
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.0.push('"');
        escape_into(self.0, value);
        self.0.push('"');
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.0.push_str(itoa::Buffer::new().format(value));
    }

    /// Shortest round-trip digits (ryu: what serde_json writes), without `fmt`'s machinery.
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            self.0.push_str(ryu::Buffer::new().format_finite(value));
        } else {
            self.0.push_str("null");
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true" } else { "false" });
    }

    /// `%value` fields (Display) arrive here too: formatted straight into the line, escaped
    /// piece by piece.
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        self.0.push('"');
        let _ = write!(Escaping(&mut *self.0), "{value:?}");
        self.0.push('"');
    }
}

/// A `fmt::Write` that JSON-escapes what is written through it.
struct Escaping<'a>(&'a mut String);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        escape_into(self.0, text);
        Ok(())
    }
}

/// JSON string escaping (RFC 8259 section 7). Most values need none: they are copied whole.
fn escape_into(out: &mut String, text: &str) {
    if !needs_escape(text.as_bytes()) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Whether `bytes` hold a control character, `"` or `\`: eight bytes at a time (the
/// classic "has a zero byte" / "has a byte below n" word tricks, exact as a yes/no).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS != 0;
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let word = u64::from_ne_bytes(chunk.try_into().expect("eight bytes"));
        let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGHS != 0;
        if below_space
            || has_zero(word ^ (ONES * u64::from(b'"')))
            || has_zero(word ^ (ONES * u64::from(b'\\')))
        {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_into_valid_json() {
        let mut out = String::from("{\"v\":\"");
        escape_into(&mut out, "a\"b\\c\nd\u{1}é/");
        out.push_str("\"}");
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["v"], "a\"b\\c\nd\u{1}é/");
    }

    /// The word-at-a-time scan agrees with the byte-at-a-time rule for every byte value at
    /// every position of strings from 0 to 24 bytes (both sides of each 8-byte word).
    #[test]
    fn the_word_scan_finds_every_byte_that_needs_escaping() {
        let plain = |byte: u8| !(byte < 0x20 || byte == b'"' || byte == b'\\');
        for len in 0..=24 {
            for at in 0..len {
                for byte in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[at] = byte;
                    assert_eq!(
                        needs_escape(&text),
                        !plain(byte),
                        "byte {byte:#x} at {at} of {len}"
                    );
                }
            }
            assert!(!needs_escape(&vec![0x7f; len]));
            assert!(!needs_escape(&vec![0xff; len]));
        }
    }
}

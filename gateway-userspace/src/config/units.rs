//! Human units in the file: sizes (`65536`, `"64KiB"`), byte rates (`"1KiB/s"`) and durations
//! (`"500ms"`, `"30s"`, `"2m"`). Each problem names the key.

use std::time::Duration;

use serde::Deserialize;

use super::Problems;

/// A byte count: `65536` or `"64KiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Size {
    Bytes(u64),
    Text(String),
}

/// A byte rate: `1024` or `"1KiB/s"` (bytes per second).
pub(super) fn rate(value: Option<Size>, key: &str, problems: &mut Problems) -> Option<u64> {
    let per_second = match value? {
        Size::Bytes(bytes) => return Some(bytes),
        Size::Text(text) => match text.strip_suffix("/s") {
            Some(size) => size.trim().to_owned(),
            None => {
                problems.add(
                    key,
                    format!("{text:?} is not a rate (e.g. 1024, \"1KiB/s\")"),
                );
                return None;
            }
        },
    };
    size(Some(Size::Text(per_second)), key, problems)
}

pub(super) fn size(value: Option<Size>, key: &str, problems: &mut Problems) -> Option<u64> {
    match value? {
        Size::Bytes(bytes) => Some(bytes),
        Size::Text(text) => match text.parse::<bytesize::ByteSize>() {
            Ok(size) => Some(size.as_u64()),
            Err(_) => {
                problems.add(
                    key,
                    format!("{text:?} is not a size (e.g. 65536, \"64KiB\", \"8MiB\")"),
                );
                None
            }
        },
    }
}

pub(super) fn duration(
    value: Option<String>,
    key: &str,
    problems: &mut Problems,
) -> Option<Duration> {
    let text = value?;
    match humantime::parse_duration(&text) {
        Ok(duration) if !duration.is_zero() => Some(duration),
        Ok(_) => {
            problems.add(key, "must be longer than 0s");
            None
        }
        Err(_) => {
            problems.add(
                key,
                format!("{text:?} is not a duration (e.g. \"500ms\", \"30s\", \"2m\")"),
            );
            None
        }
    }
}

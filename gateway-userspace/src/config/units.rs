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

/// A duration above zero: `"500ms"`, `"30s"`, `"2m"`. `None` when absent or invalid (the
/// problem names `key`). The one duration parser of the config, so every key says the same.
pub(super) fn duration(
    value: Option<String>,
    key: &str,
    problems: &mut Problems,
) -> Option<Duration> {
    let duration = duration_or_zero(value, key, problems)?;
    if duration.is_zero() {
        problems.add(key, "must be longer than 0s");
        return None;
    }
    Some(duration)
}

/// A duration that may be zero, such as a clock leeway of `"0s"`.
pub(super) fn duration_or_zero(
    value: Option<String>,
    key: &str,
    problems: &mut Problems,
) -> Option<Duration> {
    let text = value?;
    match humantime::parse_duration(&text) {
        Ok(duration) => Some(duration),
        Err(_) => {
            problems.add(
                key,
                format!("{text:?} is not a duration (e.g. \"500ms\", \"30s\", \"2m\")"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ParseError};

    /// Every key read by `duration`, from each file that reads one: `{}` is the value.
    const DURATION_KEYS: &[(&str, &str)] = &[
        ("[limits]\nidle_timeout = \"{}\"\n", "limits.idle_timeout"),
        (
            "[[upstreams]]\nname = \"u\"\nconnect_timeout = \"{}\"\n",
            "upstreams[0].connect_timeout",
        ),
        (
            "[[auth.jwt]]\nname = \"a\"\njwks_url = \"https://idp.example/jwks\"\nrefresh = \"{}\"\n",
            "auth.jwt[0].refresh",
        ),
        (
            "[[upstreams]]\nname = \"u\"\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n\
             cors = { origins = [\"https://a.example\"], max_age = \"{}\" }\n",
            "routes[0].cors.max_age",
        ),
        (
            "[[upstreams]]\nname = \"u\"\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n\
             cache = { ttl = \"{}\" }\n",
            "routes[0].cache.ttl",
        ),
        (
            "[[defend.triggers]]\nsignal = \"trap\"\npaths = [\"/.env\"]\nban = \"{}\"\n",
            "defend.triggers[0].ban",
        ),
        (
            "[defend.under_attack]\nprobation = \"{}\"\n",
            "defend.under_attack.probation",
        ),
        (
            "[otlp]\nendpoint = \"http://127.0.0.1:4318/v1/traces\"\ntimeout = \"{}\"\n",
            "otlp.timeout",
        ),
    ];

    /// Not durations, as an operator might mistype them.
    const NOT_DURATIONS: &[&str] = &[
        "soon",
        "",
        " ",
        "10",
        "-1s",
        "1.5.2s",
        "30 parsecs",
        "s",
        "1e3s",
        "ten seconds",
        "30s;",
        "∞",
    ];
    const ZEROS: &[&str] = &["0s", "0ms", "0m", "0h", "0d", "0ns"];

    fn problems(section: &str, value: &str) -> Vec<String> {
        let text = format!("[xdp]\nmode = \"off\"\n{}", section.replace("{}", value));
        match Config::parse(&text) {
            Ok(_) => Vec::new(),
            Err(ParseError::Invalid(problems)) => {
                problems.iter().map(ToString::to_string).collect()
            }
            Err(error) => panic!("{value:?} in {section:?}: {error:?}"),
        }
    }

    #[test]
    fn every_duration_key_names_itself_and_says_why() {
        for (section, key) in DURATION_KEYS {
            for value in NOT_DURATIONS {
                let expected =
                    format!("{key}: {value:?} is not a duration (e.g. \"500ms\", \"30s\", \"2m\")");
                let found = problems(section, value);
                assert!(found.contains(&expected), "{expected:?} not in {found:#?}");
            }
            for value in ZEROS {
                let expected = format!("{key}: must be longer than 0s");
                let found = problems(section, value);
                assert!(found.contains(&expected), "{expected:?} not in {found:#?}");
            }
            let found = problems(section, "90s");
            assert!(
                !found.iter().any(|problem| problem.starts_with(key)),
                "90s is a duration for {key}: {found:#?}"
            );
        }
    }

    #[test]
    fn a_leeway_may_be_zero_but_must_be_a_duration() {
        let section = "[[auth.jwt]]\nname = \"a\"\njwks_url = \"https://idp.example/jwks\"\n\
                       leeway = \"{}\"\n";
        for value in ZEROS {
            let found = problems(section, value);
            assert!(
                !found.iter().any(|problem| problem.contains("leeway")),
                "{value:?}: {found:#?}"
            );
        }
        for value in NOT_DURATIONS {
            let expected = format!(
                "auth.jwt[0].leeway: {value:?} is not a duration (e.g. \"500ms\", \"30s\", \"2m\")"
            );
            let found = problems(section, value);
            assert!(found.contains(&expected), "{expected:?} not in {found:#?}");
        }
    }
}

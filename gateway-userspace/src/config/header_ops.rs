//! A route's `request_headers` and `response_headers`: remove, set and add, checked so that
//! config never edits what the proxy manages itself (framing, hop-by-hop fields).

use std::collections::HashMap;

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;

use super::Problems;

/// Header edits, applied in this order: remove, set (replace), add (append).
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHeaderOps {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: HashMap<String, String>,
    #[serde(default)]
    add: HashMap<String, String>,
}

impl RawHeaderOps {
    pub(super) fn compile(self, key: &str, problems: &mut Problems) -> HeaderOps {
        let mut remove = Vec::new();
        for (index, name) in self.remove.iter().enumerate() {
            if let Some(name) = header_name(name, &format!("{key}.remove[{index}]"), problems) {
                remove.push(name);
            }
        }
        HeaderOps {
            remove,
            set: sorted_pairs(self.set, &format!("{key}.set"), problems),
            add: sorted_pairs(self.add, &format!("{key}.add"), problems),
        }
    }
}

/// Header fields that are the proxy's own business, so config may not edit them: the
/// hop-by-hop fields the proxy removes, and the framing it sets.
fn is_reserved_header(name: &str) -> bool {
    crate::http::HOP_BY_HOP.contains(&name) || name == "content-length"
}

fn header_name(name: &str, key: &str, problems: &mut Problems) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(parsed) if is_reserved_header(parsed.as_str()) => {
            problems.add(
                key,
                format!("{name:?} is managed by the proxy (framing or hop-by-hop) and cannot be configured"),
            );
            None
        }
        Ok(parsed) => Some(parsed),
        Err(_) => {
            problems.add(key, format!("{name:?} is not a valid header name"));
            None
        }
    }
}

/// Name/value pairs in name order (TOML tables have no order we could keep).
pub(super) fn sorted_pairs(
    table: HashMap<String, String>,
    key: &str,
    problems: &mut Problems,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut pairs: Vec<(String, String)> = table.into_iter().collect();
    pairs.sort();
    let mut compiled = Vec::new();
    for (name, value) in pairs {
        let entry_key = format!("{key}.{name:?}");
        let Some(parsed) = header_name(&name, &entry_key, problems) else {
            continue;
        };
        match HeaderValue::from_str(&value) {
            Ok(value) => compiled.push((parsed, value)),
            Err(_) => problems.add(
                entry_key,
                format!("{value:?} is not a valid header value (visible ASCII only)"),
            ),
        }
    }
    compiled
}

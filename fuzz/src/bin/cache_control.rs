//! Cache-Control parsing: any header values (one per line) give directives without a panic,
//! and a directive is only reported when its name is there, or (for `no-store`, the safe
//! side) when a value cannot be read.
#![no_main]

use gateway::proxy::cache::Directives;
use hyper::header::{CACHE_CONTROL, HeaderMap, HeaderValue, PRAGMA};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    let mut lines = data.split(|&byte| byte == b'\n');
    // The first line is a Pragma value, the others Cache-Control values.
    if let Some(Ok(value)) = lines.next().map(HeaderValue::from_bytes) {
        headers.append(PRAGMA, value);
    }
    for value in lines.filter_map(|line| HeaderValue::from_bytes(line).ok()) {
        headers.append(CACHE_CONTROL, value);
    }
    let directives = Directives::parse(&headers);

    let values: Vec<&HeaderValue> = headers.get_all(CACHE_CONTROL).iter().collect();
    let text: Vec<String> = values
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(str::to_ascii_lowercase)
        .collect();
    let mentions = |name: &str| text.iter().any(|value| value.contains(name));
    let unreadable = text.len() < values.len();
    assert!(!directives.no_store || mentions("no-store") || unreadable);
    assert!(!directives.private || mentions("private"));
    assert!(directives.max_age.is_none() || mentions("max-age"));
    assert!(directives.s_maxage.is_none() || mentions("s-maxage"));
    let pragma = headers.get(PRAGMA).is_some();
    assert!(!directives.no_cache || mentions("no-cache") || (values.is_empty() && pragma));
});

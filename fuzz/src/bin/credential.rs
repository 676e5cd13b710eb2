//! Credential extraction: any header fields and query give one credential, none, or
//! `Ambiguous` without a panic; and once a found credential is stripped from every place a
//! route reads one, nothing is left for the upstream to read.
//!
//! Input: the first line is the query, every other line a header field `name: value`.
#![no_main]

use gateway::{config::auth::TokenSource, proxy::credential};
use hyper::{
    HeaderMap,
    header::{HeaderName, HeaderValue},
    http::uri::PathAndQuery,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&byte| byte == b'\n');
    let query = lines.next().and_then(|line| std::str::from_utf8(line).ok());
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|&byte| byte == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    let sources = [
        TokenSource::Bearer,
        TokenSource::Header(HeaderName::from_static("x-api-key")),
        TokenSource::Cookie("token".to_owned()),
        TokenSource::Query("api_key".to_owned()),
    ];
    let all: Vec<&TokenSource> = sources.iter().collect();
    let Ok(found) = credential::extract(&headers, query, &all) else {
        return;
    };
    if let Some((index, value)) = &found {
        assert!(*index < sources.len() && !value.is_empty());
    }
    // What the upstream gets after strip_credential: the path it is sent, and the fields.
    let Ok(mut path) = format!("/x?{}", query.unwrap_or("")).parse::<PathAndQuery>() else {
        return;
    };
    for source in &sources {
        credential::strip(&mut headers, &mut path, source);
    }
    let left = path.query();
    assert_eq!(
        credential::extract(&headers, left, &all).ok().flatten(),
        None,
        "a credential survived stripping"
    );
});

//! A route's `cors`: which origins, methods and headers browsers may use, and for how long
//! they may cache the answer.

use std::time::Duration;

use hyper::{Method, header::HeaderName};
use serde::Deserialize;

use crate::config::{Problems, units::duration};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// Lowercase `scheme://host[:port]`; `None`: any origin (`"*"`).
    pub origins: Option<Vec<String>>,
    pub methods: Vec<Method>,
    /// Lowercase header names a request may send.
    pub headers: Vec<HeaderName>,
    pub expose: Vec<HeaderName>,
    pub credentials: bool,
    pub max_age: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawCors {
    origins: Vec<String>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    expose: Vec<String>,
    #[serde(default)]
    credentials: bool,
    max_age: Option<String>,
}

pub(in crate::config) fn compile_cors(raw: RawCors, key: &str, problems: &mut Problems) -> Cors {
    let origins = if raw.origins.iter().any(|origin| origin == "*") {
        if raw.credentials {
            problems.add(
                format!("{key}.origins"),
                "\"*\" cannot be used with credentials = true (browsers refuse it): list the origins",
            );
        }
        None
    } else {
        for (index, origin) in raw.origins.iter().enumerate() {
            let uri = origin.parse::<hyper::Uri>();
            let ok = uri.as_ref().is_ok_and(|uri| {
                uri.scheme().is_some()
                    && uri.authority().is_some()
                    && uri.path_and_query().is_none_or(|pq| pq.as_str() == "/")
                    && !origin.ends_with('/')
            });
            if !ok {
                problems.add(
                    format!("{key}.origins[{index}]"),
                    format!("{origin:?} is not an origin (scheme://host[:port]) or \"*\""),
                );
            }
        }
        if raw.origins.is_empty() {
            problems.add(
                format!("{key}.origins"),
                "list at least one origin or \"*\"",
            );
        }
        Some(
            raw.origins
                .iter()
                .map(|origin| origin.to_ascii_lowercase())
                .collect(),
        )
    };
    let mut methods = Vec::new();
    for (index, method) in raw.methods.iter().enumerate() {
        match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
            Ok(method) => methods.push(method),
            Err(_) => problems.add(
                format!("{key}.methods[{index}]"),
                format!("{method:?} is not an HTTP method"),
            ),
        }
    }
    if methods.is_empty() {
        methods = vec![Method::GET, Method::HEAD, Method::POST];
    }
    let names = |list: &[String], name: &str, problems: &mut Problems| -> Vec<HeaderName> {
        list.iter()
            .enumerate()
            .filter_map(
                |(index, text)| match HeaderName::from_bytes(text.as_bytes()) {
                    Ok(header) => Some(header),
                    Err(_) => {
                        problems.add(
                            format!("{key}.{name}[{index}]"),
                            format!("{text:?} is not a header name"),
                        );
                        None
                    }
                },
            )
            .collect()
    };
    Cors {
        origins,
        methods,
        headers: names(&raw.headers, "headers", problems),
        expose: names(&raw.expose, "expose", problems),
        credentials: raw.credentials,
        max_age: duration(raw.max_age, &format!("{key}.max_age"), problems),
    }
}

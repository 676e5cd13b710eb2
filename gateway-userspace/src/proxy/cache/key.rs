//! Cache keys: the internal key of a request, and of a response's variant (`Vary`).

use hyper::{
    HeaderMap,
    header::{HeaderName, VARY},
};

/// The request headers a response's `Vary` names, lowercase and sorted.
pub(super) fn vary_names(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = headers
        .get_all(VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| {
            let name = name.trim();
            match name {
                "*" => Some(HeaderName::from_static("*")),
                _ => HeaderName::from_bytes(name.as_bytes()).ok(),
            }
        })
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// The key of the variant of `base` for these request headers.
pub(super) fn variant_key(base: &str, names: &[HeaderName], headers: &HeaderMap) -> String {
    let mut key = base.to_owned();
    for name in names {
        key.push_str("\nvary:");
        key.push_str(name.as_str());
        key.push('=');
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::trim)
            .collect();
        key.push_str(&values.join(","));
    }
    key
}

#[cfg(test)]
mod tests {
    use super::super::tests::headers;
    use super::*;

    #[test]
    fn variant_keys_name_the_values() {
        let names = vec![HeaderName::from_static("accept-language")];
        let key = variant_key("GET h/p\nr", &names, &headers(&[("accept-language", "fr")]));
        assert_eq!(key, "GET h/p\nr\nvary:accept-language=fr");
        assert_ne!(
            key,
            variant_key("GET h/p\nr", &names, &headers(&[("accept-language", "de")]))
        );
    }
}

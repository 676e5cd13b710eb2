//! Properties of the path normaliser (proxy/normalise.rs), against an independent model of
//! how an upstream resolves a path: decode every escape, merge slashes (when asked), then
//! RFC 3986 5.2.4's `remove_dot_segments`, written out literally from the RFC.

use gateway::config::{EscapedSlashes, PathMatch};
use gateway::proxy::normalise::{Options, Rejection, normalise_path, percent_decode};
use proptest::prelude::*;

/// Route prefixes, most specific first (as the gateway orders them).
const ROUTES: [&str; 5] = ["/admin/keys", "/admin", "/open", "/files", "/"];

fn route(path: &str) -> Option<&'static str> {
    ROUTES
        .into_iter()
        .find(|prefix| PathMatch::prefix_matches(prefix, path))
}

/// The upstream's view of `raw`: `None` when it cannot decode it, else the resolved path
/// and whether a `..` tried to climb above the root (the RFC clamps it there).
fn upstream_view(raw: &str, merge_slashes: bool) -> Option<(String, bool)> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
            if !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                return None;
            }
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    let mut path = String::from_utf8(decoded).ok()?;
    if merge_slashes {
        while path.contains("//") {
            path = path.replace("//", "/");
        }
    }
    Some(remove_dot_segments(&path))
}

/// RFC 3986 5.2.4, rule by rule; also says whether a `..` met an empty output (the root).
fn remove_dot_segments(path: &str) -> (String, bool) {
    let mut input = path.to_owned();
    let mut output = String::new();
    let mut climbed = false;
    // "remove the last segment and its preceding "/" (if any) from the output buffer";
    // nothing to remove: the `..` is at the root.
    let pop = |output: &mut String| match output.rfind('/') {
        Some(at) => {
            output.truncate(at);
            false
        }
        None => {
            let root = output.is_empty();
            output.clear();
            root
        }
    };
    while !input.is_empty() {
        if input.starts_with("../") {
            input.drain(..3);
        } else if input.starts_with("./") {
            input.drain(..2);
        } else if input.starts_with("/./") {
            input.replace_range(..3, "/");
        } else if input == "/." {
            input = "/".into();
        } else if input.starts_with("/../") {
            input.replace_range(..4, "/");
            climbed |= pop(&mut output);
        } else if input == "/.." {
            input = "/".into();
            climbed |= pop(&mut output);
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..]
                .find('/')
                .map_or(input.len(), |at| at + start);
            output.push_str(&input[..end]);
            input.drain(..end);
        }
    }
    (output, climbed)
}

/// Pieces attackers and honest clients put in paths.
const PIECES: &[&str] = &[
    "/",
    "/",
    "/",
    "//",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2e%2e",
    ".%2E",
    "%2E.",
    "a",
    "admin",
    "open",
    "files",
    "keys",
    "%61",
    "%41",
    "%64min",
    "%7e",
    "~",
    "-",
    "_",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    "\\",
    ";",
    ";x=1",
    "%3b",
    "%25",
    "%252e",
    "%25%32%65",
    "%",
    "%z",
    "%20",
    "%c3%a9",
    "%C3%A9",
    "%c0%ae",
    // Halves of one character (U+030E), so a slash or a dot segment can fall between them.
    "%cc",
    "%8e",
    "%ef%bc%8e",
    "%ff",
    "%00",
    "!",
    "%21",
    "%3A",
    "@",
    "\"",
];

fn paths() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..14)
        .prop_map(|pieces| format!("/{}", pieces.concat()))
}

fn options() -> impl Strategy<Value = Options> {
    (any::<bool>(), any::<bool>()).prop_map(|(keep, merge_slashes)| Options {
        escaped_slashes: match keep {
            true => EscapedSlashes::Keep,
            false => EscapedSlashes::Reject,
        },
        merge_slashes,
    })
}

/// What every normalised path is: absolute, no dot segment, escapes in uppercase hex,
/// nothing the normaliser refuses.
fn assert_canonical(path: &str, options: &Options) {
    assert!(path.starts_with('/'), "{path}");
    assert!(
        !path
            .split('/')
            .any(|segment| segment == "." || segment == ".."),
        "dot segment in {path}"
    );
    assert!(!path.contains(['\\', ';']), "{path}");
    if options.escaped_slashes == EscapedSlashes::Reject {
        assert!(!path.contains("%2F") && !path.contains("%5C"), "{path}");
    }
    if options.merge_slashes {
        assert!(!path.contains("//"), "{path}");
    }
    for (at, _) in path.match_indices('%') {
        let hex = &path[at + 1..at + 3];
        assert!(
            hex.bytes()
                .all(|byte| byte.is_ascii_digit() || (b'A'..=b'F').contains(&byte)),
            "{path}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn idempotent_and_canonical(raw in paths(), options in options()) {
        if let Ok(normal) = normalise_path(&raw, &options) {
            assert_canonical(&normal, &options);
            prop_assert_eq!(normalise_path(&normal, &options), Ok(normal.clone()), "{}", raw);
        }
    }

    #[test]
    fn any_text_is_answered_without_panic(raw in "/\\PC{0,40}", options in options()) {
        if let Ok(normal) = normalise_path(&raw, &options) {
            assert_canonical(&normal, &options);
            prop_assert_eq!(normalise_path(&normal, &options), Ok(normal.clone()));
        }
    }

    /// What the gateway routes on is what an upstream resolves the client's path to; a
    /// path the upstream would clamp at the root is refused instead.
    #[test]
    fn the_route_agrees_with_the_upstreams_view(raw in paths(), merge_slashes in any::<bool>()) {
        let options = Options { escaped_slashes: EscapedSlashes::Reject, merge_slashes };
        let result = normalise_path(&raw, &options);
        let Some((view, climbed)) = upstream_view(&raw, merge_slashes) else {
            prop_assert!(result.is_err(), "{raw}: the upstream cannot decode it, yet {result:?}");
            return Ok(());
        };
        match result {
            Ok(normal) => {
                prop_assert!(!climbed, "{raw}: climbs above the root, yet {normal}");
                prop_assert_eq!(percent_decode(&normal, false), view.clone(), "{}", raw);
                prop_assert_eq!(route(&normal), route(&view), "{} -> {}", raw, normal);
            }
            Err(Rejection::AboveRoot) => prop_assert!(climbed, "{raw}"),
            Err(_) => {}
        }
    }

    /// Paths made only of letters, slashes, dots and escapes of unreserved characters are
    /// accepted unless they climb above the root: strictness refuses nothing honest.
    #[test]
    fn honest_paths_are_accepted(
        pieces in prop::collection::vec(
            prop::sample::select(&["/", ".", "..", "%2e", "%2E", "a", "admin", "%61", "%7E", "-"][..]),
            0..14,
        ),
        merge_slashes in any::<bool>(),
    ) {
        let raw = format!("/{}", pieces.concat());
        let options = Options { escaped_slashes: EscapedSlashes::Reject, merge_slashes };
        let (_, climbed) = upstream_view(&raw, merge_slashes).expect("decodable");
        prop_assert_eq!(normalise_path(&raw, &options).is_ok(), !climbed, "{}", raw);
    }
}

//! The `normalise` stage: one canonical request path, decided before routing. The request's
//! URI is rewritten to it, so routing, authorization, rate limits, the cache key, aggregate
//! templates, the access log and the upstream all see the same path, and none of them can
//! read the client's bytes another way than the gateway did (path confusion, issue 13).
//!
//! [`normalise_path`] is a pure function (the fuzz target calls it). In order:
//! - every `%XX` escape is decoded once (two hex digits, or 400); each decoded segment must be
//!   UTF-8 without control characters and without the Unicode look-alikes of `.`, `/` and
//!   `\` that compatibility normalisation (NFKC) would turn into them;
//! - each byte is then written in one form only: unreserved characters, sub-delims, `:` and
//!   `@` as themselves (RFC 3986 6.2.2.2 for the unreserved ones; an upstream decodes the
//!   others the same way), everything else as `%XX` with uppercase hex (6.2.2.1). So `%2e`,
//!   `%2E` and `.` are one byte, and `/a%21` and `/a!` one path;
//! - dot segments are removed (5.2.4); a `..` above the root is refused, not clamped;
//! - refused with 400: an encoded slash or backslash (`%2F`, `%5C`; a route can keep them,
//!   see [`EscapedSlashes`]), a raw backslash, a raw `;` (path parameters: servlet
//!   containers cut `..;x` and `/admin;x` to `..` and `/admin`, so `;` never reaches a
//!   route), `%25` followed by two hex digits (double encoding), raw non-ASCII bytes;
//! - with `merge_slashes`, empty segments go before dot segments are resolved (nginx's
//!   order): `/a//../b` is `/b`.
//!
//! An encoded `;` (`%3B`) is data, as for servlet containers. The query is not changed here;
//! authenticate.rs decodes it where the credential is read.

use hyper::{Request, Uri, http::uri::PathAndQuery};

use crate::config::EscapedSlashes;

use super::{
    Flow, RequestCtx,
    body::ProxyBody,
    error::{ErrorKind, ProxyError},
    snapshot::Snapshot,
};

/// How paths are normalised; the same for every route (they are read before routing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Keep `%2F` and `%5C` (as data inside a segment) instead of refusing them.
    pub escaped_slashes: EscapedSlashes,
    /// Collapse `//` into `/`.
    pub merge_slashes: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            escaped_slashes: EscapedSlashes::Reject,
            merge_slashes: true,
        }
    }
}

/// Why a path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the path does not start with \"/\"")]
    NotAbsolute,
    #[error("a \"%\" not followed by two hex digits")]
    BadEscape,
    #[error("an escape that decodes to \"%XX\" (double encoding)")]
    DoubleEncoded,
    #[error("escapes that do not decode to UTF-8")]
    NotUtf8,
    #[error("a control character")]
    ControlCharacter,
    #[error("a Unicode look-alike of \".\", \"/\" or \"\\\"")]
    LookAlike,
    #[error("a raw byte outside ASCII")]
    NotAscii,
    #[error("an encoded slash or backslash (%2F, %5C)")]
    EscapedSlash,
    #[error("a backslash")]
    Backslash,
    #[error("a \";\" (path parameters are not accepted)")]
    PathParameter,
    #[error("\"..\" climbs above the root")]
    AboveRoot,
}

/// Characters an upstream may see raw in a segment: RFC 3986 `pchar` without `;` and
/// without `%` (which only starts an escape).
fn raw_in_segment(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@".contains(&byte)
}

/// Decoded characters that NFKC turns into `.`, `/` or `\` (fullwidth, small and leader
/// forms).
const LOOK_ALIKES: [char; 7] = [
    '\u{FF0E}', '\u{FF0F}', '\u{FF3C}', '\u{2024}', '\u{2025}', '\u{FE52}', '\u{FE68}',
];

/// The canonical form of `raw`, the path of a request target (no query). `*` (the
/// asterisk-form of `OPTIONS *`) is returned as it is.
pub fn normalise_path(raw: &str, options: &Options) -> Result<String, Rejection> {
    if raw == "*" || already_canonical(raw, options) {
        return Ok(raw.to_owned());
    }
    canonical_form(raw, options)
}

/// Whether `raw` is its own canonical form (most paths): only raw-safe characters, no
/// escapes, no dot segments, and no empty segment but a trailing one when slashes are
/// merged. Then the decode, encode and join below would give back `raw` byte for byte.
fn already_canonical(raw: &str, options: &Options) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let dots = segment == "." || segment == "..";
        if dots || (segment.is_empty() && options.merge_slashes && !last) {
            return false;
        }
        if !segment.bytes().all(raw_in_segment) {
            return false;
        }
    }
    true
}

/// The canonical form of an absolute path, worked out step by step (module docs).
fn canonical_form(raw: &str, options: &Options) -> Result<String, Rejection> {
    if !raw.starts_with('/') {
        return Err(Rejection::NotAbsolute);
    }
    let bytes = decode(raw)?;
    // Segments of the decoded path, split on the raw slashes only (an escaped one is data).
    let mut segments: Vec<String> = Vec::new();
    let mut trailing_slash = false;
    for piece in bytes[1..].split(|byte| byte.is_none()) {
        let text = encode(piece, options)?;
        trailing_slash = false;
        match text.as_str() {
            "." => trailing_slash = true,
            ".." => {
                segments.pop().ok_or(Rejection::AboveRoot)?;
                trailing_slash = true;
            }
            "" if options.merge_slashes => trailing_slash = true,
            _ => segments.push(text),
        }
    }
    let mut path = String::with_capacity(raw.len());
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    // A path that ended in "/", "/." or "/.." names a directory: keep its slash.
    if trailing_slash || path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// The path's bytes with every escape decoded; `None` marks a raw `/`.
fn decode(raw: &str) -> Result<Vec<Option<u8>>, Rejection> {
    let raw = raw.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut at = 0;
    while at < raw.len() {
        let byte = raw[at];
        at += 1;
        match byte {
            b'/' => out.push(None),
            b'%' => {
                let hex = raw
                    .get(at..at + 2)
                    .filter(|pair| is_hex_pair(pair))
                    .ok_or(Rejection::BadEscape)?;
                let hex = std::str::from_utf8(hex).expect("hex digits are ASCII");
                let value = u8::from_str_radix(hex, 16).expect("two hex digits");
                at += 2;
                out.push(Some(value));
            }
            b'\\' => return Err(Rejection::Backslash),
            b';' => return Err(Rejection::PathParameter),
            0x80.. => return Err(Rejection::NotAscii),
            _ => out.push(Some(byte)),
        }
    }
    // A decoded "%" before two hex digits: an upstream that decodes twice reads another
    // path (`%252e` is `.`). A raw "%" always starts an escape, so every "%" here is one.
    if out.windows(3).any(|window| {
        window[0] == Some(b'%')
            && window[1..]
                .iter()
                .all(|byte| byte.is_some_and(|b| b.is_ascii_hexdigit()))
    }) {
        return Err(Rejection::DoubleEncoded);
    }
    // Each segment on its own: a character split by a raw slash (`%CC/%8E`) is not one, and
    // judging the whole path would let dot-segment removal join or part such halves.
    for segment in out.split(Option::is_none) {
        let bytes: Vec<u8> = segment.iter().flatten().copied().collect();
        let text = std::str::from_utf8(&bytes).map_err(|_| Rejection::NotUtf8)?;
        if text.chars().any(char::is_control) {
            return Err(Rejection::ControlCharacter);
        }
        if text.contains(LOOK_ALIKES) {
            return Err(Rejection::LookAlike);
        }
    }
    Ok(out)
}

fn is_hex_pair(pair: &[u8]) -> bool {
    pair.iter().all(u8::is_ascii_hexdigit)
}

/// One decoded segment in its canonical form.
fn encode(segment: &[Option<u8>], options: &Options) -> Result<String, Rejection> {
    let mut text = String::with_capacity(segment.len());
    for byte in segment.iter().flatten().copied() {
        if raw_in_segment(byte) {
            text.push(byte as char);
            continue;
        }
        if matches!(byte, b'/' | b'\\') && options.escaped_slashes == EscapedSlashes::Reject {
            return Err(Rejection::EscapedSlash);
        }
        text.push_str(&format!("%{byte:02X}"));
    }
    Ok(text)
}

/// `text` with its `%XX` escapes decoded (and `+` as a space when `plus_as_space`, as
/// form-encoded queries have it). A `%` without two hex digits stays as it is, as most
/// decoders leave it.
pub fn percent_decode(text: &str, plus_as_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escape = (bytes[at] == b'%')
            .then(|| bytes.get(at + 1..at + 3))
            .flatten()
            .filter(|pair| is_hex_pair(pair));
        match (bytes[at], escape) {
            (_, Some(pair)) => {
                let hex = std::str::from_utf8(pair).expect("hex digits are ASCII");
                out.push(u8::from_str_radix(hex, 16).expect("two hex digits"));
                at += 3;
            }
            (b'+', None) if plus_as_space => {
                out.push(b' ');
                at += 1;
            }
            (byte, None) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a normalised path holds an escaped slash or backslash (kept by
/// [`EscapedSlashes::Keep`]); route.rs refuses it on the routes that do not keep them.
pub fn has_escaped_slash(path: &str) -> bool {
    path.contains("%2F") || path.contains("%5C")
}

/// The stage: rewrites the request's URI to the normalised path (query untouched); 400
/// when the path is refused. Escaped slashes pass here only if some route keeps them.
pub fn normalise(
    snapshot: &Snapshot,
    ctx: &mut RequestCtx,
    req: &mut Request<ProxyBody>,
) -> Result<Flow, ProxyError> {
    let Some(target) = req.uri().path_and_query() else {
        return Ok(Flow::Continue);
    };
    let options = snapshot.normalise;
    let path = normalise_path(target.path(), &options).map_err(|rejection| {
        ProxyError::new(
            ErrorKind::BadRequest,
            format!("path {:?} refused: {rejection}", target.path()),
        )
    })?;
    if path == target.path() {
        ctx.path = Some(path);
        return Ok(Flow::Continue);
    }
    let rebuilt = match target.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.clone(),
    };
    ctx.path = Some(path);
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(rebuilt.parse::<PathAndQuery>().map_err(|_| {
        ProxyError::new(
            ErrorKind::Internal,
            format!("normalised path {rebuilt:?} is invalid"),
        )
    })?);
    *req.uri_mut() = Uri::from_parts(parts)
        .map_err(|error| ProxyError::new(ErrorKind::Internal, format!("{error}")))?;
    Ok(Flow::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The shortcut for already canonical paths agrees with the full normalisation on
        /// paths made of every kind of character the rules treat apart.
        #[test]
        fn the_shortcut_agrees_with_the_full_form(
            pieces in prop::collection::vec(
                prop::sample::select(&[
                    "/", "a", "Z", "0", ".", "..", "-", "~", "!", "+", "=", ":", "@", "%2e",
                    "%2F", "%41", "%", ";", "\\", " ", "é", "\u{7f}", "?", "#", "[", "//",
                ][..]),
                0..12,
            ),
            merge_slashes in any::<bool>(),
            keep_slashes in any::<bool>(),
        ) {
            let options = Options {
                merge_slashes,
                escaped_slashes: match keep_slashes {
                    true => EscapedSlashes::Keep,
                    false => EscapedSlashes::Reject,
                },
            };
            for raw in [format!("/{}", pieces.concat()), pieces.concat()] {
                if raw == "*" || !raw.starts_with('/') {
                    continue;
                }
                let full = canonical_form(&raw, &options);
                if already_canonical(&raw, &options) {
                    prop_assert_eq!(full.as_deref(), Ok(raw.as_str()), "{:?}", raw);
                }
                prop_assert_eq!(normalise_path(&raw, &options), full);
            }
        }
    }

    fn strict(raw: &str) -> Result<String, Rejection> {
        normalise_path(raw, &Options::default())
    }

    #[test]
    fn canonical_forms() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/../b", "/b"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E%2e/b", "/b"),
            ("/a/.%2e/b", "/b"),
            ("/a/%2e./b", "/b"),
            ("/a/%2e/b", "/a/b"),
            ("/%61dmin", "/admin"),
            ("/%41DMIN", "/ADMIN"),
            ("/%7euser", "/~user"),
            ("/a%21b", "/a!b"),
            ("/a%3ab", "/a:b"),
            ("/a%3bb", "/a%3Bb"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/a%23b", "/a%23b"),
            ("/a%25", "/a%25"),
            ("/%c3%a9", "/%C3%A9"),
            ("/a\"b", "/a%22b"),
            ("/a{b}", "/a%7Bb%7D"),
            ("/a//b", "/a/b"),
            ("//a", "/a"),
            ("/a//../b", "/b"),
            ("/a/", "/a/"),
            ("/a//", "/a/"),
            ("/a/./", "/a/"),
            ("/a/...", "/a/..."),
            ("/a/..b", "/a/..b"),
            ("/a.", "/a."),
            ("*", "*"),
        ];
        for (raw, want) in cases {
            assert_eq!(strict(raw).as_deref(), Ok(want), "{raw}");
            assert_eq!(strict(want).as_deref(), Ok(want), "idempotent: {want}");
        }
    }

    #[test]
    fn refusals() {
        use Rejection::*;
        let cases = [
            ("/..", AboveRoot),
            ("/a/../..", AboveRoot),
            ("/%2e%2e", AboveRoot),
            ("/./..", AboveRoot),
            ("/a%2fb", EscapedSlash),
            ("/a%2Fb", EscapedSlash),
            ("/a%5cb", EscapedSlash),
            ("/a%5C..%5Cb", EscapedSlash),
            ("/a\\b", Backslash),
            ("/open;x/../admin", PathParameter),
            ("/admin;x", PathParameter),
            ("/a/..;/b", PathParameter),
            ("/a%2", BadEscape),
            ("/a%zz", BadEscape),
            ("/a%+1", BadEscape),
            ("/a%", BadEscape),
            ("/%252e%252e", DoubleEncoded),
            ("/%25%32%65", DoubleEncoded),
            ("/%ff", NotUtf8),
            ("/%c0%ae%c0%ae", NotUtf8),
            ("/%e0%80%ae", NotUtf8),
            // A character split by a slash, whether or not a dot segment rejoins it.
            ("/%cc/%8e", NotUtf8),
            ("/%cc//%8e", NotUtf8),
            ("/%cc/x/../%8e", NotUtf8),
            ("/a%00b", ControlCharacter),
            ("/a%0d%0a", ControlCharacter),
            ("/a%7f", ControlCharacter),
            ("/a%c2%85", ControlCharacter),
            ("/%ef%bc%8e%ef%bc%8e/admin", LookAlike),
            ("/a%ef%bc%8fb", LookAlike),
            ("/a\u{e9}", NotAscii),
            ("a/b", NotAbsolute),
            ("", NotAbsolute),
        ];
        for (raw, want) in cases {
            assert_eq!(strict(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn options() {
        let keep = Options {
            escaped_slashes: EscapedSlashes::Keep,
            merge_slashes: false,
        };
        let cases = [
            ("/a%2fb", "/a%2Fb"),
            ("/a%5cb", "/a%5Cb"),
            ("/a/..%2f..%2fb", "/a/..%2F..%2Fb"),
            ("/a//b", "/a//b"),
            ("//", "//"),
            ("/a//..", "/a/"),
            ("/a/b/../../c", "/c"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalise_path(raw, &keep).as_deref(), Ok(want), "{raw}");
        }
        assert!(has_escaped_slash("/a%2Fb") && has_escaped_slash("/a%5Cb"));
        assert!(!has_escaped_slash("/a/b%2A"));
        assert_eq!(normalise_path("/a\\b", &keep), Err(Rejection::Backslash));
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2Fb%2e+c", false), "a/b.+c");
        assert_eq!(percent_decode("a%2Fb%2e+c", true), "a/b. c");
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
        assert_eq!(percent_decode("%C3%A9%", false), "\u{e9}%");
    }
}

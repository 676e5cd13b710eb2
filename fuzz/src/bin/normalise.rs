//! The path normaliser: any path gets an answer without a panic, and an accepted path is
//! canonical: normalising it again changes nothing, it has no dot segment, never climbs
//! above the root, and holds an encoded slash only when the options keep them.
#![no_main]

use gateway::{
    config::EscapedSlashes,
    proxy::normalise::{Options, normalise_path},
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&flags, path)) = data.split_first() else {
        return;
    };
    let Ok(raw) = std::str::from_utf8(path) else {
        return;
    };
    let options = Options {
        escaped_slashes: match flags & 1 {
            0 => EscapedSlashes::Reject,
            _ => EscapedSlashes::Keep,
        },
        merge_slashes: flags & 2 != 0,
    };
    let Ok(normal) = normalise_path(raw, &options) else {
        return;
    };
    if normal == "*" {
        return;
    }
    assert_eq!(
        normalise_path(&normal, &options).as_deref(),
        Ok(normal.as_str()),
        "not idempotent: {raw:?} gave {normal:?}"
    );
    assert!(normal.starts_with('/'), "{raw:?} gave {normal:?}");
    let segments: Vec<&str> = normal[1..].split('/').collect();
    assert!(
        !segments.iter().any(|s| *s == "." || *s == ".."),
        "a dot segment left: {raw:?} gave {normal:?}"
    );
    assert!(
        !normal.contains('\\') && !normal.contains(';'),
        "{normal:?}"
    );
    if options.merge_slashes {
        assert!(!normal.contains("//"), "{raw:?} gave {normal:?}");
    }
    if options.escaped_slashes == EscapedSlashes::Reject {
        let upper = normal.to_ascii_uppercase();
        assert!(
            !upper.contains("%2F") && !upper.contains("%5C"),
            "{raw:?} gave {normal:?}"
        );
    }
});

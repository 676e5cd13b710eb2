//! Config parsing: any TOML text is a `Config` or an error naming the problem, never a panic.
#![no_main]

use gateway::config::Config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::parse(text);
    }
});

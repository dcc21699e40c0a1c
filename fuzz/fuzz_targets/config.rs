//! The config loader sees whatever a user typed: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relayup::config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = config::parse(text, std::path::Path::new("fuzz.toml"));
    }
});

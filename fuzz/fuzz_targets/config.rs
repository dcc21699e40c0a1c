//! The config loader sees whatever a user typed: errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/secret.rs"]
mod secret;

#[allow(dead_code)]
#[path = "../../src/protocol.rs"]
mod protocol;

#[allow(dead_code)]
#[path = "../../src/quote.rs"]
mod quote;

#[allow(dead_code)]
#[path = "../../src/config.rs"]
mod config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = config::parse(text, std::path::Path::new("fuzz.toml"));
    }
});

//! The .md loader on arbitrary bytes.
#![no_main]

#[path = "loader.rs"]
mod loader;

libfuzzer_sys::fuzz_target!(|data: &[u8]| loader::check("md", data));

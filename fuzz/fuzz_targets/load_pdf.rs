//! The .pdf loader on arbitrary bytes.
//!
//! The PDF library panics on some malformed files; the loader runs it on its own thread and turns a panic into
//! `invalid_pdf`, as the server does. So this target puts back the default panic hook (libfuzzer-sys installs
//! one that aborts on any panic, caught or not): only a panic that escapes the loader is a crash.
#![no_main]

#[path = "loader.rs"]
mod loader;

libfuzzer_sys::fuzz_target!(
    init: {
        let _ = std::panic::take_hook();
    },
    |data: &[u8]| loader::check("pdf", data)
);

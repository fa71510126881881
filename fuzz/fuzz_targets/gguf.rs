//! A GGUF model file on arbitrary bytes: the header, the config and the tokenizer built from its metadata are
//! read or refused with an error naming the file; nothing panics, aborts or allocates what the file cannot hold.
//!
//! `GgufFile::open` runs candle's header reader under `catch_unwind`, so this target puts back the default
//! panic hook (libfuzzer-sys installs one that aborts on any panic, caught or not): only a panic that escapes is
//! a crash. An allocation the file cannot back still aborts, as it would in the server.
#![no_main]

use std::io::Write;

use engram_engine::internals::model::{gguf::GgufFile, gguf_tokenizer};

libfuzzer_sys::fuzz_target!(init: { let _ = std::panic::take_hook(); }, |data: &[u8]| {
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(data).expect("write the input");
    let Ok(gguf) = GgufFile::open(file.path()) else {
        return;
    };
    if let Ok(config) = gguf.config() {
        let _ = gguf.weights(&config);
    }
    if let Ok(tokenizer) = gguf_tokenizer::tokenizer(&gguf) {
        let _ = tokenizer.encode("Hello, world! 123", true);
    }
});

//! A Hugging Face `config.json` on arbitrary bytes: read and validated, or refused with an error.
#![no_main]

use engram_engine::internals::model::ModelConfig;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(json) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = ModelConfig::from_json(json, std::path::Path::new("config.json")) {
        if config.validate().is_ok() {
            // What the engine computes from a valid config must not overflow or divide by zero.
            let _ = (config.q_dim(), config.kv_dim(), config.param_count());
            assert_eq!(config.rope_inv_freq().len(), config.head_dim / 2);
        }
    }
});

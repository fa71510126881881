//! Shared by the loader targets: load `data` as a file with extension `ext` and check what any loader promises.

use engram_formats::loaders::{load_file_with, LoadLimits};

/// Loads `data` as `fuzz.{ext}`: it must return documents or an error with a stable code, never panic, and every
/// document it returns must carry the media type of its extension.
pub fn check(ext: &str, data: &[u8]) {
    let name = format!("fuzz.{ext}");
    let limits = LoadLimits {
        max_nesting_depth: 64,
    };
    match load_file_with(&name, data, &limits) {
        Ok(docs) => {
            for doc in docs {
                assert!(!doc.media_type.is_empty());
                assert!(doc.source.is_some());
            }
        }
        Err(e) => {
            assert!(!e.code().is_empty());
            assert!(!e.to_string().is_empty());
        }
    }
}

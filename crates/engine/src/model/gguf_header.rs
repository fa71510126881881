//! A bounds walk over a GGUF header, run before candle's reader sees the file. candle's reader trusts the lengths
//! in the header: it allocates a string, an array or a dimension list of whatever size the file claims and
//! recurses into nested arrays. A malformed or hostile file could then abort the process (an allocation of
//! terabytes) or overflow its stack. This walk reads the same structure without allocating, and refuses a length
//! that the rest of the file cannot hold, arrays nested deeper than [`MAX_ARRAY_NESTING`] and tensors of more than
//! [`MAX_DIMS`] dimensions. Files it does not recognise (another magic, an unknown version) are left to candle's
//! reader, which refuses them with an error.

use std::io::{Read, Seek, SeekFrom};

/// Deepest nesting of metadata arrays accepted (real files use arrays of scalars or strings: depth 1).
pub const MAX_ARRAY_NESTING: usize = 4;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// Walks the header of the GGUF file read by `reader` (`file_len` bytes long) from its start.
pub fn check<R: Read + Seek>(reader: &mut R, file_len: u64) -> Result<(), String> {
    let mut walk = Walk {
        reader,
        pos: 0,
        len: file_len,
        wide: true,
    };
    let magic = walk.u32()?;
    if magic != u32::from_le_bytes(*b"GGUF") {
        return Ok(());
    }
    walk.wide = match walk.u32()? {
        1 => false,
        2 | 3 => true,
        _ => return Ok(()),
    };
    let tensors = walk.count()?;
    let entries = walk.count()?;
    for _ in 0..entries {
        walk.string("a metadata key")?;
        let kind = walk.u32()?;
        walk.value(kind, 0)?;
    }
    for _ in 0..tensors {
        walk.string("a tensor name")?;
        let dims = walk.u32()?;
        if dims > MAX_DIMS {
            return Err(format!(
                "a tensor has {dims} dimensions (at most {MAX_DIMS})"
            ));
        }
        walk.skip(
            u64::from(dims) * if walk.wide { 8 } else { 4 },
            "tensor dimensions",
        )?;
        walk.skip(4 + 8, "a tensor type and offset")?;
    }
    Ok(())
}

struct Walk<'a, R> {
    reader: &'a mut R,
    pos: u64,
    len: u64,
    /// Version 2 and 3 lengths are u64; version 1's are u32.
    wide: bool,
}

impl<R: Read + Seek> Walk<'_, R> {
    fn u32(&mut self) -> Result<u32, String> {
        let mut b = [0u8; 4];
        self.reader
            .read_exact(&mut b)
            .map_err(|_| "the header ends early".to_string())?;
        self.pos += 4;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut b = [0u8; 8];
        self.reader
            .read_exact(&mut b)
            .map_err(|_| "the header ends early".to_string())?;
        self.pos += 8;
        Ok(u64::from_le_bytes(b))
    }

    /// A length or count, in the version's width.
    fn count(&mut self) -> Result<u64, String> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Skips `n` bytes that must lie inside the file.
    fn skip(&mut self, n: u64, what: &str) -> Result<(), String> {
        if n > self.remaining() {
            return Err(format!(
                "{what} of {n} bytes at byte {} runs past the end of the file ({} bytes)",
                self.pos, self.len
            ));
        }
        let to = i64::try_from(n).map_err(|_| format!("{what} is too long"))?;
        self.reader
            .seek(SeekFrom::Current(to))
            .map_err(|e| e.to_string())?;
        self.pos += n;
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<(), String> {
        let n = self.count()?;
        self.skip(n, what)
    }

    /// A metadata value of type `kind`, inside `depth` arrays.
    fn value(&mut self, kind: u32, depth: usize) -> Result<(), String> {
        match kind {
            0 | 1 | 7 => self.skip(1, "a value"),
            2 | 3 => self.skip(2, "a value"),
            4..=6 => self.skip(4, "a value"),
            10..=12 => self.skip(8, "a value"),
            8 => self.string("a string value"),
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(format!(
                        "metadata arrays nest deeper than {MAX_ARRAY_NESTING}"
                    ));
                }
                let item = self.u32()?;
                let n = self.count()?;
                let least = match item {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    10..=12 => 8,
                    8 => {
                        if self.wide {
                            8
                        } else {
                            4
                        }
                    }
                    9 => 4 + if self.wide { 8 } else { 4 },
                    _ => return Err(format!("unknown metadata value type {item}")),
                };
                if n.saturating_mul(least) > self.remaining() {
                    return Err(format!(
                        "an array of {n} values at byte {} runs past the end of the file ({} bytes)",
                        self.pos, self.len
                    ));
                }
                if matches!(item, 8 | 9) {
                    for _ in 0..n {
                        self.value(item, depth + 1)?;
                    }
                    Ok(())
                } else {
                    self.skip(n * least, "an array")
                }
            }
            _ => Err(format!("unknown metadata value type {kind}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn header(version: u32, tensors: u64, entries: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(entries.to_le_bytes());
        b
    }

    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }

    fn run(bytes: &[u8]) -> Result<(), String> {
        check(&mut Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn a_well_formed_header_passes() {
        let mut b = header(3, 1, 2);
        string(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        string(&mut b, "llama");
        string(&mut b, "tokenizer.ggml.tokens");
        b.extend(9u32.to_le_bytes());
        b.extend(8u32.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        string(&mut b, "a");
        string(&mut b, "b");
        string(&mut b, "token_embd.weight");
        b.extend(2u32.to_le_bytes());
        b.extend(4u64.to_le_bytes());
        b.extend(32u64.to_le_bytes());
        b.extend(0u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        assert_eq!(run(&b), Ok(()));
    }

    #[test]
    fn lengths_past_the_end_are_refused() {
        let mut b = header(3, 0, 1);
        b.extend((1u64 << 40).to_le_bytes()); // a key of a terabyte
        assert!(run(&b).unwrap_err().contains("past the end"));

        let mut b = header(3, 0, 1);
        string(&mut b, "k");
        b.extend(9u32.to_le_bytes());
        b.extend(10u32.to_le_bytes());
        b.extend((1u64 << 50).to_le_bytes()); // 2^50 u64 values
        assert!(run(&b).unwrap_err().contains("past the end"));
    }

    #[test]
    fn deep_arrays_and_many_dimensions_are_refused() {
        let mut b = header(3, 0, 1);
        string(&mut b, "k");
        b.extend(9u32.to_le_bytes());
        for _ in 0..1000 {
            b.extend(9u32.to_le_bytes());
            b.extend(1u64.to_le_bytes());
        }
        assert!(run(&b).unwrap_err().contains("nest deeper"));

        let mut b = header(3, 1, 0);
        string(&mut b, "t");
        b.extend(u32::MAX.to_le_bytes());
        assert!(run(&b).unwrap_err().contains("dimensions"));
    }

    #[test]
    fn other_files_are_left_to_candle() {
        assert_eq!(run(b"not a gguf file"), Ok(()));
        assert_eq!(run(&header(7, 0, 0)), Ok(()));
        assert!(run(b"GG").is_err(), "too short to hold a magic");
    }
}

//! Paged KV cache bookkeeping: which physical blocks hold which sequence's keys and values. The backend owns the
//! storage (`num_blocks × block_size` slots per layer); this module hands out block ids, maps token positions to
//! slots, and shares full prompt blocks between sequences with the same prefix.
//!
//! Prefix sharing: a full block is identified by its tokens and by the block before it, so a match means the whole
//! prefix up to and including the block is equal (an exact chain, no hash collisions). A block becomes shareable
//! only after [`KvCache::mark_computed`] says its KV has been written, so no sequence ever reads a block that is
//! still being filled. Shared blocks are full and immutable; a sequence appends only to its own blocks.

use std::collections::HashMap;

/// Shape of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCacheConfig {
    /// Tokens per block.
    pub block_size: usize,
    /// Physical blocks available.
    pub num_blocks: usize,
}

impl Default for KvCacheConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_blocks: 1024,
        }
    }
}

/// Free list and reference counts of the physical blocks.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    free: Vec<u32>,
    refs: Vec<u32>,
}

impl BlockAllocator {
    /// An allocator over blocks `0..num_blocks`, all free.
    pub fn new(num_blocks: usize) -> Self {
        Self {
            free: (0..num_blocks as u32).rev().collect(),
            refs: vec![0; num_blocks],
        }
    }

    /// Takes a free block (reference count 1), lowest ids first while none has been returned.
    pub fn allocate(&mut self) -> Option<u32> {
        let block = self.free.pop()?;
        self.refs[block as usize] = 1;
        Some(block)
    }

    /// Adds a user to an allocated block.
    pub fn retain(&mut self, block: u32) {
        debug_assert!(self.refs[block as usize] > 0, "retain of a free block");
        self.refs[block as usize] += 1;
    }

    /// Drops a user of a block; returns true when that was the last one and the block went back to the free list.
    pub fn release(&mut self, block: u32) -> bool {
        let refs = &mut self.refs[block as usize];
        debug_assert!(*refs > 0, "release of a free block");
        *refs = refs.saturating_sub(1);
        if *refs == 0 {
            self.free.push(block);
            true
        } else {
            false
        }
    }

    /// Users of a block (0 = free).
    pub fn ref_count(&self, block: u32) -> u32 {
        self.refs[block as usize]
    }

    /// Blocks on the free list.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// All blocks.
    pub fn total_blocks(&self) -> usize {
        self.refs.len()
    }
}

/// The blocks of one sequence, in position order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTable {
    /// Physical block ids: block `i` holds positions `i * block_size .. (i + 1) * block_size`.
    pub blocks: Vec<u32>,
    /// Tokens with a slot reserved (the prompt after [`KvCache::admit`], plus every appended token).
    pub len: usize,
}

impl BlockTable {
    /// Physical slot of a position: `block * block_size + pos % block_size`. Panics when `pos` has no block.
    pub fn slot(&self, pos: usize, block_size: usize) -> u32 {
        self.blocks[pos / block_size] * block_size as u32 + (pos % block_size) as u32
    }
}

/// Errors of the KV cache.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Not enough free blocks; nothing was allocated.
    #[error("KV cache full: {needed} blocks needed, {free} free")]
    OutOfBlocks {
        /// Blocks the request needed.
        needed: usize,
        /// Blocks free.
        free: usize,
    },
    /// The sequence would exceed the cache's total capacity.
    #[error("sequence of {tokens} tokens exceeds the KV cache capacity of {max}")]
    TooLong {
        /// Tokens requested.
        tokens: usize,
        /// Tokens the whole cache holds.
        max: usize,
    },
    /// No such sequence is admitted.
    #[error("unknown sequence {0}")]
    UnknownSequence(u64),
    /// The sequence is already admitted.
    #[error("sequence {0} is already admitted")]
    AlreadyAdmitted(u64),
    /// Positions beyond the slots reserved for the sequence.
    #[error("positions up to {end} requested, sequence {seq} has {len} slots")]
    OutOfRange {
        /// The sequence.
        seq: u64,
        /// One past the last position requested.
        end: usize,
        /// Slots reserved.
        len: usize,
    },
}

/// Occupancy of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvUsage {
    /// Blocks with at least one user.
    pub used_blocks: usize,
    /// All blocks.
    pub total_blocks: usize,
    /// Admitted sequences.
    pub sequences: usize,
}

/// A full block's identity: the block before it (none for the first) and its tokens.
type PrefixKey = (Option<u32>, Vec<u32>);

/// A sequence's table plus the prompt blocks not yet offered for sharing.
#[derive(Debug)]
struct Entry {
    table: BlockTable,
    /// Tokens of the prompt's full blocks (dropped once all are registered).
    prompt: Vec<u32>,
    /// Full prompt blocks already registered, reused or skipped.
    registered: usize,
}

/// Block tables of the live sequences over one allocator, with prefix sharing.
#[derive(Debug)]
pub struct KvCache {
    config: KvCacheConfig,
    allocator: BlockAllocator,
    entries: HashMap<u64, Entry>,
    prefix: HashMap<PrefixKey, u32>,
    /// The prefix key under which each block is registered, if any.
    keys: Vec<Option<PrefixKey>>,
}

impl KvCache {
    /// An empty cache. Panics when `block_size` is 0.
    pub fn new(config: KvCacheConfig) -> Self {
        assert!(config.block_size > 0, "block_size must be positive");
        Self {
            config,
            allocator: BlockAllocator::new(config.num_blocks),
            entries: HashMap::new(),
            prefix: HashMap::new(),
            keys: vec![None; config.num_blocks],
        }
    }

    /// The configuration.
    pub fn config(&self) -> KvCacheConfig {
        self.config
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.config.block_size
    }

    /// Tokens the whole cache holds.
    fn max_tokens(&self) -> usize {
        self.config.block_size * self.config.num_blocks
    }

    /// Whether free blocks now cover a prompt of `tokens` tokens plus one token of room (ignoring prefix reuse,
    /// so a true answer is never wrong).
    pub fn can_admit(&self, tokens: usize) -> bool {
        (tokens + 1).div_ceil(self.config.block_size) <= self.allocator.free_blocks()
    }

    /// Reserves slots for a whole prompt and returns how many leading tokens are already cached (shared full
    /// blocks of an identical prefix; always fewer than the prompt, so the last token is computed and yields
    /// logits). All or nothing: on error nothing changes.
    pub fn admit(&mut self, seq: u64, prompt: &[u32]) -> Result<usize, KvError> {
        if self.entries.contains_key(&seq) {
            return Err(KvError::AlreadyAdmitted(seq));
        }
        if prompt.len() > self.max_tokens() {
            return Err(KvError::TooLong {
                tokens: prompt.len(),
                max: self.max_tokens(),
            });
        }
        let bs = self.config.block_size;
        let mut blocks = Vec::with_capacity(prompt.len().div_ceil(bs));
        let mut parent = None;
        for chunk in prompt[..prompt.len().saturating_sub(1)].chunks_exact(bs) {
            match self.prefix.get(&(parent, chunk.to_vec())) {
                Some(&block) => {
                    blocks.push(block);
                    parent = Some(block);
                }
                None => break,
            }
        }
        let reused = blocks.len();
        let needed = prompt.len().div_ceil(bs) - reused;
        let free = self.allocator.free_blocks();
        if needed > free {
            return Err(KvError::OutOfBlocks { needed, free });
        }
        for &block in &blocks {
            self.allocator.retain(block);
        }
        blocks.extend((0..needed).filter_map(|_| self.allocator.allocate()));
        let full = prompt.len() / bs;
        let entry = Entry {
            table: BlockTable {
                blocks,
                len: prompt.len(),
            },
            prompt: if reused < full {
                prompt[..full * bs].to_vec()
            } else {
                Vec::new()
            },
            registered: reused,
        };
        self.entries.insert(seq, entry);
        Ok(reused * bs)
    }

    /// Reserves slots for `tokens` tokens of a sequence whose keys and values must never be shared: it reuses no
    /// cached block and none of its blocks is ever offered to another sequence (a passage encoded after a prefix
    /// at shifted positions, say, whose tokens alone say nothing of its context). All or nothing.
    pub fn reserve(&mut self, seq: u64, tokens: usize) -> Result<(), KvError> {
        if self.entries.contains_key(&seq) {
            return Err(KvError::AlreadyAdmitted(seq));
        }
        if tokens > self.max_tokens() {
            return Err(KvError::TooLong {
                tokens,
                max: self.max_tokens(),
            });
        }
        let needed = tokens.div_ceil(self.config.block_size);
        let free = self.allocator.free_blocks();
        if needed > free {
            return Err(KvError::OutOfBlocks { needed, free });
        }
        let blocks = (0..needed)
            .filter_map(|_| self.allocator.allocate())
            .collect();
        let entry = Entry {
            table: BlockTable {
                blocks,
                len: tokens,
            },
            prompt: Vec::new(),
            registered: 0,
        };
        self.entries.insert(seq, entry);
        Ok(())
    }

    /// Records that the KV of the sequence's first `tokens` prompt tokens is written, making its full prompt blocks
    /// in that range shareable with later sequences. Call after each prefill chunk; without it nothing is shared.
    pub fn mark_computed(&mut self, seq: u64, tokens: usize) -> Result<(), KvError> {
        let bs = self.config.block_size;
        let entry = self
            .entries
            .get_mut(&seq)
            .ok_or(KvError::UnknownSequence(seq))?;
        let full = entry.prompt.len() / bs;
        let upto = (tokens / bs).min(full);
        while entry.registered < upto {
            let i = entry.registered;
            let block = entry.table.blocks[i];
            let parent = i.checked_sub(1).map(|p| entry.table.blocks[p]);
            let key = (parent, entry.prompt[i * bs..(i + 1) * bs].to_vec());
            if self.prefix.contains_key(&key) {
                // An identical block of another sequence is already shared; later blocks chain from ours, which
                // no lookup reaches, so stop offering this sequence's blocks.
                entry.registered = full;
                break;
            }
            self.prefix.insert(key.clone(), block);
            self.keys[block as usize] = Some(key);
            entry.registered += 1;
        }
        if entry.registered >= full {
            entry.prompt = Vec::new();
        }
        Ok(())
    }

    /// Reserves slots for the sequence's next `n` tokens, allocating blocks as needed, and returns them. All or
    /// nothing: on error nothing changes.
    pub fn append_slots(&mut self, seq: u64, n: usize) -> Result<Vec<u32>, KvError> {
        let bs = self.config.block_size;
        let max = self.max_tokens();
        let entry = self
            .entries
            .get_mut(&seq)
            .ok_or(KvError::UnknownSequence(seq))?;
        let start = entry.table.len;
        if start + n > max {
            return Err(KvError::TooLong {
                tokens: start + n,
                max,
            });
        }
        let needed = (start + n).div_ceil(bs) - entry.table.blocks.len();
        let free = self.allocator.free_blocks();
        if needed > free {
            return Err(KvError::OutOfBlocks { needed, free });
        }
        let allocator = &mut self.allocator;
        entry
            .table
            .blocks
            .extend((0..needed).filter_map(|_| allocator.allocate()));
        entry.table.len = start + n;
        Ok((start..start + n)
            .map(|pos| entry.table.slot(pos, bs))
            .collect())
    }

    /// Shortens the sequence to its first `len` tokens (speculative decoding drops rejected proposals), freeing
    /// blocks past the new end. Only positions after the prompt are ever dropped, and those blocks are never
    /// shared. Errors when `len` is beyond the sequence's end.
    pub fn truncate(&mut self, seq: u64, len: usize) -> Result<(), KvError> {
        let bs = self.config.block_size;
        let entry = self
            .entries
            .get_mut(&seq)
            .ok_or(KvError::UnknownSequence(seq))?;
        if len > entry.table.len {
            return Err(KvError::OutOfRange {
                seq,
                end: len,
                len: entry.table.len,
            });
        }
        let keep = len.div_ceil(bs);
        for block in entry.table.blocks.split_off(keep) {
            if self.allocator.release(block) {
                if let Some(key) = self.keys[block as usize].take() {
                    self.prefix.remove(&key);
                }
            }
        }
        entry.table.len = len;
        Ok(())
    }

    /// Slots of positions `start..start + n`, which must already be reserved.
    pub fn slots_for(&self, seq: u64, start: usize, n: usize) -> Result<Vec<u32>, KvError> {
        let table = self.table(seq).ok_or(KvError::UnknownSequence(seq))?;
        if start + n > table.len {
            return Err(KvError::OutOfRange {
                seq,
                end: start + n,
                len: table.len,
            });
        }
        let bs = self.config.block_size;
        Ok((start..start + n).map(|pos| table.slot(pos, bs)).collect())
    }

    /// The block table of a sequence.
    pub fn table(&self, seq: u64) -> Option<&BlockTable> {
        self.entries.get(&seq).map(|entry| &entry.table)
    }

    /// Drops a sequence: each of its blocks loses a user and is freed (and unshared) when that was the last.
    /// Unknown ids are ignored.
    pub fn release(&mut self, seq: u64) {
        let Some(entry) = self.entries.remove(&seq) else {
            return;
        };
        for &block in &entry.table.blocks {
            if self.allocator.release(block) {
                if let Some(key) = self.keys[block as usize].take() {
                    self.prefix.remove(&key);
                }
            }
        }
    }

    /// Current occupancy.
    pub fn usage(&self) -> KvUsage {
        KvUsage {
            used_blocks: self.allocator.total_blocks() - self.allocator.free_blocks(),
            total_blocks: self.allocator.total_blocks(),
            sequences: self.entries.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepack::TestRng as Rng;

    fn cache(block_size: usize, num_blocks: usize) -> KvCache {
        KvCache::new(KvCacheConfig {
            block_size,
            num_blocks,
        })
    }

    #[test]
    fn truncate_frees_the_blocks_past_the_new_end_and_keeps_the_rest() {
        let mut c = cache(4, 8);
        c.admit(1, &[1, 2, 3, 4, 5]).unwrap();
        c.append_slots(1, 7).unwrap(); // 12 tokens: 3 blocks
        assert_eq!(c.usage().used_blocks, 3);
        let before = c.table(1).unwrap().blocks.clone();
        c.truncate(1, 6).unwrap();
        assert_eq!(c.table(1).unwrap().len, 6);
        assert_eq!(c.table(1).unwrap().blocks, before[..2].to_vec());
        assert_eq!(c.usage().used_blocks, 2);
        // Appending again reuses freed blocks and continues at position 6.
        let slots = c.append_slots(1, 3).unwrap();
        assert_eq!(slots[0], c.table(1).unwrap().slot(6, 4));
        assert!(matches!(c.truncate(1, 10), Err(KvError::OutOfRange { .. })));
        assert!(matches!(c.truncate(9, 1), Err(KvError::UnknownSequence(9))));
    }

    #[test]
    fn reserved_blocks_are_never_shared_or_reused() {
        let mut c = cache(4, 8);
        c.admit(1, &[1, 2, 3, 4, 5]).unwrap();
        c.mark_computed(1, 5).unwrap();
        // The same tokens reserved privately reuse nothing, and offer nothing to a later identical prompt.
        c.reserve(2, 5).unwrap();
        assert_eq!(c.table(2).unwrap().len, 5);
        assert_eq!(c.usage().used_blocks, 4);
        assert!(c.mark_computed(2, 5).is_ok());
        c.release(1);
        assert_eq!(c.admit(3, &[1, 2, 3, 4, 5]).unwrap(), 0);
        assert!(matches!(c.reserve(2, 1), Err(KvError::AlreadyAdmitted(2))));
        assert!(matches!(
            c.reserve(4, 40),
            Err(KvError::TooLong { tokens: 40, .. })
        ));
        let used = c.usage().used_blocks;
        assert!(matches!(
            c.reserve(4, 4 * (8 - used) + 1),
            Err(KvError::OutOfBlocks { .. })
        ));
        assert_eq!(c.usage().used_blocks, used);
    }

    /// Reference counts equal table membership, free + used = total, and a block in several tables is a
    /// registered full block at the same index in each, whose users' prompts (those known) agree up to its end.
    fn check_invariants(kv: &KvCache, prompts: &HashMap<u64, Vec<u32>>) {
        let bs = kv.config.block_size;
        let mut users: HashMap<u32, Vec<(u64, usize)>> = HashMap::new();
        for (&seq, entry) in &kv.entries {
            let t = &entry.table;
            assert_eq!(t.blocks.len(), t.len.div_ceil(bs));
            for (i, &b) in t.blocks.iter().enumerate() {
                users.entry(b).or_default().push((seq, i));
            }
        }
        for b in 0..kv.config.num_blocks as u32 {
            let list = users.get(&b).map_or(&[][..], Vec::as_slice);
            assert_eq!(kv.allocator.ref_count(b) as usize, list.len(), "block {b}");
            if list.len() > 1 {
                assert!(
                    kv.keys[b as usize].is_some(),
                    "shared block {b} unregistered"
                );
                let end = (list[0].1 + 1) * bs;
                let known: Vec<&[u32]> = list
                    .iter()
                    .filter_map(|u| prompts.get(&u.0))
                    .map(|p| &p[..end])
                    .collect();
                assert!(
                    known.windows(2).all(|w| w[0] == w[1]),
                    "block {b} shared by different prefixes"
                );
                assert!(list.iter().all(|&(_, i)| i == list[0].1));
            }
        }
        let usage = kv.usage();
        assert_eq!(usage.used_blocks, users.len());
        assert_eq!(
            usage.used_blocks + kv.allocator.free_blocks(),
            usage.total_blocks
        );
        assert_eq!(kv.prefix.len(), kv.keys.iter().flatten().count());
    }

    #[test]
    fn slots_follow_blocks() {
        let mut kv = cache(4, 8);
        assert_eq!(kv.admit(1, &[1, 2, 3, 4, 5, 6]), Ok(0));
        let table = kv.table(1).unwrap().clone();
        assert_eq!(table.blocks, vec![0, 1]);
        assert_eq!(kv.slots_for(1, 0, 6).unwrap(), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(kv.append_slots(1, 3).unwrap(), vec![6, 7, 8]);
        assert_eq!(kv.table(1).unwrap().blocks, vec![0, 1, 2]);
        assert_eq!(kv.table(1).unwrap().slot(8, 4), 8);
        assert_eq!(
            kv.slots_for(1, 7, 3),
            Err(KvError::OutOfRange {
                seq: 1,
                end: 10,
                len: 9
            })
        );
        assert_eq!(kv.admit(1, &[1]), Err(KvError::AlreadyAdmitted(1)));
        assert_eq!(kv.append_slots(9, 1), Err(KvError::UnknownSequence(9)));
        assert_eq!(kv.slots_for(9, 0, 0), Err(KvError::UnknownSequence(9)));
        assert!(kv.mark_computed(9, 1).is_err());
        kv.release(1);
        kv.release(1);
        assert_eq!(kv.usage().used_blocks, 0);
        check_invariants(&kv, &HashMap::new());
    }

    #[test]
    fn out_of_blocks_and_too_long_change_nothing() {
        let mut kv = cache(4, 3);
        assert!(kv.can_admit(11));
        assert!(!kv.can_admit(12));
        assert_eq!(
            kv.admit(1, &[0; 13]),
            Err(KvError::TooLong {
                tokens: 13,
                max: 12
            })
        );
        kv.admit(1, &[0; 5]).unwrap();
        let err = kv.admit(2, &[7; 9]);
        assert_eq!(err, Err(KvError::OutOfBlocks { needed: 3, free: 1 }));
        kv.admit(2, &[7; 3]).unwrap();
        let err = kv.append_slots(1, 4);
        assert_eq!(err, Err(KvError::OutOfBlocks { needed: 1, free: 0 }));
        assert_eq!(kv.table(1).unwrap().len, 5);
        kv.release(2);
        assert_eq!(kv.append_slots(1, 7).unwrap().len(), 7);
        let err = kv.append_slots(1, 1);
        assert!(matches!(err, Err(KvError::TooLong { .. })));
        assert_eq!(kv.usage().sequences, 1);
        check_invariants(&kv, &HashMap::new());
    }

    #[test]
    fn prefix_blocks_are_shared_once_computed_and_freed_by_the_last_user() {
        let mut kv = cache(4, 16);
        let a: Vec<u32> = (0..10).collect();
        assert_eq!(kv.admit(1, &a), Ok(0));
        // Not yet computed: nothing to share.
        assert_eq!(kv.admit(2, &a), Ok(0));
        kv.release(2);
        kv.mark_computed(1, 10).unwrap();
        let mut b = a[..8].to_vec();
        b.extend([99, 98, 97]);
        assert_eq!(kv.admit(2, &b), Ok(8));
        let (ta, tb) = (kv.table(1).unwrap(), kv.table(2).unwrap());
        assert_eq!(ta.blocks[..2], tb.blocks[..2]);
        assert_ne!(ta.blocks[2], tb.blocks[2]);
        // A prompt of exactly the cached blocks still computes its last token: its last block is private.
        assert_eq!(kv.admit(3, &a[..8]), Ok(4));
        // A different first block shares nothing, even when later blocks match.
        let mut c = a.clone();
        c[0] = 50;
        assert_eq!(kv.admit(4, &c), Ok(0));
        check_invariants(&kv, &HashMap::new());
        let shared = kv.table(1).unwrap().blocks[0];
        assert_eq!(kv.allocator.ref_count(shared), 3);
        kv.release(1);
        kv.release(3);
        assert_eq!(kv.allocator.ref_count(shared), 1);
        assert_eq!(kv.admit(5, &a), Ok(8), "blocks of a live user stay shared");
        kv.release(2);
        kv.release(5);
        kv.release(4);
        assert_eq!(kv.usage().used_blocks, 0);
        assert!(kv.prefix.is_empty());
        assert_eq!(kv.admit(6, &a), Ok(0), "freed blocks are no longer shared");
        check_invariants(&kv, &HashMap::new());
    }

    #[test]
    fn slots_are_unique_outside_shared_prefix_blocks() {
        let mut kv = cache(2, 64);
        kv.admit(1, &[1, 2, 3, 4, 5]).unwrap();
        kv.mark_computed(1, 5).unwrap();
        kv.admit(2, &[1, 2, 3, 4, 6]).unwrap();
        kv.admit(3, &[8, 8, 8]).unwrap();
        for seq in 1..=3 {
            kv.append_slots(seq, 3).unwrap();
        }
        let mut owner: HashMap<u32, (u64, usize)> = HashMap::new();
        for seq in 1..=3u64 {
            let len = kv.table(seq).unwrap().len;
            for (pos, slot) in kv.slots_for(seq, 0, len).unwrap().into_iter().enumerate() {
                if let Some(&(other, p)) = owner.get(&slot) {
                    assert!(p == pos && pos < 4, "slot {slot} of {seq} and {other}");
                    assert!(kv.keys[slot as usize / 2].is_some());
                }
                owner.insert(slot, (seq, pos));
            }
        }
    }

    #[test]
    fn random_operations_conserve_blocks() {
        let mut hits = 0;
        for seed in 0..20 {
            let mut rng = Rng(seed);
            let bs = 1 + rng.below(6);
            let mut kv = cache(bs, 8 + rng.below(40));
            let mut live: Vec<u64> = Vec::new();
            let mut prompts = HashMap::new();
            let mut next = 0u64;
            // Prompts come from a few families so prefixes repeat.
            let families: Vec<Vec<u32>> = (0..3)
                .map(|_| (0..40).map(|_| rng.below(4) as u32).collect())
                .collect();
            for _ in 0..600 {
                match rng.below(5) {
                    0 | 1 => {
                        let family = &families[rng.below(3)];
                        let mut prompt = family[..rng.below(30)].to_vec();
                        prompt.extend((0..rng.below(6)).map(|_| rng.below(4) as u32));
                        let before = kv.usage();
                        match kv.admit(next, &prompt) {
                            Ok(cached) => {
                                assert!(cached < prompt.len().max(1) && cached % bs == 0);
                                live.push(next);
                                hits += (cached > 0) as usize;
                                let done = rng.below(prompt.len() + 1);
                                kv.mark_computed(next, done).unwrap();
                                prompts.insert(next, prompt);
                            }
                            Err(KvError::OutOfBlocks { .. } | KvError::TooLong { .. }) => {
                                assert_eq!(kv.usage(), before);
                            }
                            Err(e) => panic!("{e}"),
                        }
                        next += 1;
                    }
                    2 if !live.is_empty() => {
                        let seq = live[rng.below(live.len())];
                        let before = kv.table(seq).unwrap().clone();
                        let n = rng.below(2 * bs + 1);
                        match kv.append_slots(seq, n) {
                            Ok(slots) => assert_eq!(slots.len(), n),
                            Err(_) => assert_eq!(kv.table(seq).unwrap(), &before),
                        }
                    }
                    _ if !live.is_empty() => {
                        let seq = live.swap_remove(rng.below(live.len()));
                        kv.release(seq);
                        assert!(kv.table(seq).is_none());
                    }
                    _ => {}
                }
                check_invariants(&kv, &prompts);
            }
            for seq in live.drain(..) {
                kv.release(seq);
            }
            assert_eq!(kv.usage().used_blocks, 0);
            assert!(kv.prefix.is_empty());
        }
        assert!(hits > 100, "prefix reuse exercised: {hits}");
    }
}

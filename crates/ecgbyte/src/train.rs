//! BPE training with incremental pair counts.
//!
//! The corpus lives in one `u32` array: `SEP` before, between and after pieces, so a pair can never
//! straddle two pieces and no bound checks are needed. A token occupying symbol slots `[p, q)` keeps
//! its id in slot `p`; every other slot of the span is marked `SPAN | p`, and slot `q - 1` always
//! holds exactly that, so the token to the left of any start is one read away and the one to the
//! right is `p + len(id)` away: a linked list with no `prev`/`next` arrays (4 bytes per symbol).
//!
//! Every pair keeps its exact count and a sorted list of positions where it occurred (possibly
//! stale: a position is checked when used). Merging a pair visits only its own positions, in
//! increasing order (so overlapping runs like `aaa` merge left to right, as encoding does), and
//! updates the counts of the neighbouring pairs. A max-heap keyed by (count, smallest pair) picks the
//! next merge; entries are refreshed lazily. Total work is O(N log N) instead of O(merges x N), and
//! the result does not depend on the number of threads (only the initial count is parallel, and it
//! is exact).
//!
//! What keeps a merge of `(a, b)` into `new` cheap: every pair it creates contains `new`, so those are
//! found through two small arrays indexed by the other id, not the hash map; the occurrences that
//! `(x, a)` and `(b, x)` lose are summed per `x` and applied once at the end; the positions of the
//! created pairs are gathered first, so each list is allocated once at its final size (and the
//! initial lists likewise, from a counting pass); and stale positions are dropped by a branch-free
//! pass before the merge proper, as most listed positions are stale.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};

use fxhash::FxHashMap;
use rayon::prelude::*;

use crate::{validate_corpus, Error, NUM_SYMBOLS};

/// Piece separator (never a token id).
pub(crate) const SEP: u32 = 0x7FFF_FFFF;
/// High bit: this slot is inside a span; the low bits are the span's start.
pub(crate) const SPAN: u32 = 0x8000_0000;

/// What training learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Training {
    /// `(left, right)` for each merge; merge `k` creates id `26 + k`.
    pub merges: Vec<(u32, u32)>,
    /// How many times each merge was applied to the corpus.
    pub counts: Vec<u64>,
    /// Symbols in the corpus.
    pub symbols: usize,
    /// Tokens in the corpus after all merges.
    pub tokens: usize,
    /// The corpus as final token ids (pieces concatenated), if asked for.
    pub segmentation: Option<Vec<u32>>,
}

#[derive(Debug, Clone, Copy)]
pub struct TrainOptions {
    pub num_merges: usize,
    /// Stop when the most frequent pair occurs fewer times than this.
    pub min_count: u64,
    pub keep_segmentation: bool,
}

#[inline]
fn pair_key(left: u32, right: u32) -> u64 {
    ((left as u64) << 32) | right as u64
}

#[inline]
fn split_key(key: u64) -> (u32, u32) {
    ((key >> 32) as u32, key as u32)
}

/// Start of the token that ends just before slot `p` (a start).
#[inline]
pub(crate) fn left_start(tok: &[u32], p: usize) -> usize {
    let before = tok[p - 1];
    if before & SPAN != 0 {
        (before & !SPAN) as usize
    } else {
        p - 1
    }
}

/// Joins the token `a` at slot `p` and the token `b` right after it into `new`, if both are still
/// there (listed positions go stale as merges proceed); returns the slot after the joined token.
/// Only slots `p` and later change, so `left_start(tok, p)` and `tok[after]` read the neighbours.
#[inline]
pub(crate) fn join_at(
    tok: &mut [u32],
    p: usize,
    (a, b): (u32, u32),
    (len_a, len_b): (usize, usize),
    new: u32,
) -> Option<usize> {
    let j = p + len_a;
    if tok[p] != a || tok[j] != b {
        return None;
    }
    let after = j + len_b;
    tok[p] = new;
    tok[j] = SPAN | p as u32;
    tok[after - 1] = SPAN | p as u32;
    Some(after)
}

/// Per-pair records in parallel arrays, addressed by slot.
struct PairTable {
    index: FxHashMap<u64, u32>,
    keys: Vec<u64>,
    counts: Vec<i64>,
    positions: Vec<Vec<u32>>,
    /// During a merge creating `new`: slot of the pair `(new, x)` at `x`, of `(x, new)` at `x`
    /// (`NONE` if absent). Every pair a merge creates contains `new`, so these small arrays replace
    /// the index until the merge ends.
    new_left: Vec<u32>,
    new_right: Vec<u32>,
    /// First slot created by the current merge; how many positions each created pair gained, and
    /// those positions as `(slot, position)`, given to the pairs when the merge ends.
    created_from: u32,
    pushes: Vec<u32>,
    pending: Vec<(u32, u32)>,
    /// During a merge of `(a, b)`: occurrences lost by the pairs `(x, a)` and `(b, x)`, by `x`,
    /// applied when the merge ends (nothing reads those counts before).
    lost_before_a: Losses,
    lost_after_b: Losses,
}

const NONE: u32 = u32::MAX;

/// `lost` fewer occurrences of the pair in `slot`.
#[inline]
fn subtract(counts: &mut [i64], positions: &mut [Vec<u32>], slot: usize, lost: i64) {
    counts[slot] -= lost;
    debug_assert!(counts[slot] >= 0);
    if counts[slot] == 0 {
        // Every listed position is stale now: free them.
        positions[slot] = Vec::new();
    }
}

/// Occurrences lost during one merge by the pairs that pair some id with a fixed token.
struct Losses {
    by_id: Vec<u32>,
    /// The ids with a nonzero count, in first-loss order.
    ids: Vec<u32>,
}

impl Losses {
    fn new(vocab: usize) -> Self {
        Losses {
            by_id: vec![0; vocab],
            ids: Vec::new(),
        }
    }

    #[inline]
    fn add(&mut self, id: u32) {
        let lost = &mut self.by_id[id as usize];
        if *lost == 0 {
            self.ids.push(id);
        }
        *lost += 1;
    }

    /// Calls `apply(id, lost)` for every id that lost occurrences, and resets.
    fn drain(&mut self, mut apply: impl FnMut(u32, u32)) {
        for &id in &self.ids {
            apply(id, std::mem::take(&mut self.by_id[id as usize]));
        }
        self.ids.clear();
    }
}

impl PairTable {
    fn new(vocab: usize) -> Self {
        PairTable {
            index: FxHashMap::default(),
            keys: Vec::new(),
            counts: Vec::new(),
            positions: Vec::new(),
            new_left: vec![NONE; vocab],
            new_right: vec![NONE; vocab],
            created_from: 0,
            pushes: Vec::new(),
            pending: Vec::new(),
            lost_before_a: Losses::new(vocab),
            lost_after_b: Losses::new(vocab),
        }
    }

    fn push(&mut self, key: u64, count: i64, positions: Vec<u32>) -> u32 {
        self.keys.push(key);
        self.counts.push(count);
        self.positions.push(positions);
        (self.keys.len() - 1) as u32
    }

    /// Applies the occurrences that `(x, a)` and `(b, x)` lost in a merge of `(a, b)`.
    fn apply_losses(&mut self, a: u32, b: u32) {
        let PairTable {
            index,
            counts,
            positions,
            lost_before_a,
            lost_after_b,
            ..
        } = self;
        let mut lose = |key: u64, lost: u32| {
            subtract(counts, positions, index[&key] as usize, lost as i64);
        };
        lost_before_a.drain(|left, lost| lose(pair_key(left, a), lost));
        lost_after_b.drain(|right, lost| lose(pair_key(b, right), lost));
    }

    /// One occurrence less of the pair `(new, right)` made earlier in this merge.
    #[inline]
    fn decrement_new_left(&mut self, right: u32) {
        let slot = self.new_left[right as usize];
        debug_assert_ne!(slot, NONE);
        subtract(&mut self.counts, &mut self.positions, slot as usize, 1);
    }

    /// One occurrence more of `(left, right)`, which contains `new`; `(new, x)` lives in `new_left`.
    #[inline]
    fn increment_new(&mut self, left: u32, right: u32, new: u32, position: u32) {
        let cell = if left == new {
            &mut self.new_left[right as usize]
        } else {
            &mut self.new_right[left as usize]
        };
        if *cell == NONE {
            *cell = self.keys.len() as u32;
            self.keys.push(pair_key(left, right));
            self.counts.push(0);
            self.positions.push(Vec::new());
            self.pushes.push(0);
        }
        let slot = *cell;
        self.counts[slot as usize] += 1;
        self.pushes[(slot - self.created_from) as usize] += 1;
        self.pending.push((slot, position));
    }

    /// Starts a merge: pairs it creates get slots from here on.
    fn begin_merge(&mut self) {
        self.created_from = self.keys.len() as u32;
        self.pushes.clear();
        self.pending.clear();
    }

    /// Slots created by the current merge.
    fn created(&self) -> std::ops::Range<usize> {
        self.created_from as usize..self.keys.len()
    }

    /// Ends a merge: gives the pairs it created their position lists, each allocated once at its
    /// final size, files them in the index and clears the per-merge arrays.
    fn finish_merge(&mut self, new: u32) {
        for (slot, &pushes) in self.created().zip(&self.pushes) {
            if self.counts[slot] > 0 {
                self.positions[slot] = Vec::with_capacity(pushes as usize);
            }
        }
        for &(slot, position) in &self.pending {
            if self.counts[slot as usize] > 0 {
                self.positions[slot as usize].push(position);
            }
        }
        for slot in self.created() {
            self.index.insert(self.keys[slot], slot as u32);
            let (left, right) = split_key(self.keys[slot]);
            if left == new {
                self.new_left[right as usize] = NONE;
            } else {
                self.new_right[left as usize] = NONE;
            }
        }
    }
}

/// Keeps only the positions where `(a, b)` still starts, without branching on each one: most listed
/// positions are stale, and a mispredicted branch per cache miss would serialise the misses. Merging
/// still checks each kept position, since joining overlapping occurrences (`aaa`) invalidates some.
fn drop_stale(positions: &mut Vec<u32>, tok: &[u32], (a, b): (u32, u32), len_a: usize) {
    let mut kept = 0;
    for i in 0..positions.len() {
        let p = positions[i] as usize;
        positions[kept] = p as u32;
        let live = (tok[p] == a) & (tok.get(p + len_a) == Some(&b));
        kept += live as usize;
    }
    positions.truncate(kept);
}

/// The corpus as one `u32` array with separators (see the module comment).
fn layout(symbols: &[u8], pieces: &[usize]) -> Vec<u32> {
    let mut tok = Vec::with_capacity(symbols.len() + pieces.len() + 1);
    tok.push(SEP);
    let mut start = 0;
    for &len in pieces {
        tok.extend(symbols[start..start + len].iter().map(|&c| c as u32));
        tok.push(SEP);
        start += len;
    }
    tok
}

/// Sorted positions of every adjacent symbol pair (index `left * 26 + right`), built in parallel
/// chunks: a first pass counts each chunk's pairs, so every list is allocated once at its exact size
/// and each chunk then writes its own disjoint part of it.
fn initial_pairs(tok: &[u32]) -> Vec<Vec<u32>> {
    const BASE: usize = (NUM_SYMBOLS * NUM_SYMBOLS) as usize;
    let slots = tok.len().saturating_sub(1);
    let chunk = (slots / (4 * rayon::current_num_threads()).max(1)).max(1 << 16);
    let ranges: Vec<std::ops::Range<usize>> = (0..slots)
        .step_by(chunk)
        .map(|start| start..(start + chunk).min(slots))
        .collect();
    let symbol_pair = |p: usize| {
        let (a, b) = (tok[p], tok[p + 1]);
        (a < NUM_SYMBOLS && b < NUM_SYMBOLS).then(|| (a * NUM_SYMBOLS + b) as usize)
    };
    let chunk_counts: Vec<Vec<usize>> = ranges
        .par_iter()
        .map(|range| {
            let mut counts = vec![0usize; BASE];
            for q in range.clone().filter_map(symbol_pair) {
                counts[q] += 1;
            }
            counts
        })
        .collect();
    let mut lists: Vec<Vec<u32>> = (0..BASE)
        .map(|q| vec![0; chunk_counts.iter().map(|counts| counts[q]).sum()])
        .collect();
    // Cut every list into one part per chunk, in chunk order.
    let mut parts: Vec<Vec<&mut [u32]>> = ranges.iter().map(|_| Vec::with_capacity(BASE)).collect();
    for (q, list) in lists.iter_mut().enumerate() {
        let mut rest = list.as_mut_slice();
        for (chunk_parts, counts) in parts.iter_mut().zip(&chunk_counts) {
            let (part, tail) = rest.split_at_mut(counts[q]);
            chunk_parts.push(part);
            rest = tail;
        }
    }
    ranges
        .par_iter()
        .zip(parts)
        .for_each(|(range, mut chunk_parts)| {
            let mut filled = vec![0usize; BASE];
            for p in range.clone() {
                if let Some(q) = symbol_pair(p) {
                    chunk_parts[q][filled[q]] = p as u32;
                    filled[q] += 1;
                }
            }
        });
    lists
}

/// Learns up to `options.num_merges` merges. `done` counts merges as they are made (for progress).
pub fn train(
    symbols: &[u8],
    pieces: &[usize],
    options: TrainOptions,
    done: &AtomicUsize,
) -> Result<Training, Error> {
    done.store(0, Ordering::Relaxed);
    validate_corpus(symbols, pieces)?;
    if symbols.is_empty() {
        return Err(Error::Empty);
    }
    if symbols.len() + pieces.len() + 1 >= SEP as usize {
        return Err(Error::TooLarge {
            symbols: symbols.len(),
        });
    }
    let mut tok = layout(symbols, pieces);

    let mut table = PairTable::new(NUM_SYMBOLS as usize + options.num_merges);
    let mut heap: BinaryHeap<(i64, Reverse<u64>)> = BinaryHeap::new();
    for (q, positions) in initial_pairs(&tok).into_iter().enumerate() {
        if positions.is_empty() {
            continue;
        }
        let (left, right) = (q as u32 / NUM_SYMBOLS, q as u32 % NUM_SYMBOLS);
        let key = pair_key(left, right);
        let count = positions.len() as i64;
        let slot = table.push(key, count, positions);
        table.index.insert(key, slot);
        heap.push((count, Reverse(key)));
    }

    let mut lens: Vec<u32> = vec![1; NUM_SYMBOLS as usize];
    let mut merges = Vec::with_capacity(options.num_merges);
    let mut counts = Vec::with_capacity(options.num_merges);
    while merges.len() < options.num_merges {
        let Some((count, Reverse(key))) = heap.pop() else {
            break;
        };
        let Some(&slot) = table.index.get(&key) else {
            continue;
        };
        let slot = slot as usize;
        let current = table.counts[slot];
        if current != count {
            // Stale entry: the pair lost occurrences since it was pushed.
            if current > 0 {
                heap.push((current, Reverse(key)));
            }
            continue;
        }
        if (count as u64) < options.min_count.max(1) {
            break;
        }
        let step = merges.len() as u32;
        let new = NUM_SYMBOLS + step;
        let (a, b) = split_key(key);
        let (len_a, len_b) = (lens[a as usize] as usize, lens[b as usize] as usize);
        lens.push((len_a + len_b) as u32);

        let mut positions = std::mem::take(&mut table.positions[slot]);
        // Sorted already: a list is filled in one merge (or by the initial count), left to right.
        debug_assert!(positions.windows(2).all(|w| w[0] < w[1]));
        drop_stale(&mut positions, &tok, (a, b), len_a);
        table.begin_merge();
        let mut applied: u64 = 0;
        for &p in &positions {
            let p = p as usize;
            let Some(after) = join_at(&mut tok, p, (a, b), (len_a, len_b), new) else {
                continue;
            };
            let left = left_start(&tok, p);
            let left_id = tok[left];
            if left_id != SEP {
                // The left neighbour may be `new` itself (a run like `abab`); the right one is not
                // merged yet, as positions go left to right.
                if left_id == new {
                    table.decrement_new_left(a);
                } else {
                    table.lost_before_a.add(left_id);
                }
                table.increment_new(left_id, new, new, left as u32);
            }
            let right_id = tok[after];
            if right_id != SEP {
                table.lost_after_b.add(right_id);
                table.increment_new(new, right_id, new, p as u32);
            }
            table.counts[slot] -= 1;
            applied += 1;
        }
        drop(positions);
        table.apply_losses(a, b);
        debug_assert_eq!(table.counts[slot], 0);
        table.index.remove(&key);
        table.positions[slot] = Vec::new();
        table.finish_merge(new);
        // Push every pair that gained occurrences (all contain `new`) with its final count.
        for created in table.created() {
            let count = table.counts[created];
            if count > 0 {
                heap.push((count, Reverse(table.keys[created])));
            }
        }
        merges.push((a, b));
        counts.push(applied);
        done.store(merges.len(), Ordering::Relaxed);
    }

    let applied_total: u64 = counts.iter().sum();
    let segmentation = options.keep_segmentation.then(|| {
        tok.iter()
            .copied()
            .filter(|&t| t & SPAN == 0 && t != SEP)
            .collect::<Vec<u32>>()
    });
    Ok(Training {
        merges,
        counts,
        symbols: symbols.len(),
        tokens: symbols.len() - applied_total as usize,
        segmentation,
    })
}

//! BPE training with incremental pair counts.
//!
//! The corpus lives in one `u32` array: `SEP` before, between and after pieces, so a pair can never
//! straddle two pieces and no bound checks are needed. A token occupying symbol slots `[p, q)` keeps
//! its id in slot `p`; every other slot of the span is marked `SPAN | p`, and slot `q - 1` always
//! holds exactly that, so the token to the left of any start is one read away and the one to the
//! right is `p + len(id)` away: a linked list with no `prev`/`next` arrays (4 bytes per symbol).
//!
//! Every pair keeps its exact count and a list of positions where it occurred (possibly stale: a
//! position is checked when used). Merging a pair visits only its own positions, in increasing order
//! (so overlapping runs like `aaa` merge left to right, as encoding does), and updates the counts of
//! the neighbouring pairs. A max-heap keyed by (count, smallest pair) picks the next merge; entries
//! are refreshed lazily. Total work is O(N log N) instead of O(merges x N), and the result does not
//! depend on the number of threads (only the initial count is parallel, and it is exact).

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

struct Pair {
    key: u64,
    count: i64,
    positions: Vec<u32>,
    /// Last merge step that queued this pair for a heap push (avoids duplicate pushes).
    queued: u32,
}

struct PairTable {
    pairs: Vec<Pair>,
    index: FxHashMap<u64, u32>,
    touched: Vec<u32>,
}

impl PairTable {
    #[inline]
    fn decrement(&mut self, left: u32, right: u32) {
        let slot = self.index[&pair_key(left, right)] as usize;
        let pair = &mut self.pairs[slot];
        pair.count -= 1;
        debug_assert!(pair.count >= 0);
        if pair.count == 0 {
            // Every listed position is stale now: free them.
            pair.positions = Vec::new();
        }
    }

    #[inline]
    fn increment(&mut self, left: u32, right: u32, position: u32, step: u32) {
        let pairs = &mut self.pairs;
        let key = pair_key(left, right);
        let slot = *self.index.entry(key).or_insert_with(|| {
            pairs.push(Pair {
                key,
                count: 0,
                positions: Vec::new(),
                queued: u32::MAX,
            });
            (pairs.len() - 1) as u32
        });
        let pair = &mut self.pairs[slot as usize];
        pair.count += 1;
        pair.positions.push(position);
        if pair.queued != step {
            pair.queued = step;
            self.touched.push(slot);
        }
    }
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

/// Exact counts and sorted positions of every adjacent symbol pair, counted in parallel chunks.
fn initial_pairs(tok: &[u32]) -> Vec<Vec<u32>> {
    const BASE: usize = (NUM_SYMBOLS * NUM_SYMBOLS) as usize;
    let slots = tok.len().saturating_sub(1);
    let chunk = (slots / (4 * rayon::current_num_threads()).max(1)).max(1 << 16);
    let starts: Vec<usize> = (0..slots).step_by(chunk).collect();
    let per_chunk: Vec<Vec<Vec<u32>>> = starts
        .par_iter()
        .map(|&start| {
            let range = start..(start + chunk).min(slots);
            let mut counts = vec![0usize; BASE];
            for p in range.clone() {
                let (a, b) = (tok[p], tok[p + 1]);
                if a < NUM_SYMBOLS && b < NUM_SYMBOLS {
                    counts[(a * NUM_SYMBOLS + b) as usize] += 1;
                }
            }
            let mut lists: Vec<Vec<u32>> = counts.iter().map(|&n| Vec::with_capacity(n)).collect();
            for p in range {
                let (a, b) = (tok[p], tok[p + 1]);
                if a < NUM_SYMBOLS && b < NUM_SYMBOLS {
                    lists[(a * NUM_SYMBOLS + b) as usize].push(p as u32);
                }
            }
            lists
        })
        .collect();
    // Concatenate chunk lists pair by pair, freeing each chunk's part as soon as it is copied.
    let mut per_chunk = per_chunk;
    (0..BASE)
        .map(|q| {
            let total = per_chunk.iter().map(|lists| lists[q].len()).sum();
            let mut all = Vec::with_capacity(total);
            for lists in per_chunk.iter_mut() {
                all.extend_from_slice(&lists[q]);
                lists[q] = Vec::new();
            }
            all
        })
        .collect()
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

    let mut table = PairTable {
        pairs: Vec::new(),
        index: FxHashMap::default(),
        touched: Vec::new(),
    };
    let mut heap: BinaryHeap<(i64, Reverse<u64>)> = BinaryHeap::new();
    for (q, positions) in initial_pairs(&tok).into_iter().enumerate() {
        if positions.is_empty() {
            continue;
        }
        let key = pair_key(q as u32 / NUM_SYMBOLS, q as u32 % NUM_SYMBOLS);
        let count = positions.len() as i64;
        table.index.insert(key, table.pairs.len() as u32);
        table.pairs.push(Pair {
            key,
            count,
            positions,
            queued: u32::MAX,
        });
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
        let current = table.pairs[slot as usize].count;
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

        let mut positions = std::mem::take(&mut table.pairs[slot as usize].positions);
        positions.sort_unstable();
        table.touched.clear();
        let mut applied: u64 = 0;
        for &p in &positions {
            let p = p as usize;
            let Some(after) = join_at(&mut tok, p, (a, b), (len_a, len_b), new) else {
                continue;
            };
            let left = left_start(&tok, p);
            let left_id = tok[left];
            if left_id != SEP {
                table.decrement(left_id, a);
                table.increment(left_id, new, left as u32, step);
            }
            let right_id = tok[after];
            if right_id != SEP {
                table.decrement(b, right_id);
                table.increment(new, right_id, p as u32, step);
            }
            table.decrement(a, b);
            applied += 1;
        }
        drop(positions);
        debug_assert_eq!(table.pairs[slot as usize].count, 0);
        table.index.remove(&key);
        table.pairs[slot as usize].positions = Vec::new();
        // Push every pair that gained occurrences (all contain `new`) with its final count.
        for &touched in &table.touched {
            let pair = &table.pairs[touched as usize];
            if pair.count > 0 {
                heap.push((pair.count, Reverse(pair.key)));
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

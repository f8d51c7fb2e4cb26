//! Encoding symbol pieces into token ids: true BPE (merges in learned order) or the peer's greedy
//! longest match; decoding ids back to symbols.
//!
//! BPE: applying the merges one after another, each left to right over the whole piece, is the same
//! as repeatedly merging the lowest-ranked adjacent pair (leftmost first), because a merge only
//! creates pairs containing its new id, and those rank strictly later. So ranks come out in
//! increasing order and a bucket per rank (plus a bitset of non-empty buckets) replaces a heap:
//! O(n) pushes and one small sort per used bucket. The piece uses the same span layout as training.

use std::sync::OnceLock;

use fxhash::FxHashMap;
use rayon::prelude::*;

use crate::train::{left_start, SEP, SPAN};
use crate::{token_lengths, token_symbols, Error, NUM_SYMBOLS};

const NO_RANK: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Apply the merges in learned order (reproduces the training segmentation).
    Bpe,
    /// Longest vocabulary string at each position (the peer's encoder).
    Greedy,
}

/// A ready-to-use tokenizer: built once from its merges, then shared by all calls and threads.
pub struct Encoder {
    merges: Vec<(u32, u32)>,
    lens: Vec<u32>,
    base_rank: Vec<u32>,
    rank: FxHashMap<u64, u32>,
    symbols: Vec<u8>,
    offsets: Vec<usize>,
    trie: OnceLock<Trie>,
}

/// Reusable per-thread scratch space.
pub struct Scratch {
    tok: Vec<u32>,
    buckets: Vec<Vec<u32>>,
    nonempty: Vec<u64>,
}

impl Encoder {
    pub fn new(merges: Vec<(u32, u32)>) -> Result<Encoder, Error> {
        let lens = token_lengths(&merges)?;
        let (symbols, offsets) = token_symbols(&merges)?;
        let mut base_rank = vec![NO_RANK; (NUM_SYMBOLS * NUM_SYMBOLS) as usize];
        let mut rank = FxHashMap::default();
        for (r, &(left, right)) in merges.iter().enumerate() {
            // A repeated pair keeps its first rank: the later copy could never apply.
            if left < NUM_SYMBOLS && right < NUM_SYMBOLS {
                let slot = &mut base_rank[(left * NUM_SYMBOLS + right) as usize];
                if *slot == NO_RANK {
                    *slot = r as u32;
                }
            } else {
                rank.entry(((left as u64) << 32) | right as u64)
                    .or_insert(r as u32);
            }
        }
        Ok(Encoder {
            merges,
            lens,
            base_rank,
            rank,
            symbols,
            offsets,
            trie: OnceLock::new(),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.lens.len()
    }

    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merges
    }

    /// Symbol codes of one token.
    pub fn token(&self, id: u32) -> &[u8] {
        &self.symbols[self.offsets[id as usize]..self.offsets[id as usize + 1]]
    }

    pub fn scratch(&self) -> Scratch {
        Scratch {
            tok: Vec::new(),
            buckets: vec![Vec::new(); self.merges.len()],
            nonempty: vec![0; self.merges.len().div_ceil(64)],
        }
    }

    #[inline]
    fn rank_of(&self, left: u32, right: u32) -> u32 {
        if left < NUM_SYMBOLS && right < NUM_SYMBOLS {
            self.base_rank[(left * NUM_SYMBOLS + right) as usize]
        } else {
            *self
                .rank
                .get(&(((left as u64) << 32) | right as u64))
                .unwrap_or(&NO_RANK)
        }
    }

    /// Appends the ids of one piece (codes `0..26`, already validated) to `out`.
    pub fn encode_piece(
        &self,
        piece: &[u8],
        mode: Mode,
        scratch: &mut Scratch,
        out: &mut Vec<u32>,
    ) {
        match mode {
            Mode::Bpe => self.encode_bpe(piece, scratch, out),
            Mode::Greedy => self.trie().encode(piece, out),
        }
    }

    fn encode_bpe(&self, piece: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        let tok = &mut scratch.tok;
        tok.clear();
        tok.push(SEP);
        tok.extend(piece.iter().map(|&c| c as u32));
        tok.push(SEP);
        for p in 1..piece.len() {
            let r = self.base_rank[(tok[p] * NUM_SYMBOLS + tok[p + 1]) as usize];
            if r != NO_RANK {
                queue(&mut scratch.buckets, &mut scratch.nonempty, r, p);
            }
        }
        let mut word = 0;
        while word < scratch.nonempty.len() {
            let bits = scratch.nonempty[word];
            if bits == 0 {
                word += 1;
                continue;
            }
            let r = word * 64 + bits.trailing_zeros() as usize;
            scratch.nonempty[word] &= !(1u64 << (r % 64));
            let mut bucket = std::mem::take(&mut scratch.buckets[r]);
            bucket.sort_unstable();
            let (a, b) = self.merges[r];
            let new = NUM_SYMBOLS + r as u32;
            let (len_a, len_b) = (
                self.lens[a as usize] as usize,
                self.lens[b as usize] as usize,
            );
            let tok = &mut scratch.tok;
            for &p in &bucket {
                let p = p as usize;
                if tok[p] != a {
                    continue;
                }
                let j = p + len_a;
                if tok[j] != b {
                    continue;
                }
                let after = j + len_b;
                tok[p] = new;
                tok[j] = SPAN | p as u32;
                tok[after - 1] = SPAN | p as u32;
                let left = left_start(tok, p);
                if tok[left] != SEP {
                    let r2 = self.rank_of(tok[left], new);
                    if r2 != NO_RANK {
                        queue(&mut scratch.buckets, &mut scratch.nonempty, r2, left);
                    }
                }
                if tok[after] != SEP {
                    let r2 = self.rank_of(new, tok[after]);
                    if r2 != NO_RANK {
                        queue(&mut scratch.buckets, &mut scratch.nonempty, r2, p);
                    }
                }
            }
            bucket.clear();
            scratch.buckets[r] = bucket;
            // New pairs rank after r, so the scan never needs to go back.
        }
        let tok = &scratch.tok;
        let mut p = 1;
        while tok[p] != SEP {
            out.push(tok[p]);
            p += self.lens[tok[p] as usize] as usize;
        }
    }

    fn trie(&self) -> &Trie {
        self.trie.get_or_init(|| Trie::new(self))
    }

    /// Encodes `pieces` of `symbols`; items are runs of `pieces_per_item` pieces. Returns the ids
    /// of all items concatenated and the number of ids per item. Items are encoded in parallel.
    pub fn encode_batch(
        &self,
        symbols: &[u8],
        pieces: &[usize],
        pieces_per_item: usize,
        mode: Mode,
    ) -> Result<(Vec<u32>, Vec<usize>), Error> {
        crate::validate_corpus(symbols, pieces)?;
        let per_item = pieces_per_item.max(1);
        let mut starts = Vec::with_capacity(pieces.len() + 1);
        let mut acc = 0;
        for &len in pieces {
            starts.push(acc);
            acc += len;
        }
        starts.push(acc);
        let n_items = pieces.len().div_ceil(per_item);
        let encoded: Vec<Vec<u32>> = (0..n_items)
            .into_par_iter()
            .map_init(
                || self.scratch(),
                |scratch, item| {
                    let first = item * per_item;
                    let last = (first + per_item).min(pieces.len());
                    let mut out = Vec::with_capacity((starts[last] - starts[first]) / 2);
                    for q in first..last {
                        self.encode_piece(
                            &symbols[starts[q]..starts[q + 1]],
                            mode,
                            scratch,
                            &mut out,
                        );
                    }
                    out
                },
            )
            .collect();
        let counts = encoded.iter().map(Vec::len).collect();
        Ok((encoded.concat(), counts))
    }

    /// Symbol codes of a sequence of ids.
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for (position, &id) in ids.iter().enumerate() {
            if id as usize >= self.vocab_size() {
                return Err(Error::BadId { position, id });
            }
            out.extend_from_slice(self.token(id));
        }
        Ok(out)
    }
}

#[inline]
fn queue(buckets: &mut [Vec<u32>], nonempty: &mut [u64], rank: u32, position: usize) {
    buckets[rank as usize].push(position as u32);
    nonempty[rank as usize / 64] |= 1 << (rank % 64);
}

/// A trie over every token's symbols, for greedy longest-match encoding.
struct Trie {
    children: Vec<[u32; NUM_SYMBOLS as usize]>,
    token: Vec<u32>,
}

impl Trie {
    fn new(encoder: &Encoder) -> Trie {
        let mut trie = Trie {
            children: vec![[0; NUM_SYMBOLS as usize]],
            token: vec![NO_RANK],
        };
        for id in 0..encoder.vocab_size() as u32 {
            let mut node = 0usize;
            for &c in encoder.token(id) {
                let child = trie.children[node][c as usize];
                node = if child == 0 {
                    trie.children.push([0; NUM_SYMBOLS as usize]);
                    trie.token.push(NO_RANK);
                    let added = trie.children.len() - 1;
                    trie.children[node][c as usize] = added as u32;
                    added
                } else {
                    child as usize
                };
            }
            // Two merges can spell the same string; the earlier id keeps it.
            if trie.token[node] == NO_RANK {
                trie.token[node] = id;
            }
        }
        trie
    }

    fn encode(&self, piece: &[u8], out: &mut Vec<u32>) {
        let mut i = 0;
        while i < piece.len() {
            let (mut node, mut best, mut best_len) = (0usize, NO_RANK, 0);
            for (j, &c) in piece[i..].iter().enumerate() {
                let child = self.children[node][c as usize];
                if child == 0 {
                    break;
                }
                node = child as usize;
                if self.token[node] != NO_RANK {
                    best = self.token[node];
                    best_len = j + 1;
                }
            }
            // Every single symbol is a token, so the match is never empty.
            out.push(best);
            i += best_len;
        }
    }
}

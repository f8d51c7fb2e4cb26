//! Encoding symbol pieces into token ids: true BPE (merges in learned order) or the peer's greedy
//! longest match; decoding ids back to symbols.
//!
//! BPE: applying the merges one after another, each left to right over the whole piece, is the same
//! as repeatedly merging the lowest-ranked adjacent pair (leftmost first), because a merge only
//! creates pairs containing its new id, and those rank strictly later.
//!
//! Three shortcuts keep the output identical while doing less work:
//! - Forced boundaries: no token can span symbols `x y` when no merge joins a token ending in `x` to
//!   one starting with `y` (every letter pair inside a token is such a junction). No merge ever
//!   crosses there, so a piece is cut into chunks at those places and each chunk is encoded alone.
//! - Chunk cache: symbolised ECG repeats itself (baselines, similar beats), so each worker memoises
//!   chunk -> ids for chunks up to `CACHE_MAX_CHUNK` symbols; encoding is a pure function of the
//!   chunk, so a hit is exact. Caches live in the encoder's pool of idle scratch, so they stay warm
//!   across calls; each is bounded by `CACHE_MAX_SYMBOLS`.
//! - Chunks that miss are queued in one buffer per job (~`JOB_SYMBOLS` symbols) and merged in a
//!   single pass: a bucket visit then serves many positions at once.
//! - Pair ranks come from an open-addressing table with the pair packed into one `u64` key.

use std::ops::Range;
use std::sync::{Mutex, OnceLock};

use fxhash::FxHashMap;
use rayon::prelude::*;

use crate::train::{join_at, left_start, SEP};
use crate::{token_lengths, token_symbols, Error, NUM_SYMBOLS};

const NO_RANK: u32 = u32::MAX;
/// Chunks up to this many symbols are memoised (measured: 64 gains little, 1024 much more than 256).
const CACHE_MAX_CHUNK: usize = 1024;
/// A worker's cache is emptied when it holds this many symbols (bounds memory to a few MiB).
const CACHE_MAX_SYMBOLS: usize = 1 << 21;
/// Symbols per parallel job: enough that each rank's bucket gathers many positions.
const JOB_SYMBOLS: usize = 1 << 16;

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
    /// `joinable[x * 26 + y]`: some token contains the letter pair `x y`.
    joinable: Vec<bool>,
    ranks: PairRanks,
    symbols: Vec<u8>,
    offsets: Vec<usize>,
    trie: OnceLock<Trie>,
    /// Idle per-worker scratch (with warm chunk caches), reused across calls.
    idle: Mutex<Vec<Scratch>>,
}

/// Reusable per-worker scratch space.
struct Scratch {
    /// Chunks still to encode, `SEP`-separated, in the span layout of training (see `train`).
    tok: Vec<u32>,
    buckets: Vec<Vec<u32>>,
    nonempty: Vec<u64>,
    /// The job's output in order, before the merge pass has run.
    parts: Vec<Part>,
    /// Ids already known (cache hits, chunks of one or two symbols).
    ready: Vec<u32>,
    cache: FxHashMap<Box<[u8]>, Box<[u32]>>,
    cached_symbols: usize,
}

/// One stretch of a job's output.
#[derive(Clone, Copy)]
enum Part {
    /// `ready[start..start + len]`.
    Ready { start: usize, len: usize },
    /// The chunk `symbols[symbol..symbol + len]`, whose tokens start at `tok[at]`.
    Fresh {
        at: usize,
        symbol: usize,
        len: usize,
    },
    /// End of an item.
    ItemEnd,
}

impl Encoder {
    pub fn new(merges: Vec<(u32, u32)>) -> Result<Encoder, Error> {
        let lens = token_lengths(&merges)?;
        let (symbols, offsets) = token_symbols(&merges)?;
        let mut base_rank = vec![NO_RANK; (NUM_SYMBOLS * NUM_SYMBOLS) as usize];
        let mut joinable = vec![false; (NUM_SYMBOLS * NUM_SYMBOLS) as usize];
        let mut ranks = PairRanks::with_capacity(merges.len());
        for (r, &(left, right)) in merges.iter().enumerate() {
            let last = symbols[offsets[left as usize + 1] - 1] as usize;
            let first = symbols[offsets[right as usize]] as usize;
            joinable[last * NUM_SYMBOLS as usize + first] = true;
            // A repeated pair keeps its first rank: the later copy could never apply.
            if left < NUM_SYMBOLS && right < NUM_SYMBOLS {
                let slot = &mut base_rank[(left * NUM_SYMBOLS + right) as usize];
                if *slot == NO_RANK {
                    *slot = r as u32;
                }
            }
            ranks.insert_first(left, right, r as u32);
        }
        Ok(Encoder {
            merges,
            lens,
            base_rank,
            joinable,
            ranks,
            symbols,
            offsets,
            trie: OnceLock::new(),
            idle: Mutex::new(Vec::new()),
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

    /// Scratch for one worker: a warm one left by an earlier call if there is one.
    fn scratch(&self) -> Scratch {
        self.idle
            .lock()
            .ok()
            .and_then(|mut idle| idle.pop())
            .unwrap_or_else(|| Scratch {
                tok: Vec::new(),
                parts: Vec::new(),
                ready: Vec::new(),
                buckets: vec![Vec::new(); self.merges.len()],
                nonempty: vec![0; self.merges.len().div_ceil(64)],
                cache: FxHashMap::default(),
                cached_symbols: 0,
            })
    }

    /// Hands scratch back so that the next call starts with its cache warm.
    fn release(&self, mut scratch: Scratch) {
        // A huge piece leaves huge buffers behind: keep only the cache then.
        if scratch.tok.capacity() > 4 * JOB_SYMBOLS {
            scratch.tok = Vec::new();
            scratch.parts = Vec::new();
            scratch.ready = Vec::new();
            scratch
                .buckets
                .iter_mut()
                .for_each(|bucket| *bucket = Vec::new());
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(scratch);
        }
    }

    /// Encodes the items made of `pieces` (runs of `per_item`), appending their ids to `out` and
    /// their id counts to `counts`.
    #[allow(clippy::too_many_arguments)]
    fn encode_job(
        &self,
        symbols: &[u8],
        starts: &[usize],
        pieces: Range<usize>,
        per_item: usize,
        mode: Mode,
        scratch: &mut Scratch,
        out: &mut Vec<u32>,
        counts: &mut Vec<usize>,
    ) {
        let ends_item =
            |q: usize| (q + 1 - pieces.start).is_multiple_of(per_item) || q + 1 == pieces.end;
        match mode {
            Mode::Greedy => {
                let trie = self.trie();
                let mut item_start = out.len();
                for q in pieces.clone() {
                    trie.encode(&symbols[starts[q]..starts[q + 1]], out);
                    if ends_item(q) {
                        counts.push(out.len() - item_start);
                        item_start = out.len();
                    }
                }
            }
            Mode::Bpe => {
                scratch.tok.clear();
                scratch.tok.push(SEP);
                scratch.parts.clear();
                scratch.ready.clear();
                for q in pieces.clone() {
                    self.plan_piece(symbols, starts[q]..starts[q + 1], scratch);
                    if ends_item(q) {
                        scratch.parts.push(Part::ItemEnd);
                    }
                }
                self.merge_all(scratch);
                self.collect(symbols, scratch, out, counts);
            }
        }
    }

    /// Cuts a piece at forced boundaries; each chunk is answered now (short or cached) or queued in
    /// `tok` for the merge pass.
    fn plan_piece(&self, symbols: &[u8], piece: Range<usize>, scratch: &mut Scratch) {
        let mut start = piece.start;
        for i in piece.start + 1..piece.end {
            let pair = symbols[i - 1] as usize * NUM_SYMBOLS as usize + symbols[i] as usize;
            if !self.joinable[pair] {
                self.plan_chunk(symbols, start..i, scratch);
                start = i;
            }
        }
        if start < piece.end {
            self.plan_chunk(symbols, start..piece.end, scratch);
        }
    }

    fn plan_chunk(&self, symbols: &[u8], chunk: Range<usize>, scratch: &mut Scratch) {
        let codes = &symbols[chunk.clone()];
        let ready_start = scratch.ready.len();
        match codes.len() {
            1 => scratch.ready.push(codes[0] as u32),
            2 => match self.base_rank[codes[0] as usize * NUM_SYMBOLS as usize + codes[1] as usize]
            {
                NO_RANK => scratch.ready.extend([codes[0] as u32, codes[1] as u32]),
                r => scratch.ready.push(NUM_SYMBOLS + r),
            },
            n => {
                let hit = if n <= CACHE_MAX_CHUNK {
                    scratch.cache.get(codes)
                } else {
                    None
                };
                if let Some(ids) = hit {
                    scratch.ready.extend_from_slice(ids);
                } else {
                    let at = scratch.tok.len();
                    scratch.tok.extend(codes.iter().map(|&c| c as u32));
                    scratch.tok.push(SEP);
                    for k in 0..n - 1 {
                        let r = self.base_rank
                            [codes[k] as usize * NUM_SYMBOLS as usize + codes[k + 1] as usize];
                        if r != NO_RANK {
                            queue(&mut scratch.buckets, &mut scratch.nonempty, r, at + k);
                        }
                    }
                    scratch.parts.push(Part::Fresh {
                        at,
                        symbol: chunk.start,
                        len: n,
                    });
                    return;
                }
            }
        }
        scratch.parts.push(Part::Ready {
            start: ready_start,
            len: scratch.ready.len() - ready_start,
        });
    }

    /// True BPE over every queued chunk at once. Ranks come out in increasing order, so a bucket
    /// per rank (and a bitset of non-empty buckets) replaces a heap: O(n) pushes and a small sort
    /// per used bucket. Many chunks share one pass so that each bucket visit does a lot of work.
    fn merge_all(&self, scratch: &mut Scratch) {
        let Scratch {
            tok,
            buckets,
            nonempty,
            ..
        } = scratch;
        let mut word = 0;
        while word < nonempty.len() {
            let bits = nonempty[word];
            if bits == 0 {
                word += 1;
                continue;
            }
            let r = word * 64 + bits.trailing_zeros() as usize;
            nonempty[word] &= !(1u64 << (r % 64));
            let mut bucket = std::mem::take(&mut buckets[r]);
            bucket.sort_unstable();
            let (a, b) = self.merges[r];
            let new = NUM_SYMBOLS + r as u32;
            let (len_a, len_b) = (
                self.lens[a as usize] as usize,
                self.lens[b as usize] as usize,
            );
            for &p in &bucket {
                let p = p as usize;
                let Some(after) = join_at(tok, p, (a, b), (len_a, len_b), new) else {
                    continue;
                };
                let left = left_start(tok, p);
                if tok[left] != SEP {
                    let r2 = self.ranks.get(tok[left], new);
                    if r2 != NO_RANK {
                        queue(buckets, nonempty, r2, left);
                    }
                }
                if tok[after] != SEP {
                    let r2 = self.ranks.get(new, tok[after]);
                    if r2 != NO_RANK {
                        queue(buckets, nonempty, r2, p);
                    }
                }
            }
            bucket.clear();
            buckets[r] = bucket;
            // New pairs rank after r, so the scan never needs to go back.
        }
    }

    /// Writes the job's ids in order, memoising freshly encoded short chunks.
    fn collect(
        &self,
        symbols: &[u8],
        scratch: &mut Scratch,
        out: &mut Vec<u32>,
        counts: &mut Vec<usize>,
    ) {
        let mut item_start = out.len();
        for &part in &scratch.parts {
            match part {
                Part::Ready { start, len } => {
                    out.extend_from_slice(&scratch.ready[start..start + len])
                }
                Part::Fresh { at, symbol, len } => {
                    let first = out.len();
                    let mut p = at;
                    while scratch.tok[p] != SEP {
                        out.push(scratch.tok[p]);
                        p += self.lens[scratch.tok[p] as usize] as usize;
                    }
                    if len <= CACHE_MAX_CHUNK {
                        if scratch.cached_symbols + len > CACHE_MAX_SYMBOLS {
                            scratch.cache.clear();
                            scratch.cached_symbols = 0;
                        }
                        scratch.cached_symbols += len;
                        scratch
                            .cache
                            .insert(symbols[symbol..symbol + len].into(), out[first..].into());
                    }
                }
                Part::ItemEnd => {
                    counts.push(out.len() - item_start);
                    item_start = out.len();
                }
            }
        }
    }

    fn trie(&self) -> &Trie {
        self.trie.get_or_init(|| Trie::new(self))
    }

    /// Encodes `pieces` of `symbols`; items are runs of `pieces_per_item` pieces. Returns the ids
    /// of all items concatenated and the number of ids per item. Runs of whole items of about
    /// `JOB_SYMBOLS` symbols are encoded in parallel.
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
        // Small batches still get a few jobs per thread.
        let job_symbols = JOB_SYMBOLS
            .min(symbols.len() / (4 * rayon::current_num_threads()))
            .max(1);
        let mut jobs = Vec::new();
        let mut first = 0;
        while first < pieces.len() {
            let mut last = (first + per_item).min(pieces.len());
            while last < pieces.len() && starts[last] - starts[first] < job_symbols {
                last = (last + per_item).min(pieces.len());
            }
            jobs.push(first..last);
            first = last;
        }
        let encoded: Vec<(Vec<u32>, Vec<usize>)> = jobs
            .into_par_iter()
            .map_init(
                || Lent::new(self),
                |lent, job| {
                    let mut out = Vec::with_capacity((starts[job.end] - starts[job.start]) / 2);
                    let mut counts = Vec::new();
                    self.encode_job(
                        symbols,
                        &starts,
                        job,
                        per_item,
                        mode,
                        lent.scratch(),
                        &mut out,
                        &mut counts,
                    );
                    (out, counts)
                },
            )
            .collect();
        let mut ids = Vec::with_capacity(encoded.iter().map(|e| e.0.len()).sum());
        let mut counts = Vec::with_capacity(pieces.len().div_ceil(per_item));
        for (job_ids, job_counts) in encoded {
            ids.extend_from_slice(&job_ids);
            counts.extend_from_slice(&job_counts);
        }
        Ok((ids, counts))
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

/// Scratch borrowed from an encoder for one rayon job, handed back when the job ends.
struct Lent<'a> {
    encoder: &'a Encoder,
    scratch: Option<Scratch>,
}

impl<'a> Lent<'a> {
    fn new(encoder: &'a Encoder) -> Self {
        Lent {
            encoder,
            scratch: Some(encoder.scratch()),
        }
    }

    fn scratch(&mut self) -> &mut Scratch {
        self.scratch.as_mut().expect("scratch is held until drop")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(scratch) = self.scratch.take() {
            self.encoder.release(scratch);
        }
    }
}

/// Pair -> first rank: open addressing with linear probing, the pair packed into one `u64` key.
/// Most lookups miss, and a miss at load factor <= 1/4 usually ends at the first empty slot.
struct PairRanks {
    slots: Vec<(u64, u32)>,
    shift: u32,
}

const EMPTY_PAIR: u64 = u64::MAX;

impl PairRanks {
    fn with_capacity(n: usize) -> Self {
        let size = (4 * n).next_power_of_two().max(16);
        PairRanks {
            slots: vec![(EMPTY_PAIR, NO_RANK); size],
            shift: 64 - size.trailing_zeros(),
        }
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift) as usize
    }

    fn insert_first(&mut self, left: u32, right: u32, rank: u32) {
        let key = ((left as u64) << 32) | right as u64;
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        while self.slots[i].0 != EMPTY_PAIR {
            if self.slots[i].0 == key {
                return;
            }
            i = (i + 1) & mask;
        }
        self.slots[i] = (key, rank);
    }

    #[inline]
    fn get(&self, left: u32, right: u32) -> u32 {
        let key = ((left as u64) << 32) | right as u64;
        let mask = self.slots.len() - 1;
        let mut i = self.home(key);
        loop {
            let (k, rank) = self.slots[i];
            if k == key {
                return rank;
            }
            if k == EMPTY_PAIR {
                return NO_RANK;
            }
            i = (i + 1) & mask;
        }
    }
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

//! The fast trainer and encoders against slow, obviously-correct reference implementations.

use std::sync::atomic::AtomicUsize;

use ecgbyte::encode::{Encoder, Mode};
use ecgbyte::train::{train, TrainOptions, Training};
use ecgbyte::{thread_pool, Error};

/// Deterministic pseudo-random symbols with long runs, like a symbolised ECG.
fn corpus(seed: u64, pieces: usize, max_len: usize, alphabet: u8) -> (Vec<u8>, Vec<usize>) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let (mut symbols, mut lens) = (Vec::new(), Vec::new());
    let mut level = 12i32;
    for _ in 0..pieces {
        let len = next() % (max_len + 1);
        for _ in 0..len {
            level = (level + (next() % 3) as i32 - 1).clamp(0, alphabet as i32 - 1);
            symbols.push(level as u8);
        }
        lens.push(len);
    }
    (symbols, lens)
}

fn split(symbols: &[u8], pieces: &[usize]) -> Vec<Vec<u32>> {
    let mut start = 0;
    pieces
        .iter()
        .map(|&len| {
            let piece = symbols[start..start + len]
                .iter()
                .map(|&c| c as u32)
                .collect();
            start += len;
            piece
        })
        .collect()
}

/// Merge every occurrence of (a, b), left to right.
fn apply(piece: &[u32], a: u32, b: u32, new: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(piece.len());
    let mut i = 0;
    while i < piece.len() {
        if i + 1 < piece.len() && piece[i] == a && piece[i + 1] == b {
            out.push(new);
            i += 2;
        } else {
            out.push(piece[i]);
            i += 1;
        }
    }
    out
}

/// Recount-everything BPE: most frequent pair, ties to the smallest (left, right).
fn reference_train(
    symbols: &[u8],
    pieces: &[usize],
    num_merges: usize,
    min_count: u64,
) -> Vec<(u32, u32)> {
    let mut words = split(symbols, pieces);
    let mut merges = Vec::new();
    while merges.len() < num_merges {
        let mut counts = std::collections::BTreeMap::<(u32, u32), u64>::new();
        for w in &words {
            for pair in w.windows(2) {
                *counts.entry((pair[0], pair[1])).or_default() += 1;
            }
        }
        let Some((&best, &count)) = counts.iter().max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0)))
        else {
            break;
        };
        if count < min_count {
            break;
        }
        let new = 26 + merges.len() as u32;
        words = words
            .iter()
            .map(|w| apply(w, best.0, best.1, new))
            .collect();
        merges.push(best);
    }
    merges
}

fn reference_encode(piece: &[u32], merges: &[(u32, u32)]) -> Vec<u32> {
    let mut w = piece.to_vec();
    for (k, &(a, b)) in merges.iter().enumerate() {
        w = apply(&w, a, b, 26 + k as u32);
    }
    w
}

fn run(symbols: &[u8], pieces: &[usize], num_merges: usize, threads: usize) -> Training {
    let options = TrainOptions {
        num_merges,
        min_count: 2,
        keep_segmentation: true,
    };
    thread_pool(Some(threads))
        .install(|| train(symbols, pieces, options, &AtomicUsize::new(0)).unwrap())
}

#[test]
fn classic_example() {
    // "aaabdaaabac" -> first merge (a, a), as in the textbook example.
    let symbols: Vec<u8> = b"aaabdaaabac".iter().map(|c| c - b'a').collect();
    let t = run(&symbols, &[symbols.len()], 3, 1);
    assert_eq!(t.merges[0], (0, 0));
    assert_eq!(t.merges, reference_train(&symbols, &[symbols.len()], 3, 2));
}

#[test]
fn matches_reference_trainer_and_is_thread_independent() {
    for seed in 0..40 {
        let alphabet = [2u8, 3, 5, 26][seed as usize % 4];
        let (symbols, pieces) = corpus(seed, 1 + seed as usize % 7, 300, alphabet);
        if symbols.is_empty() {
            continue;
        }
        let fast = run(&symbols, &pieces, 60, 1);
        assert_eq!(
            fast.merges,
            reference_train(&symbols, &pieces, 60, 2),
            "seed {seed}"
        );
        assert_eq!(
            fast,
            run(&symbols, &pieces, 60, 3),
            "seed {seed}: thread count changed the result"
        );
        // Encoding the training corpus in merge order reproduces its training segmentation.
        let encoder = Encoder::new(fast.merges.clone()).unwrap();
        let (ids, counts) = encoder
            .encode_batch(&symbols, &pieces, 1, Mode::Bpe)
            .unwrap();
        assert_eq!(Some(&ids), fast.segmentation.as_ref(), "seed {seed}");
        assert_eq!(ids.len(), fast.tokens);
        for (count, piece) in counts.iter().zip(split(&symbols, &pieces)) {
            assert_eq!(*count, reference_encode(&piece, &fast.merges).len());
        }
        assert_eq!(encoder.decode(&ids).unwrap(), symbols);
    }
}

#[test]
fn matches_reference_on_long_runs_spanning_several_count_chunks() {
    // Tiny alphabets make runs (`aaaa`) and repeats (`abab`), whose merges meet their own new token
    // as a neighbour; over 65,536 slots the initial count is split into chunks.
    for (seed, alphabet) in [(101, 2u8), (102, 3)] {
        let (symbols, pieces) = corpus(seed, 12, 24_000, alphabet);
        assert!(symbols.len() > 100_000);
        let fast = run(&symbols, &pieces, 40, 1);
        assert_eq!(
            fast.merges,
            reference_train(&symbols, &pieces, 40, 2),
            "seed {seed}"
        );
        assert_eq!(
            fast,
            run(&symbols, &pieces, 40, 4),
            "seed {seed}: thread count changed the result"
        );
        let encoder = Encoder::new(fast.merges.clone()).unwrap();
        let (ids, _) = encoder
            .encode_batch(&symbols, &pieces, 1, Mode::Bpe)
            .unwrap();
        assert_eq!(Some(&ids), fast.segmentation.as_ref(), "seed {seed}");
    }
}

#[test]
fn merges_never_cross_pieces() {
    // Each piece is "ab": the pair (b, a) only exists across the boundary.
    let symbols: Vec<u8> = [0u8, 1].repeat(50);
    let pieces = vec![2; 50];
    let t = run(&symbols, &pieces, 10, 2);
    assert_eq!(t.merges, vec![(0, 1)]);
    assert_eq!(t.tokens, 50);
}

#[test]
fn bpe_encoding_matches_reference_on_unseen_data() {
    let (train_symbols, train_pieces) = corpus(7, 5, 2000, 26);
    let merges = run(&train_symbols, &train_pieces, 200, 2).merges;
    let encoder = Encoder::new(merges.clone()).unwrap();
    let (symbols, pieces) = corpus(99, 9, 1500, 26);
    let (ids, counts) = encoder
        .encode_batch(&symbols, &pieces, 3, Mode::Bpe)
        .unwrap();
    let expected: Vec<u32> = split(&symbols, &pieces)
        .iter()
        .flat_map(|p| reference_encode(p, &merges))
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(counts.len(), 3);
    assert_eq!(encoder.decode(&ids).unwrap(), symbols);
}

#[test]
fn greedy_is_longest_match_and_differs_from_bpe() {
    // Vocabulary: a..z plus bc (26), ab (27), abab (28).
    let encoder = Encoder::new(vec![(1, 2), (0, 1), (27, 27)]).unwrap();
    let encode = |text: &[u8], mode| {
        let symbols: Vec<u8> = text.iter().map(|c| c - b'a').collect();
        encoder
            .encode_batch(&symbols, &[symbols.len()], 1, mode)
            .unwrap()
            .0
    };
    assert_eq!(encode(b"abc", Mode::Greedy), vec![27, 2]);
    assert_eq!(encode(b"abc", Mode::Bpe), vec![0, 26]);
    assert_eq!(encode(b"ababa", Mode::Greedy), vec![28, 0]);
    assert_eq!(encode(b"ababa", Mode::Bpe), vec![28, 0]);
}

#[test]
fn bad_input_is_reported() {
    let options = TrainOptions {
        num_merges: 5,
        min_count: 2,
        keep_segmentation: false,
    };
    let done = AtomicUsize::new(0);
    assert_eq!(train(&[], &[], options, &done), Err(Error::Empty));
    assert_eq!(
        train(&[0, 30], &[2], options, &done),
        Err(Error::BadSymbol {
            position: 1,
            code: 30
        })
    );
    let encoder = Encoder::new(vec![]).unwrap();
    assert_eq!(
        encoder.decode(&[3, 26]),
        Err(Error::BadId {
            position: 1,
            id: 26
        })
    );
}

/// Random walk over a..z like a symbolised ECG: mostly steps of -1, 0, +1, with a jump every
/// ~`jump_every` symbols (QRS edges) that makes letter pairs no token contains (forced boundaries).
/// Every fourth piece repeats an earlier one, as beats and baselines do, so chunk caches get hits.
fn ecg_like(seed: u64, pieces: usize, max_len: usize, jump_every: usize) -> (Vec<u8>, Vec<usize>) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as usize
    };
    let (mut symbols, mut lens) = (Vec::<u8>::new(), Vec::new());
    let mut level = 12i32;
    for k in 0..pieces {
        if k % 4 == 3 {
            let copy = next() % k;
            let start: usize = lens[..copy].iter().sum();
            symbols.extend_from_within(start..start + lens[copy]);
            lens.push(lens[copy]);
            continue;
        }
        let len = next() % (max_len + 1);
        for _ in 0..len {
            level = if next() % jump_every == 0 {
                (next() % 26) as i32
            } else {
                (level + (next() % 3) as i32 - 1).clamp(0, 25)
            };
            symbols.push(level as u8);
        }
        lens.push(len);
    }
    (symbols, lens)
}

#[test]
fn bpe_matches_reference_with_5000_merges_on_ecg_like_walks() {
    let (train_symbols, train_pieces) = ecg_like(1, 48, 16_000, 150);
    let training = run(&train_symbols, &train_pieces, 5000, 2);
    assert_eq!(
        training.merges.len(),
        5000,
        "the corpus should support 5000 merges"
    );
    let merges = training.merges.clone();
    let encoder = Encoder::new(merges.clone()).unwrap();
    // The training corpus, twice: the second call starts with warm chunk caches.
    for _ in 0..2 {
        let (ids, _) = encoder
            .encode_batch(&train_symbols, &train_pieces, 1, Mode::Bpe)
            .unwrap();
        assert_eq!(Some(&ids), training.segmentation.as_ref());
    }
    for seed in 2..6 {
        let (symbols, pieces) = ecg_like(seed, 12, 4000, 40 + 60 * seed as usize);
        let per_piece: Vec<Vec<u32>> = split(&symbols, &pieces)
            .iter()
            .map(|p| reference_encode(p, &merges))
            .collect();
        let expected: Vec<u32> = per_piece.concat();
        for (per_item, threads) in [(1, 1), (3, 2), (12, 2), (5, 3)] {
            let (ids, counts) = thread_pool(Some(threads))
                .install(|| encoder.encode_batch(&symbols, &pieces, per_item, Mode::Bpe))
                .unwrap();
            assert_eq!(ids, expected, "seed {seed}, {per_item} pieces per item");
            let expected_counts: Vec<usize> = per_piece
                .chunks(per_item)
                .map(|item| item.iter().map(Vec::len).sum())
                .collect();
            assert_eq!(
                counts, expected_counts,
                "seed {seed}, {per_item} pieces per item"
            );
        }
    }
}

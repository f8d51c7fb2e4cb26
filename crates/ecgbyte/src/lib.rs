//! ECG-Byte: byte-pair encoding over symbolised ECG signals.
//!
//! Signals are symbolised (in Python) into 26 levels, passed here as codes `0..26`. Token ids:
//! `0..26` are the symbols `a..z`; id `26 + k` is merge `k`, in creation order. A corpus is a flat
//! symbol buffer split into *pieces* (segments, or leads when merges stop at lead boundaries); no
//! token ever spans two pieces.

pub mod encode;
pub mod train;

#[cfg(feature = "python")]
mod python;

use std::fmt;

/// Number of base symbols (`a..z`).
pub const NUM_SYMBOLS: u32 = 26;

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A symbol code outside `0..26`, with its position in the flat buffer.
    BadSymbol {
        position: usize,
        code: u8,
    },
    /// Piece lengths that do not add up to the symbol buffer length.
    BadPieces {
        total: usize,
        symbols: usize,
    },
    /// A merge that refers to an id not created before it.
    BadMerge {
        index: usize,
        left: u32,
        right: u32,
    },
    /// A token id outside the vocabulary.
    BadId {
        position: usize,
        id: u32,
    },
    /// More symbols than 32-bit positions can address.
    TooLarge {
        symbols: usize,
    },
    Empty,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadSymbol { position, code } => {
                write!(f, "symbol code {code} at position {position} is not in 0..26 (a..z)")
            }
            Error::BadPieces { total, symbols } => {
                write!(f, "piece lengths add up to {total} but there are {symbols} symbols")
            }
            Error::BadMerge { index, left, right } => write!(
                f,
                "merge {index} ({left}, {right}) refers to an id that does not exist before it"
            ),
            Error::BadId { position, id } => write!(f, "token id {id} at position {position} is not in the vocabulary"),
            Error::TooLarge { symbols } => write!(
                f,
                "{symbols} symbols is more than this trainer addresses (2^31 - pieces); train on a subsample"
            ),
            Error::Empty => write!(f, "empty corpus: nothing to train on"),
        }
    }
}

impl std::error::Error for Error {}

/// Checks that every code is a symbol and that the pieces tile the buffer.
pub fn validate_corpus(symbols: &[u8], pieces: &[usize]) -> Result<(), Error> {
    if let Some(position) = symbols.iter().position(|&c| c >= NUM_SYMBOLS as u8) {
        return Err(Error::BadSymbol {
            position,
            code: symbols[position],
        });
    }
    let total: usize = pieces.iter().sum();
    if total != symbols.len() {
        return Err(Error::BadPieces {
            total,
            symbols: symbols.len(),
        });
    }
    Ok(())
}

/// Symbols per token for a vocabulary given by its merges.
pub fn token_lengths(merges: &[(u32, u32)]) -> Result<Vec<u32>, Error> {
    let mut lens = vec![1u32; NUM_SYMBOLS as usize];
    for (index, &(left, right)) in merges.iter().enumerate() {
        let known = lens.len() as u32;
        if left >= known || right >= known {
            return Err(Error::BadMerge { index, left, right });
        }
        lens.push(lens[left as usize] + lens[right as usize]);
    }
    Ok(lens)
}

/// The symbol string (codes `0..26`) of every token, flattened, with offsets (`len = vocab + 1`).
pub fn token_symbols(merges: &[(u32, u32)]) -> Result<(Vec<u8>, Vec<usize>), Error> {
    token_lengths(merges)?;
    let mut flat: Vec<u8> = (0..NUM_SYMBOLS as u8).collect();
    let mut offsets: Vec<usize> = (0..=NUM_SYMBOLS as usize).collect();
    for &(left, right) in merges {
        for id in [left, right] {
            let (start, end) = (offsets[id as usize], offsets[id as usize + 1]);
            flat.extend_from_within(start..end);
        }
        offsets.push(flat.len());
    }
    Ok((flat, offsets))
}

/// Rayon pool with `threads` workers (`None`: all cores).
pub fn thread_pool(threads: Option<usize>) -> rayon::ThreadPool {
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(n) = threads {
        builder = builder.num_threads(n.max(1));
    }
    builder.build().expect("cannot start worker threads")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_strings_follow_merges() {
        let merges = [(0, 1), (26, 2), (27, 27)];
        assert_eq!(token_lengths(&merges).unwrap()[26..], [2, 3, 6]);
        let (flat, offsets) = token_symbols(&merges).unwrap();
        let last = &flat[offsets[28]..offsets[29]];
        assert_eq!(last, &[0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn merge_with_future_id_is_rejected() {
        assert_eq!(
            token_lengths(&[(0, 26)]),
            Err(Error::BadMerge {
                index: 0,
                left: 0,
                right: 26
            })
        );
    }

    #[test]
    fn corpus_validation() {
        assert!(validate_corpus(&[0, 25], &[2]).is_ok());
        assert_eq!(
            validate_corpus(&[0, 26], &[2]),
            Err(Error::BadSymbol {
                position: 1,
                code: 26
            })
        );
        assert_eq!(
            validate_corpus(&[0, 1], &[1]),
            Err(Error::BadPieces {
                total: 1,
                symbols: 2
            })
        );
    }
}

//! Python bindings (`ecgbench._ecgbyte`). Symbols cross as `bytes` of codes 0..26 and ids as `bytes` of
//! little-endian u32 (no numpy crate offline); the Python side wraps them with `np.frombuffer`.
//! Training and batch encoding release the GIL.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::encode::{Encoder, Mode};
use crate::train::{train, TrainOptions};
use crate::{thread_pool, Error};

fn value_error(err: Error) -> PyErr {
    PyValueError::new_err(err.to_string())
}

fn u32_bytes<'py>(py: Python<'py>, values: &[u32]) -> &'py PyBytes {
    PyBytes::new_with(py, values.len() * 4, |buf| {
        for (chunk, value) in buf.chunks_exact_mut(4).zip(values) {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        Ok(())
    })
    .expect("cannot allocate bytes")
}

fn in_pool<T: Send>(threads: Option<usize>, work: impl FnOnce() -> T + Send) -> T {
    match threads {
        Some(n) => thread_pool(Some(n)).install(work),
        None => work(),
    }
}

/// BPE trainer; `merges_done()` can be polled from another Python thread while `train` runs.
#[pyclass(module = "ecgbench._ecgbyte")]
struct Trainer {
    done: Arc<AtomicUsize>,
}

type TrainOutput<'py> = (
    Vec<(u32, u32)>,
    Vec<u64>,
    usize,
    usize,
    Option<&'py PyBytes>,
);

#[pymethods]
impl Trainer {
    #[new]
    fn new() -> Self {
        Trainer {
            done: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn merges_done(&self) -> usize {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Returns `(merges, counts, symbols, tokens, segmentation bytes or None)`.
    #[allow(clippy::too_many_arguments)]
    fn train<'py>(
        &self,
        py: Python<'py>,
        symbols: &[u8],
        pieces: Vec<usize>,
        num_merges: usize,
        min_count: u64,
        keep_segmentation: bool,
        threads: Option<usize>,
    ) -> PyResult<TrainOutput<'py>> {
        let options = TrainOptions {
            num_merges,
            min_count,
            keep_segmentation,
        };
        let done = Arc::clone(&self.done);
        let result = py
            .allow_threads(|| in_pool(threads, || train(symbols, &pieces, options, &done)))
            .map_err(value_error)?;
        let segmentation = result.segmentation.as_deref().map(|ids| u32_bytes(py, ids));
        Ok((
            result.merges,
            result.counts,
            result.symbols,
            result.tokens,
            segmentation,
        ))
    }
}

/// A tokenizer built once from its merges.
#[pyclass(module = "ecgbench._ecgbyte")]
struct Bpe {
    encoder: Encoder,
}

#[pymethods]
impl Bpe {
    #[new]
    fn new(merges: Vec<(u32, u32)>) -> PyResult<Self> {
        Ok(Bpe {
            encoder: Encoder::new(merges).map_err(value_error)?,
        })
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.encoder.vocab_size()
    }

    /// Symbol codes (0..26) of every token, in id order.
    fn token_symbols<'py>(&self, py: Python<'py>) -> Vec<&'py PyBytes> {
        (0..self.encoder.vocab_size() as u32)
            .map(|id| PyBytes::new(py, self.encoder.token(id)))
            .collect()
    }

    /// Encodes pieces of `symbols`, grouped into items of `pieces_per_item`; returns
    /// `(ids as u32 bytes, ids per item)`.
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        symbols: &[u8],
        pieces: Vec<usize>,
        pieces_per_item: usize,
        greedy: bool,
        threads: Option<usize>,
    ) -> PyResult<(&'py PyBytes, Vec<usize>)> {
        let mode = if greedy { Mode::Greedy } else { Mode::Bpe };
        let (ids, counts) = py
            .allow_threads(|| {
                in_pool(threads, || {
                    self.encoder
                        .encode_batch(symbols, &pieces, pieces_per_item, mode)
                })
            })
            .map_err(value_error)?;
        Ok((u32_bytes(py, &ids), counts))
    }

    /// Symbol codes of `ids` (u32 little-endian bytes).
    fn decode<'py>(&self, py: Python<'py>, ids: &[u8]) -> PyResult<&'py PyBytes> {
        if ids.len() % 4 != 0 {
            return Err(PyValueError::new_err("ids must be little-endian u32 bytes"));
        }
        let ids: Vec<u32> = ids
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let symbols = self.encoder.decode(&ids).map_err(value_error)?;
        Ok(PyBytes::new(py, &symbols))
    }
}

#[pymodule]
fn _ecgbyte(_py: Python, m: &PyModule) -> PyResult<()> {
    m.add("__version__", crate::version())?;
    m.add_class::<Trainer>()?;
    m.add_class::<Bpe>()?;
    Ok(())
}

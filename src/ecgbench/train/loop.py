"""The one training loop: every paradigm, one CPU to many GPUs (accelerate), resumable to the exact step.

The loop a reader should be able to hold in their head:

1. check every input (stores, sets, splits, tokenizer, encoder checkpoint, LLM, run folder) before any
   work or any file is written;
2. build the ELM from the paradigm's config (or continue a checkpoint), its weight-free processor
   builds examples in DataLoader workers;
3. each optimizer update takes ``grad_accum`` micro-batches of ``batch_size`` conversations on each of
   the processes; the loss is the sum over answer tokens divided by the answer tokens of the whole
   accumulated global batch, so 4 x 2 accumulates to exactly the gradient of 1 x 8;
4. every ``eval_every`` updates: validation loss, best checkpoint by it, early stopping by patience;
5. resumable checkpoints hold only what trains plus the training state; ``--resume`` continues the
   same batch stream at the same update with the same RNG state.

Steps 3 to 5 are :func:`optimize`, driven by an :class:`Objective`: ``LanguageModelling`` (answer-token
cross-entropy) for the paradigms, ``train.dpo.PreferenceObjective`` (preference pairs) for DPO; each is a
sum over its units (answer tokens, pairs) divided by the units of the accumulated global batch.

Data order depends only on (seed, epoch): each epoch's global micro-batches are drawn, grouped by
length, from a generator seeded with both, and process r takes the r-th slice of each, so a run on P
processes sees the same global batches as one process with a P times larger batch.
"""

from __future__ import annotations

import functools
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ecgbench.console import console
from ecgbench.data.dataset import ConversationDataset, RecordIndex
from ecgbench.errors import UserError
from ecgbench.files import check_output, sha256_file
from ecgbench.models.chat import IGNORE_INDEX, ConversationError
from ecgbench.models.checkpoint import STAGE_FIELDS
from ecgbench.models.config import ELMConfig, ModelSettings
from ecgbench.models.processor import ELMProcessor
from ecgbench.settings import LoopSettings, TrainSettings
from ecgbench.train import run_dir as rd
from ecgbench.train import state as st
from ecgbench.train.devices import make_accelerator
from ecgbench.train.paradigms import Paradigm, paradigm, resolve_front_end

#: config fields a new stage (--init-from) takes from the command line; the paradigm sets the others
_STAGE_FIELDS = tuple(sorted(STAGE_FIELDS - {"train_encoder", "training_stage"}))


@dataclass
class TrainInputs:
    """What a training run reads and where it writes (the command's paths)."""

    paradigm: str
    stores: list[Path]
    sets: list[Path]
    out: Path
    splits: Path | None = None
    tokenizer: Path | None = None
    init_from: Path | None = None
    resume: bool = False


# ---------------------------------------------------------------------------------------------- data


class ExampleDataset(torch.utils.data.Dataset):
    """Conversation i -> a training example, built by the processor (in a DataLoader worker)."""

    def __init__(
        self, conversations: ConversationDataset, processor: ELMProcessor, max_length: int, system: str | None
    ):
        self.conversations = conversations
        self.processor = processor
        self.max_length = max_length
        self.system = system
        self.collator = Collator(processor)

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.conversations[i]
        try:
            example = self.processor.prepare_example(
                item.turns, item.ecgs, max_length=self.max_length, system=self.system, refs=item.ecg_refs
            )
        except ConversationError as exc:  # counted and reported by the loop, never silently dropped
            return {"skip": f"{item.conversation_id}: {exc}"}
        return example


class Collator:
    """Right-padded batch of the usable examples, plus the reasons of those that were skipped."""

    def __init__(self, processor: ELMProcessor):
        self.processor = processor

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        usable = [e for e in examples if "skip" not in e]
        batch: dict[str, Any] = self.processor.collate(usable, "right") if usable else {}
        batch["skipped"] = [e["skip"] for e in examples if "skip" in e]
        return batch


def epoch_batches(
    lengths: np.ndarray, global_batch: int, *, seed: int, epoch: int, group_by_length: bool
) -> list[np.ndarray]:
    """The global micro-batches of one epoch (full ones only, so every process gets its share)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if group_by_length:
        # sort within windows of 50 batches: similar lengths share a batch, the order stays random
        window = global_batch * 50
        order = np.concatenate(
            [
                chunk[np.argsort(-lengths[chunk], kind="stable")]
                for chunk in np.split(order, range(window, len(order), window))
            ]
        )
    batches = [order[i : i + global_batch] for i in range(0, len(order) - global_batch + 1, global_batch)]
    if group_by_length:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


class BatchStream(torch.utils.data.Sampler):
    """This process's micro-batches from update ``start`` on, epoch after epoch, ``updates`` in all."""

    def __init__(
        self,
        lengths: np.ndarray,
        *,
        batch_size: int,
        grad_accum: int,
        processes: int,
        rank: int,
        seed: int,
        group_by_length: bool,
        start: int,
        updates: int,
        offset: int = 0,
    ):
        self.lengths = lengths
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.processes = processes
        self.rank = rank
        self.seed = seed
        self.group_by_length = group_by_length
        self.start = start
        self.updates = updates
        self.offset = offset  # the update at which these examples were first used (online DPO: a round)
        self.updates_per_epoch = len(lengths) // (batch_size * processes) // grad_accum

    def position(self, update: int) -> tuple[int, int]:
        """(epoch, first micro-batch within it) of optimizer update ``update``."""
        update -= self.offset
        return update // self.updates_per_epoch, (update % self.updates_per_epoch) * self.grad_accum

    def __len__(self) -> int:
        return (self.updates - self.start) * self.grad_accum

    def __iter__(self) -> Iterator[list[int]]:
        update = self.start
        while update < self.updates:
            epoch, first = self.position(update)
            batches = epoch_batches(
                self.lengths,
                self.batch_size * self.processes,
                seed=self.seed,
                epoch=epoch,
                group_by_length=self.group_by_length,
            )
            last = self.updates_per_epoch * self.grad_accum
            for b in range(first, last):
                if update >= self.updates:
                    return
                part = batches[b][self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
                yield part.tolist()
                if (b + 1) % self.grad_accum == 0:
                    update += 1


def _loader(dataset: Any, sampler: Any, workers: int) -> Any:
    """Batches of ``dataset`` (an example dataset with its ``collator``) in ``sampler``'s order."""
    kwargs: dict[str, Any] = {}
    if workers:
        # spawn, not fork: the Rust tokenizer's thread pool and torch's threads do not survive a fork
        kwargs = {"multiprocessing_context": "spawn", "persistent_workers": True, "prefetch_factor": 4}
    # Its own generator: creating an iterator draws a base seed, which must not come from the global RNG
    # (a resumed run creates its iterator at another point of the RNG stream than the original run).
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=dataset.collator,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )


def answer_tokens(batch: dict[str, Any]) -> int:
    """Label tokens the causal-LM loss counts (labels are shifted by one inside the loss)."""
    labels = batch.get("labels")
    return 0 if labels is None else int((labels[:, 1:] != IGNORE_INDEX).sum())


# -------------------------------------------------------------------------------------------- checks


def _sha(path: Path) -> str:
    return sha256_file(path)


def _check_tokenizer(tokenizer_path: Path | None, p: Paradigm, seg_len: int) -> Any:
    if p.architecture != "token":
        if tokenizer_path is not None:
            raise UserError(f"paradigm {p.name} reads no ECG-Byte tokens; drop --tokenizer")
        return None
    if tokenizer_path is None:
        raise UserError(
            "paradigm end2end needs --tokenizer tokenizer.json (train one with `tokenizer train`)"
        )
    from ecgbench.tokenizer import ECGByteTokenizer

    tokenizer = ECGByteTokenizer.load(tokenizer_path)
    trained_on = (tokenizer.training or {}).get("samples_per_segment")
    if trained_on is not None and int(trained_on) != seg_len:
        raise UserError(
            f"tokenizer {tokenizer_path} was trained on {trained_on}-sample segments, the store holds "
            f"{seg_len}-sample segments: train a tokenizer on this store"
        )
    return tokenizer


def _check_encoder_checkpoint(model: ModelSettings, p: Paradigm, encoder: str | None) -> None:
    if p.needs_encoder_checkpoint and not model.encoder_checkpoint:
        raise UserError(
            f"paradigm {p.name} needs --encoder-checkpoint (a stage-1 encoder from `ecgbench encoder train`)"
        )
    if not model.encoder_checkpoint:
        return
    if p.architecture != "encoder":
        raise UserError(f"paradigm {p.name} has no encoder; drop --encoder-checkpoint")
    from ecgbench.models.encoders.base import read_checkpoint_meta

    path = Path(model.encoder_checkpoint)
    if not path.is_dir():
        raise UserError(f"encoder checkpoint not found: {path}")
    kind = read_checkpoint_meta(path).get("encoder")
    if kind != encoder:
        raise UserError(f"{path} is a {kind!r} encoder checkpoint, not {encoder!r} (--encoder)")


def _run_record(
    inputs: TrainInputs, model: ModelSettings, train: TrainSettings, seed: int, config: ELMConfig
) -> dict[str, Any]:
    return {
        "format": rd.RUN_FORMAT,
        "version": rd.RUN_VERSION,
        "paradigm": inputs.paradigm,
        "settings": {
            "model": model.model_dump(mode="json"),
            "train": train.model_dump(mode="json"),
            "seed": seed,
        },
        "inputs": {
            "stores": [str(Path(s).resolve()) for s in inputs.stores],
            "sets": {str(Path(s).resolve()): _sha(Path(s)) for s in inputs.sets},
            "splits": None if inputs.splits is None else {str(inputs.splits.resolve()): _sha(inputs.splits)},
            "tokenizer": None
            if inputs.tokenizer is None
            else {str(inputs.tokenizer.resolve()): _sha(inputs.tokenizer)},
            "init_from": None if inputs.init_from is None else str(inputs.init_from.resolve()),
            "rag_index": None
            if getattr(train, "rag", None) is None
            else {str(Path(train.rag).resolve()): _sha(Path(train.rag) / "manifest.json")},
        },
        "elm_config": config.model_dump(mode="json"),
    }


def _retrieval(train: TrainSettings, records: RecordIndex, splits: Path | None) -> Any:
    """The --rag retrieval step (None without --rag), checked against the stores and splits."""
    if train.rag is None:
        given = {"rag_k", "rag_placement"} & train.model_fields_set
        if given:
            raise UserError(f"--{sorted(given)[0].replace('_', '-')} needs --rag INDEX_DIR")
        return None
    from ecgbench.rag.retrieval import Retrieval

    retrieval = Retrieval(Path(train.rag), records.stores, k=train.rag_k, placement=train.rag_placement)
    retrieval.check_splits(splits, sorted({"test", train.val_split} - {train.train_split}))
    return retrieval


def _same_run(previous: dict[str, Any], current: dict[str, Any]) -> None:
    """--resume only continues the run that was started: same paradigm, settings and inputs."""
    differences = [key for key in ("paradigm", "settings", "inputs") if previous.get(key) != current.get(key)]
    if differences:
        detail = []
        for group, new in current["settings"].items():
            old = previous["settings"].get(group)
            if isinstance(new, dict):
                old = old if isinstance(old, dict) else {}
                detail += [f"{group}.{k}" for k in new if old.get(k) != new[k]]
            elif old != new:
                detail.append(group)
        what = ", ".join(detail) if detail else ", ".join(differences)
        raise UserError(f"--resume: this run was made with other settings or inputs ({what})")


# --------------------------------------------------------------------------------------------- model


def _elm_config(
    inputs: TrainInputs, p: Paradigm, model: ModelSettings, seed: int, seg_len: int, fs: int
) -> ELMConfig:
    representation, encoder = resolve_front_end(p, model.representation, model.encoder)
    fields = model.model_dump(exclude={"representation", "encoder"})
    return ELMConfig(
        **fields,
        architecture=p.architecture,  # type: ignore[arg-type]
        representation=representation,  # type: ignore[arg-type]
        encoder=encoder,
        signal_length=seg_len,
        fs=float(fs),
        ecg_tokenizer=str(inputs.tokenizer.resolve()) if inputs.tokenizer else None,
        train_encoder=p.train_encoder,
        training_stage=p.name,
        seed=seed,
    )


def _build_model(inputs: TrainInputs, config: ELMConfig, tokenizer: Any, p: Paradigm) -> Any:
    from ecgbench.models.checkpoint import load_elm, read_checkpoint_config
    from ecgbench.models.elm import build_elm

    if inputs.init_from is None:
        return build_elm(config, ecg_tokenizer=tokenizer)
    source = inputs.init_from
    if (source / rd.RUN_FILE).is_file():  # a run folder: continue from its best checkpoint
        source = source / rd.BEST_DIR
    saved = ELMConfig.model_validate(read_checkpoint_config(source)["config"])
    if saved.architecture != config.architecture:
        raise UserError(
            f"--init-from {inputs.init_from} is a {saved.architecture} ELM; paradigm {p.name} trains "
            f"{config.architecture} ELMs"
        )
    if (saved.signal_length, saved.fs) != (config.signal_length, config.fs):
        raise UserError(
            f"--init-from {inputs.init_from} reads {saved.signal_length} samples at {saved.fs:g} Hz; "
            "the store "
            f"holds {config.signal_length} at {config.fs:g} Hz"
        )
    _check_same_front_end(inputs, source, saved, config, tokenizer)
    update = {k: getattr(config, k) for k in _STAGE_FIELDS if getattr(config, k) != getattr(saved, k)}
    update["training_stage"] = p.name
    update["train_encoder"] = p.train_encoder
    return load_elm(source, trainable=True, update=update)


#: config fields the weights of a checkpoint were built on: a later stage cannot change them
_FIXED_FIELDS = (
    "llm",
    "representation",
    "encoder",
    "projector",
    "num_soft_tokens",
    "patch_size",
    "image_size",
)


def _check_same_front_end(
    inputs: TrainInputs, source: Path, saved: ELMConfig, config: ELMConfig, tokenizer: Any
) -> None:
    """--init-from continues the checkpoint's ELM: a flag that asks for another LLM or front end would
    otherwise be silently ignored (and misrecorded in run.json)."""
    from ecgbench.models.checkpoint import ECG_TOKENIZER_FILE

    fields = [*_FIXED_FIELDS, "encoder_preset"] if config.architecture == "encoder" else list(_FIXED_FIELDS)
    differing = [
        f"--{k.replace('_', '-')} {getattr(config, k)!r} (it has {getattr(saved, k)!r})"
        for k in fields
        if getattr(config, k) != getattr(saved, k)
    ]
    given, had = config.encoder_checkpoint, saved.encoder_checkpoint
    if given and (not had or Path(given).resolve() != Path(had).resolve()):
        differing.append(f"--encoder-checkpoint {given} (it has {had})")
    if tokenizer is not None:
        from ecgbench.tokenizer import ECGByteTokenizer

        if ECGByteTokenizer.load(source / ECG_TOKENIZER_FILE).to_json() != tokenizer.to_json():
            differing.append(f"--tokenizer {inputs.tokenizer} (it was trained with another ECG-Byte one)")
    if differing:
        raise UserError(
            f"--init-from {inputs.init_from} fixes the LLM and the ECG front end; give the same values: "
            + "; ".join(differing)
        )


def _check_lengths(examples: ExampleDataset, lengths: np.ndarray, which: str) -> None:
    """The longest conversations (by a cheap proxy) must fit --max-length: fail before any work."""
    for i in np.argsort(-lengths, kind="stable")[:4]:
        example = examples[int(i)]
        if "skip" in example:
            raise UserError(
                f"{which} conversation {example['skip']} (raise --max-length, now {examples.max_length})"
            )


# ---------------------------------------------------------------------------------------------- loop


@dataclass
class TrainResult:
    out: Path
    steps: int
    best_step: int | None
    best_val_loss: float | None
    stopped_early: bool
    skipped: int


def _check_tracker(report_to: str) -> None:
    """Refuse a tracker whose package is missing: accelerate would only warn and log nothing."""
    import importlib.util

    packages = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}.get(report_to, ())
    if packages and not any(importlib.util.find_spec(name) for name in packages):
        raise UserError(
            f"--report-to {report_to} needs the {packages[0]} package (pip install {packages[0]}),"
            " or pass --report-to none"
        )


def check_run_folder(out: Path, resume: bool, reads: list[Path | None]) -> dict[str, Any] | None:
    """The run folder is new (or empty), or ``--resume`` names a run with a finished checkpoint."""
    check_output(out, "--out", reads)
    if resume:
        previous = rd.read_run(out)
        if not rd.checkpoints(out):
            raise UserError(
                f"--resume: {out} has no finished checkpoint yet; start it again without --resume"
            )
        return previous
    if out.exists() and any(out.iterdir()):
        raise UserError(
            f"--out {out} already holds files; give --resume to continue that run, or a new folder"
        )
    return None


def start_accelerator(settings: LoopSettings, out: Path, seed: int) -> Any:
    """The accelerator of a run (its tracker logs under ``out``), with every RNG seeded."""
    from accelerate.utils import set_seed

    accelerator = make_accelerator(
        settings.mixed_precision,
        log_with=None if settings.report_to == "none" else settings.report_to,
        project_dir=str(out),
    )
    set_seed(seed, deterministic=settings.deterministic)
    if settings.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
    return accelerator


def updates_in_an_epoch(examples: int, what: str, settings: LoopSettings, processes: int) -> int:
    """Optimizer updates per pass over ``examples`` training examples; at least one, or a clear error."""
    updates = examples // (settings.batch_size * processes) // settings.grad_accum
    if updates == 0:
        raise UserError(
            f"{examples} {what} are fewer than one optimizer update (--batch-size {settings.batch_size} "
            f"x --grad-accum {settings.grad_accum} x {processes} process(es))"
        )
    return updates


def train_elm(inputs: TrainInputs, model: ModelSettings, train: TrainSettings, seed: int) -> TrainResult:
    """Run (or resume) one supervised ELM training run; see the module notes."""
    p = paradigm(inputs.paradigm)
    out = Path(inputs.out)
    previous = check_run_folder(
        out, inputs.resume, [*inputs.stores, *inputs.sets, inputs.splits, inputs.tokenizer]
    )

    records = RecordIndex.open(inputs.stores)
    retrieval = _retrieval(train, records, inputs.splits)
    seg_len, fs = records.check_shapes()
    train_set = ConversationDataset(
        inputs.sets,
        records,
        split=train.train_split,
        splits=inputs.splits,
        weights=train.set_weights,
        seed=seed,
    )
    val_set = ConversationDataset(
        inputs.sets, records, split=train.val_split, splits=inputs.splits, seed=seed
    )
    tokenizer = _check_tokenizer(inputs.tokenizer, p, seg_len)
    config = _elm_config(inputs, p, model, seed, seg_len, fs)
    _check_encoder_checkpoint(model, p, config.encoder)
    _check_tracker(train.report_to)
    if config.architecture == "token" and config.llm_training == "frozen" and not config.train_new_embeddings:
        raise UserError("nothing would train: --llm-training frozen with --no-train-new-embeddings")
    record = _run_record(inputs, model, train, seed, config)
    if previous is not None:
        _same_run(previous, record)

    accelerator = start_accelerator(train, out, seed)
    updates_per_epoch = updates_in_an_epoch(
        len(train_set), f"{train.train_split} split conversations", train, accelerator.num_processes
    )

    elm = _build_model(inputs, config, tokenizer, p)
    processor = elm.processor
    processor.retrieval = retrieval  # the same context in every example (and, from run.json, in inference)
    soft = processor.soft_tokens_per_ecg or (elm.config.signal_length * 12 / 4.0)  # ECG-Byte: ~4x compression
    train_examples = ExampleDataset(train_set, processor, train.max_length, train.system_prompt)
    val_examples = ExampleDataset(val_set, processor, train.max_length, train.system_prompt)
    if train.val_max_conversations is not None and len(val_set) > train.val_max_conversations:
        val_set.order = val_set.order[: train.val_max_conversations]
    train_lengths = train_set.length_proxy(soft)
    _check_lengths(train_examples, train_lengths, "training")
    _check_lengths(val_examples, val_set.length_proxy(soft), "validation")
    return optimize(
        Job(
            out=out,
            resume=inputs.resume,
            record={**record, "elm_config": elm.config.model_dump(mode="json")},
            data_info={"train": train_set.info(), "val": val_set.info()},
            elm=elm,
            objective=LanguageModelling(),
            train_examples=train_examples,
            train_lengths=train_lengths,
            val_examples=val_examples,
            settings=train,
            seed=seed,
            total=train.max_steps or train.epochs * updates_per_epoch,
            updates_per_epoch=updates_per_epoch,
            tracker_config={"paradigm": p.name, "lr": train.lr, "batch_size": train.batch_size, "seed": seed},
        ),
        accelerator,
    )


# ------------------------------------------------------------------------------------ the optimizer loop


class Objective(Protocol):
    """What one training run minimises; the loop around it (batches, accumulation, checkpoints, resume,
    validation, early stopping) is the same for every objective."""

    unit: str  # what the loss is averaged over, for the loss curve's axis

    def units(self, batch: dict[str, Any]) -> int:
        """What the loss of a micro-batch is a sum over (answer tokens, preference pairs)."""
        ...

    def train_loss(self, model: Any, batch: dict[str, Any], n_global: float) -> torch.Tensor:
        """This micro-batch's summed loss divided by ``n_global``, the units of the whole update."""
        ...

    def val_sums(self, model: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Summed validation figures of a batch; ``loss`` first. Each is divided by the units in the end."""
        ...


class LanguageModelling:
    """Supervised fine-tuning: cross-entropy of the answer tokens (the labels)."""

    unit = "answer token"

    def units(self, batch: dict[str, Any]) -> int:
        return answer_tokens(batch)

    def train_loss(self, model: Any, batch: dict[str, Any], n_global: float) -> torch.Tensor:
        return model(batch, num_items_in_batch=n_global).loss

    def val_sums(self, model: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": model(batch, num_items_in_batch=1).loss}  # the sum over answer tokens


@dataclass
class Job:
    """One run of the optimizer loop: the model, what it minimises, on which examples, how, and where."""

    out: Path
    resume: bool
    record: dict[str, Any]  # the run.json fields the command decides (format, settings, inputs, ELM config)
    data_info: dict[str, Any]
    elm: Any
    objective: Objective
    train_examples: Any  # a dataset of examples with its .collator
    train_lengths: np.ndarray
    val_examples: Any
    settings: LoopSettings
    seed: int
    total: int  # the updates of the whole run (the learning-rate schedule's length)
    updates_per_epoch: int
    tracker_config: dict[str, Any]
    #: online DPO trains round by round, each on new examples: this call uses them from update ``first``
    #: (where their epochs start) and returns at update ``stop``
    first: int = 0
    stop: int | None = None


def optimize(job: Job, accelerator: Any) -> TrainResult:
    """Train ``job.elm`` on ``job.objective`` to ``job.total`` updates (or resume at the last checkpoint)."""
    from ecgbench.models.checkpoint import load_trained_parts, save_elm
    from ecgbench.train.optim import build_optimizer, build_scheduler

    out, elm, objective, train, seed, total = (
        job.out,
        job.elm,
        job.objective,
        job.settings,
        job.seed,
        job.total,
    )
    stop = total if job.stop is None else job.stop
    updates_per_epoch = job.updates_per_epoch
    main = accelerator.is_main_process
    P, rank = accelerator.num_processes, accelerator.process_index
    optimizer = build_optimizer(elm, lr=train.lr, weight_decay=train.weight_decay)
    scheduler = build_scheduler(
        optimizer,
        total_steps=total,
        warmup_steps=train.warmup_steps,
        schedule=train.schedule,
        min_ratio=train.min_lr_ratio,
    )
    # The scheduler is stepped here once per update, not by accelerate (which steps it per process).
    wrapped, optimizer = accelerator.prepare(elm, optimizer)

    start, best_val, best_step, stale = 0, math.inf, None, 0
    if job.resume:
        step, where = rd.checkpoints(out)[-1]
        load_trained_parts(elm, where)
        position = st.load_training_state(where / st.STATE_DIR, optimizer.optimizer, scheduler, rank)
        start, best_val, best_step, stale = (
            position["step"],
            position["best_val_loss"] if position["best_val_loss"] is not None else math.inf,
            position["best_step"],
            position["stale_evaluations"],
        )
        if main:
            rd.truncate_metrics(out, start)
            console.print(f"resuming {out} at update {start} of {total}")
    elif main:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if main:
        rd.write_json(
            out / rd.RUN_FILE,
            {
                **job.record,
                "versions": rd.library_versions(),
                "git_revision": rd.git_revision(),
                "data": job.data_info,
                "processes": P,
                "status": "running",
                "total_steps": total,
            },
        )
    if train.report_to != "none":
        accelerator.init_trackers(
            "tensorboard" if train.report_to == "tensorboard" else "ecgbench",
            config=job.tracker_config,
        )

    stream = BatchStream(
        job.train_lengths,
        batch_size=train.batch_size,
        grad_accum=train.grad_accum,
        processes=P,
        rank=rank,
        seed=seed,
        group_by_length=train.group_by_length,
        start=start,
        updates=stop,
        offset=job.first,
    )
    loader = _loader(job.train_examples, stream, train.num_workers)
    n_val = len(job.val_examples)
    val_batches = [
        list(range(i, min(i + train.batch_size * P, n_val)))[rank::P]
        for i in range(0, n_val, train.batch_size * P)
    ]
    val_loader = _loader(job.val_examples, [b for b in val_batches if b], 0)

    def save_checkpoint(step: int) -> None:
        rd.write_checkpoint(rd.step_dir(out, step), functools.partial(write_state, step=step), accelerator)
        if main:
            rd.prune_checkpoints(out, train.keep_checkpoints)

    def write_state(tmp: Path, step: int) -> None:
        save_elm(elm, tmp)
        st.save_training_state(
            tmp / st.STATE_DIR,
            optimizer.optimizer,
            scheduler,
            {
                "step": step,
                "epoch": stream.position(step)[0] if step < stop else None,
                "best_val_loss": None if best_val == math.inf else best_val,
                "best_step": best_step,
                "stale_evaluations": stale,
            },
            rank,
        )

    val_skips_reported = False

    @torch.no_grad()
    def validate() -> dict[str, float]:
        """Each validation figure (``loss`` first), summed over all processes and divided by the units."""
        nonlocal val_skips_reported
        wrapped.eval()
        sums: dict[str, torch.Tensor] = {}
        units = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        for batch in val_loader:
            if not val_skips_reported:  # the same every evaluation: said once, never dropped silently
                for reason in batch["skipped"]:
                    console.print(f"[yellow]skipped in validation[/yellow] {reason}")
            if "input_ids" not in batch:
                continue
            n = objective.units(batch)
            if n:
                # the unwrapped model: a DDP forward would sync buffers, which hangs when processes hold
                # different numbers of validation batches
                with accelerator.autocast():
                    figures = objective.val_sums(elm, batch)
                for key, value in figures.items():
                    sums[key] = sums.get(key, torch.zeros_like(units)) + value.detach().double()
                units += n
        wrapped.train()
        val_skips_reported = True
        units = accelerator.reduce(units, "sum")
        if float(units) == 0:
            raise UserError("the validation split has nothing to score")
        return {key: float(accelerator.reduce(value, "sum") / units) for key, value in sums.items()}

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]train[/bold] {task.completed}/{task.total}"),
        BarColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not main,
        transient=False,
    )
    skipped_total = 0
    stopped_early = False
    window_loss, window_tokens, window_start, window_steps = 0.0, 0, time.perf_counter(), 0
    wrapped.train()
    micro: list[dict[str, Any]] = []
    step = start
    with progress:
        task = progress.add_task("train", total=total, completed=start, stats="")
        for batch in loader:
            micro.append(batch)
            if len(micro) < train.grad_accum:
                continue
            skipped = [reason for b in micro for reason in b["skipped"]]
            skipped_total += len(skipped)
            for reason in skipped:
                console.print(f"[yellow]skipped[/yellow] {reason}")
            local = torch.tensor(float(sum(objective.units(b) for b in micro)), device=accelerator.device)
            n_global = float(accelerator.reduce(local, "sum"))
            update_loss = torch.zeros((), dtype=torch.float64, device=accelerator.device)
            seen = torch.zeros((), dtype=torch.float64, device=accelerator.device)
            for j, b in enumerate(micro):
                sync = j == len(micro) - 1
                with nullcontext() if sync else accelerator.no_sync(wrapped):
                    if "input_ids" in b and objective.units(b):
                        loss = objective.train_loss(wrapped, b, n_global)
                        # DDP averages gradients over processes: scale so the sum over all units of
                        # the global batch, divided by their count, is what is minimised
                        accelerator.backward(loss * P)
                        update_loss += loss.detach().double()
                        seen += b["attention_mask"].sum()
                    elif sync and P > 1:
                        raise UserError("a process received no usable examples in its last micro-batch")
            micro = []
            if train.max_grad_norm:
                accelerator.clip_grad_norm_(wrapped.parameters(), train.max_grad_norm)
            optimizer.step()
            lr = scheduler.get_last_lr()[0]  # the rate this update used (before the schedule moves on)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss = float(accelerator.reduce(update_loss, "sum"))
            window_loss += loss
            window_tokens += int(accelerator.reduce(seen, "sum"))
            window_steps += 1
            if step % train.log_every == 0 or step == stop:
                elapsed = max(time.perf_counter() - window_start, 1e-9)
                row = {
                    "step": step,
                    "epoch": round((step - job.first) / updates_per_epoch, 4),
                    "split": "train",
                    "loss": window_loss / window_steps,
                    "lr": lr,
                    "tokens_per_s": window_tokens / elapsed,
                }
                if torch.cuda.is_available():  # peak memory of this process's GPU since the start
                    row["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                if main:
                    rd.append_metrics(out, [row])
                accelerator.log(
                    {"train/loss": row["loss"], "train/lr": lr, "train/tokens_per_s": row["tokens_per_s"]},
                    step=step,
                )
                progress.update(
                    task, stats=f"loss {row['loss']:.4f}  lr {lr:.2e}  {row['tokens_per_s']:.0f} tok/s"
                )
                window_loss, window_tokens, window_start, window_steps = 0.0, 0, time.perf_counter(), 0
            progress.update(task, completed=step)
            evaluate = step % train.eval_every == 0 or step == stop
            if evaluate:
                figures = validate()
                val = figures["loss"]
                if main:
                    epoch = round((step - job.first) / updates_per_epoch, 4)
                    rd.append_metrics(
                        out, [{"step": step, "epoch": epoch, "split": "val", **figures, "lr": lr}]
                    )
                accelerator.log({f"val/{key}": value for key, value in figures.items()}, step=step)
                if val < best_val:
                    best_val, best_step, stale = val, step, 0
                    if main:
                        tmp = out / (rd.BEST_DIR + ".tmp")
                        if tmp.exists():
                            shutil.rmtree(tmp)
                        save_elm(elm, tmp)
                        rd.replace_dir(tmp, out / rd.BEST_DIR)
                else:
                    stale += 1
                if main:
                    console.print(
                        f"step {step}: val loss {val:.4f} (best {best_val:.4f} at step {best_step})"
                    )
            if (train.save_every and step % train.save_every == 0) or (not train.save_every and evaluate):
                save_checkpoint(step)
            accelerator.wait_for_everyone()
            if train.patience is not None and stale >= train.patience:
                stopped_early = True
                if main:
                    console.print(f"early stop: {stale} evaluations without a better val loss")
                break
    if not rd.checkpoints(out) or rd.checkpoints(out)[-1][0] != step:
        save_checkpoint(step)  # the end of a run is always resumable (e.g. to train further)
    accelerator.wait_for_everyone()
    if train.report_to != "none":
        accelerator.end_training()
    if main:
        run = rd.read_run(out)
        run.update(
            status="stopped early" if stopped_early else "finished" if step >= total else "running",
            steps=step,
            best_step=best_step,
            best_val_loss=None if best_val == math.inf else best_val,
            skipped_conversations=skipped_total,
        )
        rd.write_json(out / rd.RUN_FILE, run)
        rd.plot_loss_curve(out, objective.unit)
    return TrainResult(
        out=out,
        steps=step,
        best_step=best_step,
        best_val_loss=None if best_val == math.inf else best_val,
        stopped_early=stopped_early,
        skipped=skipped_total,
    )


__all__ = ["Job", "LanguageModelling", "Objective", "TrainInputs", "TrainResult", "optimize", "train_elm"]

"""Stage 1: pretrain an ECG or vision encoder on a segment store, and embed segments with it.

Objectives, one per encoder family:

- masked reconstruction (``st-mem``, ``mlae``, ``mtae``): the encoders' own ``pretrain_loss``;
- ECG-report contrastive (``merl``): MERL's own ``pretrain_loss`` (cross-modal + uni-modal InfoNCE);
- image-report contrastive (``clip``: symmetric InfoNCE, ``siglip``: pairwise sigmoid loss): the vision
  tower's mean patch feature against the family's text tower (CLIPTextModel / SiglipTextModel);
- masked image modelling (``vit``, ``dinov2``, SimMIM): random 32-pixel blocks of the image are replaced by
  a learned patch, a linear head predicts the normalised pixels of the masked blocks from the patch
  features, L1 loss on the masked pixels only.

Text for the contrastive objectives is the store's ``report`` and, where a record has none, its label
names joined with commas; segments with neither are left out (and counted). The tiny text towers read
UTF-8 bytes (MERL's ``ByteTokenizer``: no vocabulary file, works offline); ``base`` loads the family's hub
text tower and its own tokenizer.

Every objective trains exactly what stage 2 uses: ``features`` of the encoder, unmasked at inference.

The run folder::

    OUT/run.json                   settings, inputs (splits checksum), resolved sizes, versions, status, best
    OUT/metrics.jsonl              one line per update (train) and per evaluation (val): step, split, loss, lr
    OUT/encoder/                   the best checkpoint by validation loss (``save_pretrained``), read by
                                   ``load_encoder``, ``encoder embed`` and an ELM's ``encoder_checkpoint``
    OUT/checkpoints/step-N/        the newest resumable state: objective weights (encoder, heads, text tower)
                                   and ``training_state/`` (``ecgbench.train.state``: no pickle)

Validation masks come from fixed seeds, so evaluations compare. Devices, DDP, mixed precision and seeding
come from accelerate; the data order (``loop.BatchStream``: a function of seed and epoch), the optimizer and
the schedule (counted in optimizer updates) are the ELM trainer's.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from ecgbench.console import console, progress
from ecgbench.data.splits import read_record_splits, segments_in_split, split_segment_ids
from ecgbench.data.store import SegmentStore
from ecgbench.errors import UserError
from ecgbench.files import atomic_write
from ecgbench.models.encoders import ECG_ENCODERS, ENCODER_NAMES, VISION_ENCODERS, ECGEncoder, build_encoder
from ecgbench.settings import EncoderTrainSettings

RUN_FORMAT = "ecgbench-encoder-run"
RUN_VERSION = 1
EMBEDDINGS_FORMAT = "ecgbench-embeddings"
EMBEDDINGS_VERSION = 1
CHECKPOINT_DIR = "encoder"

Objective = Literal["masked-reconstruction", "ecg-text-contrastive", "image-text-contrastive", "masked-image"]
OBJECTIVES: dict[str, Objective] = {
    "st-mem": "masked-reconstruction",
    "mlae": "masked-reconstruction",
    "mtae": "masked-reconstruction",
    "merl": "ecg-text-contrastive",
    "clip": "image-text-contrastive",
    "siglip": "image-text-contrastive",
    "vit": "masked-image",
    "dinov2": "masked-image",
}
TEXT_OBJECTIVES = ("ecg-text-contrastive", "image-text-contrastive")


# -- inputs ------------------------------------------------------------------------------------------


def resolve_representation(encoder: str, representation: str | None) -> str:
    """The input an encoder reads: its default, or ``representation`` if the encoder accepts it."""
    if encoder not in ENCODER_NAMES:
        raise UserError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODER_NAMES)}")
    if encoder in ECG_ENCODERS:
        if representation not in (None, "signal"):
            raise UserError(f"encoder {encoder} reads the signal representation, not {representation!r}")
        return "signal"
    if representation not in (None, "image", "stacked"):
        raise UserError(f"vision encoder {encoder} reads image or stacked inputs, not {representation!r}")
    return representation or "image"


def segment_texts(index: pa.Table, segment_ids: np.ndarray) -> list[str | None]:
    """Each segment's report, else its label names joined with commas, else None."""
    rows = index.select(["report", "labels"]).take(pa.array(segment_ids))
    texts: list[str | None] = []
    for report, labels in zip(
        rows.column("report").to_pylist(), rows.column("labels").to_pylist(), strict=True
    ):
        report = (report or "").strip()
        named = ", ".join(label.strip() for label in labels or [] if label and label.strip())
        texts.append(report or named or None)
    return texts


class SegmentBatches(torch.utils.data.Dataset):
    """Segments of one split as batches of one representation (plus their texts).

    Items are positions; ``collate`` reads the batch from the store in one ``read_many`` and builds the
    representation for the whole batch at once (vectorised image rendering)."""

    def __init__(
        self,
        store: SegmentStore,
        segment_ids: np.ndarray,
        texts: list[str] | None,
        representation: str,
        image_size: int = 224,
    ):
        self.store = store
        self.segment_ids = np.asarray(segment_ids, dtype=np.int64)
        self.texts = texts
        self.representation = representation
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.segment_ids)

    def __getitem__(self, position: int) -> int:
        return position

    def collate(self, positions: Sequence[int]) -> dict[str, Any]:
        from ecgbench.models.inputs import to_representation

        chosen = np.asarray(positions, dtype=np.int64)
        signals = self.store.read_many(self.segment_ids[chosen])
        kind: Any = self.representation
        inputs = to_representation(signals, kind, self.image_size, fs=float(self.store.fs))
        texts = [self.texts[p] for p in chosen] if self.texts is not None else None
        return {"inputs": inputs, "texts": texts}


def fixed_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """Positions 0..n-1 in order, cut into max(1, n // batch_size) near-equal batches: no batch is smaller
    than ``batch_size`` (or n), so a contrastive loss never sees a batch of one."""
    return [part for part in np.array_split(np.arange(n), max(1, n // batch_size)) if len(part)]


# -- objectives --------------------------------------------------------------------------------------


class PretrainObjective(nn.Module):
    """The encoder's own ``pretrain_loss`` (masked autoencoders, MERL) behind ``forward``, so DDP and
    accelerate's autocast see the call."""

    def __init__(self, encoder: ECGEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(
        self, inputs: torch.Tensor, texts: list[str] | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.encoder.pretrain_loss(inputs, texts=texts, generator=generator)


#: SimMIM's best mask unit for ViT-B/16 (Xie et al., CVPR 2022): 32-pixel blocks, 60 % of them masked.
MIM_BLOCK = 32
MIM_MASK_RATIO = 0.6


class MaskedImageObjective(nn.Module):
    """SimMIM on a vision tower: masked blocks get a learned fill, a linear head reconstructs them."""

    def __init__(self, encoder: Any, mask_ratio: float = MIM_MASK_RATIO):
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.patch = int(encoder.tower.config.patch_size)
        size = encoder.image_size
        if size % self.patch:
            raise UserError(
                f"image size {size} is not a multiple of the {encoder.name} patch size {self.patch}"
            )
        self.grid = size // self.patch
        # Mask whole 32-pixel blocks where they tile the patch grid, else single patches.
        block = MIM_BLOCK if MIM_BLOCK % self.patch == 0 and size % MIM_BLOCK == 0 else self.patch
        self.block_patches = block // self.patch
        # The fill is a learned image patch, tiled over masked areas; after the tower's linear patch
        # embedding it acts as SimMIM's learned mask token.
        self.mask_fill = nn.Parameter(torch.full((3, self.patch, self.patch), 0.5))
        self.head = nn.Linear(encoder.out_dim, 3 * self.patch * self.patch)

    def forward(
        self, inputs: torch.Tensor, texts: list[str] | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        from ecgbench.models.encoders.transformer import sample_kept_groups

        size = self.encoder.image_size
        if inputs.ndim != 4 or tuple(inputs.shape[1:]) != (3, size, size):
            raise UserError(
                f"masked image modelling needs images (B, 3, {size}, {size}), got {tuple(inputs.shape)}"
            )
        batch, blocks = inputs.shape[0], self.grid // self.block_patches
        kept = sample_kept_groups(
            batch, blocks * blocks, self.mask_ratio, generator=generator, device=inputs.device
        )
        masked = (~kept).view(batch, blocks, blocks)
        masked = masked.repeat_interleave(self.block_patches, 1).repeat_interleave(self.block_patches, 2)
        pixels = masked.repeat_interleave(self.patch, 1).repeat_interleave(self.patch, 2)[:, None]
        fill = self.mask_fill.repeat(1, self.grid, self.grid).to(inputs.dtype)
        tokens = self.encoder.features(torch.where(pixels, fill, inputs))  # (B, grid * grid, width)
        prediction = self.head(tokens)
        # Targets in the space the tower reads (the family's normalisation), patch by patch in token order.
        target = self.encoder.preprocess(inputs)
        target = target.unfold(2, self.patch, self.patch).unfold(3, self.patch, self.patch)  # B,3,g,g,p,p
        target = target.permute(0, 2, 3, 1, 4, 5).reshape(batch, self.grid * self.grid, -1)
        error = (prediction.float() - target.float()).abs().mean(dim=-1)
        weights = masked.flatten(1).to(error.dtype)
        return (error * weights).sum() / weights.sum().clamp_min(1.0)


TINY_TEXT_TOWER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 128,
}
TEXT_TOWERS = {"clip": ("CLIPTextModel", "CLIPTextConfig"), "siglip": ("SiglipTextModel", "SiglipTextConfig")}


def build_text_tower(family: str, preset: str) -> tuple[nn.Module, Any]:
    """The family's text tower and a tokenizer: tiny (random init, UTF-8 byte ids) or the hub's."""
    import transformers

    from ecgbench.models.encoders.merl import ByteTokenizer, HFTokenizer
    from ecgbench.models.encoders.vision import FAMILIES

    model_name, config_name = TEXT_TOWERS[family]
    model_class = getattr(transformers, model_name)
    if preset == "tiny":
        tokenizer = ByteTokenizer(TINY_TEXT_TOWER["max_position_embeddings"])
        config = getattr(transformers, config_name)(
            vocab_size=ByteTokenizer.vocab_size,
            pad_token_id=ByteTokenizer.pad_id,
            bos_token_id=ByteTokenizer.cls_id,
            eos_token_id=ByteTokenizer.sep_id,
            **TINY_TEXT_TOWER,
        )
        return model_class(config), tokenizer
    source = FAMILIES[family].hub_id
    try:
        model = model_class.from_pretrained(source)
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except OSError as exc:
        raise UserError(
            f"cannot load the {family} text tower from {source!r}: {str(exc).splitlines()[0]}"
        ) from None
    return model, HFTokenizer(tokenizer, int(model.config.max_position_embeddings))


def _same_text(texts: list[str], device: torch.device) -> torch.Tensor:
    """(B, B) bool: pairs with identical texts, which are positives too (two records reading "sinus rhythm"
    must not be pushed apart)."""
    codes = {text: i for i, text in enumerate(dict.fromkeys(texts))}
    ids = torch.tensor([codes[t] for t in texts], device=device)
    return ids[:, None] == ids[None, :]


class ImageTextObjective(nn.Module):
    """CLIP (symmetric InfoNCE) or SigLIP (pairwise sigmoid) between ECG images and their texts."""

    def __init__(self, encoder: Any, text_tower: nn.Module, tokenizer: Any, loss: str, proj_dim: int = 64):
        super().__init__()
        self.encoder = encoder
        self.text_tower = text_tower
        self.tokenizer = tokenizer
        self.loss = loss
        self.image_proj = nn.Linear(encoder.out_dim, proj_dim)
        self.text_proj = nn.Linear(int(text_tower.config.hidden_size), proj_dim)
        if loss == "clip":  # CLIP's initial temperature 0.07
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        else:  # SigLIP's initial t' = log 10 and b = -10 (Zhai et al., ICCV 2023)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def embed_images(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.encoder.features(inputs).mean(dim=1)).float(), dim=-1)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        device = self.text_proj.weight.device
        batch = {k: v.to(device) for k, v in self.tokenizer(list(texts)).items()}
        hidden = self.text_tower(**batch).last_hidden_state
        # The end-of-text token (last real position): it has seen the whole text in CLIP's causal tower.
        last = batch["attention_mask"].sum(dim=1) - 1
        pooled = hidden[torch.arange(hidden.shape[0], device=device), last]
        return F.normalize(self.text_proj(pooled).float(), dim=-1)

    def forward(
        self, inputs: torch.Tensor, texts: list[str] | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if texts is None or len(texts) != inputs.shape[0]:
            raise UserError("image-text training needs one text per image")
        images, words = self.embed_images(inputs), self.embed_texts(texts)
        positive = _same_text(texts, images.device)
        if self.loss == "clip":
            logits = self.logit_scale.exp().clamp(max=100.0) * images @ words.T
            # positives are symmetric and each row's share the same count: one target matrix both ways
            targets = positive.float() / positive.sum(dim=1, keepdim=True)
            return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        logits = self.logit_scale.exp() * images @ words.T + self.logit_bias
        signs = positive.float() * 2 - 1
        return -F.logsigmoid(signs * logits).sum() / inputs.shape[0]


def build_objective(encoder_name: str, preset: str, representation: str) -> nn.Module:
    """A fresh encoder inside the module whose ``forward(inputs, texts, generator)`` is its training loss."""
    objective = OBJECTIVES[encoder_name]
    if encoder_name in ECG_ENCODERS:
        return PretrainObjective(build_encoder(encoder_name, preset))
    encoder = build_encoder(encoder_name, preset, trainable=True, representation=representation)
    if objective == "masked-image":
        return MaskedImageObjective(encoder)
    text_tower, tokenizer = build_text_tower(encoder_name, preset)
    return ImageTextObjective(encoder, text_tower, tokenizer, loss=encoder_name)


# -- training ----------------------------------------------------------------------------------------

RUN_FILE = "run.json"  # what ran: settings, inputs, resolved sizes, versions, status, best step
OBJECTIVE_WEIGHTS = "objective.safetensors"  # in checkpoints/step-N: encoder plus heads and text tower


@dataclass
class EncoderTrainResult:
    out: Path
    checkpoint: Path
    steps: int
    best_step: int
    best_val_loss: float
    initial_val_loss: float
    train_segments: int
    val_segments: int
    skipped_without_text: dict[str, int]
    seconds: float


@dataclass
class _SplitData:
    train: SegmentBatches
    val: SegmentBatches
    skipped: dict[str, int]


def _split_data(
    store: SegmentStore, splits_path: Path, cfg: EncoderTrainSettings, representation: str
) -> _SplitData:
    record_splits = read_record_splits(Path(splits_path))
    needs_text = OBJECTIVES[cfg.encoder] in TEXT_OBJECTIVES
    parts: dict[str, SegmentBatches] = {}
    skipped: dict[str, int] = {}
    for role, split in (("train", cfg.train_split), ("val", cfg.val_split)):
        ids = segments_in_split(store.index, record_splits, split)
        texts = None
        if needs_text:
            found = segment_texts(store.index, ids)
            keep = np.array([t is not None for t in found], dtype=bool)
            skipped[split] = int((~keep).sum())
            ids, texts = ids[keep], [t for t in found if t is not None]
            if len(ids) < 2:
                raise UserError(
                    f"the {split} split has {len(ids)} segment(s) with a report or labels; "
                    f"{cfg.encoder} needs at least 2 to contrast"
                )
        parts[role] = SegmentBatches(store, ids, texts, representation)
    return _SplitData(parts["train"], parts["val"], skipped)


def _accelerator(cfg: EncoderTrainSettings) -> Any:
    from accelerate.utils import DistributedDataParallelKwargs

    from ecgbench.train.devices import make_accelerator

    # Text towers and MERL's BERT carry pooling heads the losses never use: let DDP skip them.
    return make_accelerator(
        cfg.mixed_precision, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]
    )


def _read_run(out: Path) -> dict[str, Any]:
    from ecgbench.files import read_json_document

    if not (out / RUN_FILE).is_file():
        raise UserError(f"{out} is not an encoder training run (no {RUN_FILE}); start one with --out")
    return read_json_document(
        out / RUN_FILE, fmt=RUN_FORMAT, what="an encoder training run", version=RUN_VERSION
    )


def _same_run(previous: dict[str, Any], current: dict[str, Any]) -> None:
    """--resume continues only the run that was started: same settings and inputs."""
    old, new = previous.get("settings", {}), current["settings"]
    changed = [f"encoder.{k}" for k, v in new["encoder"].items() if old.get("encoder", {}).get(k) != v]
    changed += ["seed"] if old.get("seed") != new["seed"] else []
    changed += [k for k in ("store", "splits") if previous.get(k) != current[k]]
    if changed:
        raise UserError(f"--resume: this run was made with other settings or inputs ({', '.join(changed)})")


def train_encoder(
    store_path: Path,
    splits_path: Path,
    out: Path,
    cfg: EncoderTrainSettings,
    *,
    seed: int = 0,
    resume: bool = False,
) -> EncoderTrainResult:
    """Train ``cfg.encoder`` on the train split and keep the checkpoint with the lowest validation loss.

    Every input is checked before anything is written. ``resume`` continues a killed (or finished) run in
    ``out`` from its last resumable checkpoint, at the same update with the same data order and RNG."""
    from accelerate.utils import set_seed
    from safetensors.torch import load_model, save_model

    from ecgbench.files import check_output, sha256_file
    from ecgbench.train import run_dir as rd
    from ecgbench.train import state as st
    from ecgbench.train.loop import BatchStream
    from ecgbench.train.optim import build_optimizer, build_scheduler

    started = time.perf_counter()
    out = Path(out)
    check_output(out, "--out", [store_path, splits_path])
    if resume:
        previous = _read_run(out)
        if not rd.checkpoints(out):
            raise UserError(
                f"--resume: {out} has no finished checkpoint yet; start it again without --resume"
            )
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(
            f"--out {out} already holds files; give --resume to continue that run, or a new folder"
        )
    representation = resolve_representation(cfg.encoder, cfg.representation)
    if OBJECTIVES[cfg.encoder] in TEXT_OBJECTIVES and cfg.batch_size < 2:
        raise UserError(f"{cfg.encoder} contrasts the segments of a batch: --batch-size must be at least 2")
    store = SegmentStore.open(store_path)
    record: dict[str, Any] = {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "settings": {"encoder": cfg.model_dump(mode="json"), "seed": seed},
        "store": str(Path(store_path).resolve()),
        "splits": {str(Path(splits_path).resolve()): sha256_file(Path(splits_path))}
        if Path(splits_path).is_file()
        else str(splits_path),
    }
    if resume:
        _same_run(previous, record)

    data = _split_data(store, Path(splits_path), cfg, representation)
    accelerator = _accelerator(cfg)
    processes, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    updates_per_epoch = len(data.train) // (cfg.batch_size * processes) // cfg.grad_accum
    if updates_per_epoch == 0:
        raise UserError(
            f"the {cfg.train_split} split has {len(data.train)} usable segments, fewer than one update "
            f"(--batch-size {cfg.batch_size} x --grad-accum {cfg.grad_accum} x {processes} process(es))"
        )
    # Seeded per process (seed + rank), so each process draws its own masks and dropout; DDP starts
    # every process from rank 0's weights, and one process runs exactly as with set_seed(seed).
    set_seed(seed, device_specific=True)
    objective = build_objective(cfg.encoder, cfg.preset, representation)
    encoder: ECGEncoder = objective.encoder  # type: ignore[assignment]
    image_size = int(getattr(encoder, "image_size", 0)) or None  # vision towers read their own size
    if image_size:
        data.train.image_size = data.val.image_size = image_size
    _probe(objective, data.train, seed)
    total = cfg.max_steps or cfg.epochs * updates_per_epoch

    optimizer = build_optimizer(objective, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Stepped here once per update, not by accelerate (whose wrapper steps it once per process).
    scheduler = build_scheduler(
        optimizer, total_steps=total, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule
    )
    wrapped, optimizer = accelerator.prepare(objective, optimizer)

    start, best_val, best_step, initial_val = 0, math.inf, 0, math.nan
    if resume:
        start, where = rd.checkpoints(out)[-1]
        load_model(objective, str(where / OBJECTIVE_WEIGHTS), strict=True)
        position = st.load_training_state(where / st.STATE_DIR, optimizer.optimizer, scheduler, rank)
        best_val, best_step, initial_val = (
            position["best_val_loss"],
            position["best_step"],
            position["initial_val_loss"],
        )
        if main:
            rd.truncate_metrics(out, start)
            console.print(f"resuming {out} at update {start} of {total}")
    elif main:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    resolved = {
        "objective": OBJECTIVES[cfg.encoder],
        "representation": representation,
        "image_size": image_size,
        "text": "report, else label names" if OBJECTIVES[cfg.encoder] in TEXT_OBJECTIVES else None,
        "processes": processes,
        "updates_per_epoch": updates_per_epoch,
        "total_steps": total,
        "train_segments": len(data.train),
        "val_segments": len(data.val),
        "skipped_without_text": data.skipped,
    }
    run = {
        **record,
        "resolved": resolved,
        "versions": rd.library_versions(),
        "git_revision": rd.git_revision(),
    }
    if main:
        rd.write_json(out / RUN_FILE, {**run, "status": "running"})

    stream = BatchStream(
        np.zeros(len(data.train)),
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        processes=processes,
        rank=rank,
        seed=seed,
        group_by_length=False,
        start=start,
        updates=total,
    )
    # Its own generator: a DataLoader iterator otherwise draws its base seed from the global RNG, which a
    # resumed run restores before that draw and a fresh run after it (the masks would then differ).
    loader = torch.utils.data.DataLoader(
        data.train,
        batch_sampler=stream,
        collate_fn=data.train.collate,
        generator=torch.Generator().manual_seed(seed),
    )
    val_batches = fixed_batches(len(data.val), cfg.batch_size)
    checkpoint = out / CHECKPOINT_DIR
    lr = scheduler.get_last_lr()[0]

    def log(step: int, split: str, loss: float) -> None:
        if main:  # val rows carry the learning rate of the update that made the weights
            rd.append_metrics(out, [{"step": step, "split": split, "loss": loss, "lr": lr}])

    def save_best() -> None:
        if main:
            tmp = out / (CHECKPOINT_DIR + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            encoder.save_pretrained(tmp)
            rd.replace_dir(tmp, checkpoint)

    def save_resumable(step: int) -> None:
        rd.write_checkpoint(rd.step_dir(out, step), functools.partial(write_state, step=step), accelerator)
        if main:
            rd.prune_checkpoints(out, 1)

    def write_state(tmp: Path, step: int) -> None:
        tmp.mkdir(parents=True)
        atomic_write(tmp / OBJECTIVE_WEIGHTS, lambda path: save_model(objective, str(path)))
        st.save_training_state(
            tmp / st.STATE_DIR,
            optimizer.optimizer,
            scheduler,
            {
                "step": step,
                "best_val_loss": best_val,
                "best_step": best_step,
                "initial_val_loss": initial_val,
            },
            rank,
        )

    def validate(step: int) -> float:
        # On the unwrapped module (still autocast): through DDP every forward broadcasts buffers (MERL's
        # batch norms), a collective that hangs when the processes hold different numbers of val batches.
        loss = _validation_loss(accelerator.unwrap_model(wrapped), data.val, val_batches, accelerator, seed)
        log(step, "val", loss)
        wrapped.train()
        return loss

    if start == 0:  # the untrained encoder is the first candidate, and the baseline of the curve
        best_val = initial_val = validate(0)
        save_best()

    step = start
    micro: list[dict[str, Any]] = []
    window: list[float] = []
    wrapped.train()
    bar = progress()
    bar.disable = not main  # one bar, not one per process
    with bar:
        task = bar.add_task(f"train {cfg.encoder}", total=total, completed=start)
        for batch in loader:
            micro.append(batch)
            if len(micro) < cfg.grad_accum:
                continue
            for j, part in enumerate(micro):
                # DDP averages over processes; each micro-batch loss is a batch mean: the update's
                # gradient is that of the mean over the grad_accum x processes micro-batches
                with nullcontext() if j == len(micro) - 1 else accelerator.no_sync(wrapped):
                    loss = wrapped(part["inputs"].to(accelerator.device), part["texts"])
                    accelerator.backward(loss / cfg.grad_accum)
                window.append(float(loss.detach()))
            micro = []
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            if not optimizer.step_was_skipped:  # fp16 overflow: no update, so no schedule step
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            local = torch.tensor(sum(window) / len(window), device=accelerator.device)
            train_loss = float(accelerator.reduce(local, "mean"))
            window = []
            log(step, "train", train_loss)
            bar.update(task, completed=step, description=f"train {cfg.encoder} loss {train_loss:.4f}")
            if step % cfg.eval_every == 0 or step == total:
                val_loss = validate(step)
                if val_loss < best_val:
                    best_val, best_step = val_loss, step
                    save_best()
                save_resumable(step)
            accelerator.wait_for_everyone()
    if not rd.checkpoints(out) or rd.checkpoints(out)[-1][0] != step:
        save_resumable(step)
    if best_step == 0:
        console.print(
            "[yellow]warning:[/yellow] the validation loss never went below the untrained encoder's; "
            f"{checkpoint} holds the initial weights"
        )
    result = EncoderTrainResult(
        out=out,
        checkpoint=checkpoint,
        steps=step,
        best_step=best_step,
        best_val_loss=best_val,
        initial_val_loss=initial_val,
        train_segments=len(data.train),
        val_segments=len(data.val),
        skipped_without_text=data.skipped,
        seconds=time.perf_counter() - started,
    )
    if main:
        rd.write_json(
            out / RUN_FILE,
            {
                **run,
                "status": "finished",
                "steps": step,
                "best_step": best_step,
                "best_val_loss": best_val,
                "initial_val_loss": initial_val,
            },
        )
    accelerator.wait_for_everyone()
    return result


def _probe(objective: nn.Module, train: SegmentBatches, seed: int) -> None:
    """One loss on two training segments before anything is written: a segment length the encoder cannot
    patch, or an input it cannot read, fails here as a one-line error."""
    batch = train.collate(list(range(min(2, len(train)))))
    objective.eval()
    with torch.no_grad():
        objective(batch["inputs"], batch["texts"], generator=torch.Generator().manual_seed(seed))
    objective.train()


def _validation_loss(
    objective: nn.Module, val: SegmentBatches, batches: list[np.ndarray], accelerator: Any, seed: int
) -> float:
    """Mean loss over the validation segments (weighted by batch size), with masks drawn from fixed seeds
    so every evaluation sees the same masks. Batches are dealt round-robin to the processes."""
    objective.eval()
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    with torch.no_grad():
        for number in range(accelerator.process_index, len(batches), accelerator.num_processes):
            batch = val.collate(batches[number].tolist())
            generator = torch.Generator().manual_seed(seed * 1_000_003 + number)
            loss = objective(batch["inputs"].to(accelerator.device), batch["texts"], generator=generator)
            size = len(batches[number])
            total += torch.stack([loss.detach().double() * size, torch.tensor(size, dtype=torch.float64)]).to(
                total.device
            )
    total = accelerator.reduce(total, "sum")
    return float(total[0] / total[1])


# -- embedding ---------------------------------------------------------------------------------------


@dataclass
class EmbedResult:
    out: Path
    segments: int
    dim: int
    seconds: float


def embed_segments(
    checkpoint: Path,
    store_path: Path,
    out: Path,
    *,
    splits_path: Path | None = None,
    split: str | None = None,
    batch_size: int = 64,
    representation: str | None = None,
) -> EmbedResult:
    """Mean-pooled ``features`` of every segment (or of one split) as float32 rows of a Parquet file with
    ``segment_id``, ``corpus``, ``record_id`` and ``embedding`` (a fixed-size list)."""
    import pyarrow.parquet as pq
    from accelerate import PartialState

    from ecgbench.files import check_output
    from ecgbench.models.encoders import load_encoder
    from ecgbench.models.encoders.base import read_checkpoint_meta
    from ecgbench.models.inputs import to_representation

    started = time.perf_counter()
    out = Path(out)
    check_output(out, "--out", [store_path, checkpoint, splits_path])
    if out.suffix != ".parquet":
        raise UserError(f"--out {out} must be a .parquet file")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a .parquet file name")
    meta = read_checkpoint_meta(Path(checkpoint))
    name = meta["encoder"]
    chosen = resolve_representation(name, representation)
    options = {"representation": chosen} if name in VISION_ENCODERS and representation else {}
    store = SegmentStore.open(store_path)
    ids = split_segment_ids(store.index, splits_path, split)
    if ids is None:
        ids = np.arange(len(store), dtype=np.int64)
    encoder = load_encoder(checkpoint, **options)
    device = PartialState().device
    encoder.to(device).eval()
    kind = encoder.representation
    image_size = int(getattr(encoder, "image_size", 224))

    keys = store.index.select(["segment_id", "corpus", "record_id"]).take(pa.array(ids))
    dim = int(encoder.out_dim)
    schema = pa.schema(
        [
            ("segment_id", pa.int64()),
            ("corpus", pa.string()),
            ("record_id", pa.string()),
            ("embedding", pa.list_(pa.float32(), dim)),
        ],
        metadata={
            "ecgbench": json.dumps(
                {
                    "format": EMBEDDINGS_FORMAT,
                    "version": EMBEDDINGS_VERSION,
                    "encoder": name,
                    "checkpoint": str(Path(checkpoint).resolve()),
                    "representation": kind,
                    "pooling": "mean of the feature tokens",
                    "store": str(Path(store_path).resolve()),
                    "split": split,
                }
            )
        },
    )

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer, progress() as bar:
            task = bar.add_task(f"embed with {name}", total=len(ids))
            with torch.no_grad():
                for start in range(0, len(ids), batch_size):
                    chunk = ids[start : start + batch_size]
                    inputs = to_representation(store.read_many(chunk), kind, image_size, fs=float(store.fs))
                    pooled = encoder.features(inputs.to(device)).float().mean(dim=1).cpu().numpy()  # type: ignore[union-attr]
                    values = pa.FixedSizeListArray.from_arrays(
                        pa.array(pooled.reshape(-1), pa.float32()), dim
                    )
                    rows = keys.slice(start, len(chunk))
                    writer.write_table(
                        pa.table([*rows.columns, values], schema=schema), row_group_size=len(chunk)
                    )
                    bar.update(task, advance=len(chunk))

    atomic_write(out, write)
    return EmbedResult(out=out, segments=len(ids), dim=dim, seconds=time.perf_counter() - started)


def read_embeddings(path: Path) -> tuple[pa.Table, np.ndarray]:
    """An embeddings file: its key columns and the (n, dim) float32 matrix."""
    from ecgbench.files import read_parquet

    table = read_parquet(Path(path), "embeddings file")
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    matrix = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32, copy=False)
    return table.drop_columns(["embedding"]), matrix

"""`ecgbench train <paradigm>` through the command line on the bundled real sample (labels conversations,
split by patient with `data split --folds 5`).

Every paradigm trains a few seeded steps with tiny GPT-2 (the real GPT-2 vocabulary, random weights) and
tiny encoders, and its training and validation losses fall; the run folder holds every artefact; every
flag acts (each run below tests several); bad inputs fail in one line before anything is written.

Runs are shared between tests (module-scoped, trained on first use) and kept short: 6 updates of 4
conversations, ECGs pooled to 8 soft tokens, the ECG-Byte run cut to 256 tokens.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

import ecgbench
from conftest import TrainData
from ecgbench.cli import app
from ecgbench.files import sha256_file
from ecgbench.models.checkpoint import load_elm, read_checkpoint_config
from ecgbench.train import run_dir
from ecgbench.train.paradigms import PARADIGMS
from ecgbench.train.state import POSITION_FILE, STATE_DIR

runner = CliRunner()


def words(flags: str) -> list[str]:
    return flags.split()


FAST = words("--llm tiny-gpt2 --batch-size 4 --max-length 256 --num-workers 0 --log-every 1")
SOFT = ["--num-soft-tokens", "8"]  # short sequences for the soft-token paradigms
LR = 1e-2
WARMUP = 2
STEPS = 6
#: what every paradigm run shares: 6 updates, validation after 3 and 6, the splits file, a fixed seed
RUN = ["--max-steps", str(STEPS), "--eval-every", "3", "--seed", "0", "--lr", str(LR)]
#: the base run the flag variants are compared with (encoder-free: the cheapest paradigm)
BASE = [*RUN, *SOFT, "--warmup-steps", str(WARMUP), "--val-max-conversations", "8"]
VAL_CONVERSATIONS = 16  # the val split of the labels set, split by patient into 5 folds


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared machine: one intra-op thread is faster than two fighting for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: Any) -> str:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def metrics(out: Path, split: str) -> list[dict[str, Any]]:
    return [row for row in run_dir.read_metrics(out) if row["split"] == split]


def losses(out: Path, split: str) -> list[float]:
    return [row["loss"] for row in metrics(out, split)]


def trained_parts(checkpoint: Path) -> set[str]:
    with safe_open(str(checkpoint / "elm_weights.safetensors"), "pt") as handle:
        return {name.split(".", 1)[0] for name in handle.keys()}  # noqa: SIM118 (safe_open is no dict)


# ------------------------------------------------------------------------------------------- runs


#: runs compared with the base encoder-free run (same seed, so the same batches; warmup 2 then cosine
#: from its peak, so the first 3 updates use the same rates at any --max-steps), and other flag runs
VARIANTS = {
    # one spawned worker process, no tracker, deterministic kernels: the same losses
    "same": " ".join([*BASE, "--max-steps 3 --num-workers 1 --report-to none --deterministic"]),
    "checkpointing": " ".join([*BASE, "--max-steps 3 --gradient-checkpointing --report-to none"]),
    "seed": " ".join([*BASE, "--max-steps 1 --eval-every 1 --seed 1 --report-to none"]),
    # lr 1e-30 moves no weight (every update is below float32 resolution): the val loss cannot improve
    "patience": " ".join(
        [
            *SOFT,
            "--max-steps 6 --eval-every 1 --patience 2 --lr 1e-30 --schedule constant",
            "--val-max-conversations 4 --report-to none",
        ]
    ),
    # a quarter of the set, 2 micro-batches per update, 2 epochs
    "epochs": " ".join(
        [
            *SOFT,
            f"--epochs 2 --set-weights 0.25 --grad-accum 2 --lr {LR} --schedule linear --eval-every 100",
            "--val-max-conversations 4 --report-to none",
        ]
    ),
}
SYSTEM_PROMPT = "You are a cardiologist reading a 12-lead ECG."


class Runs:
    """Training runs shared by the tests of this module, each trained once, on first use."""

    def __init__(self, data: TrainData, root: Path):
        self.data = data
        self.root = root
        self.done: dict[str, Path] = {}
        self.deterministic: bool | None = None

    def data_args(self) -> list[Any]:
        return ["--store", self.data.store, "--sets", self.data.sets, "--splits", self.data.splits]

    def encoder(self, name: str) -> Path:
        """A stage-1 encoder checkpoint from `encoder train` (tiny preset, one update)."""
        out = self.root / "encoders" / name
        if not out.exists():
            ok(
                "encoder",
                "train",
                "--store",
                self.data.store,
                "--splits",
                self.data.splits,
                "--out",
                out,
                "--encoder",
                name,
                *words("--preset tiny --max-steps 1 --eval-every 1 --batch-size 4"),
            )
        return out / "encoder"

    def paradigm_args(self, name: str) -> list[Any]:
        if name == "end2end":
            return ["--tokenizer", self.data.tokenizer, *RUN, "--val-max-conversations", "8"]
        if name == "encoder-free":
            return [*BASE, "--save-every", "2", "--keep-checkpoints", "2"]
        extra = {
            # projector only: the first stage of LLaVA (the tiny CLIP tower is frozen)
            "llava": words("--llm-training frozen --val-max-conversations 8"),
            # the whole val split (no --val-max-conversations); LoRA shaped by its flags
            "scratch": [
                "--encoder-checkpoint",
                self.encoder("st-mem"),
                *words("--lora-rank 4 --lora-alpha 8 --lora-dropout 0.1"),
            ],
            "finetune": [
                "--encoder",
                "vit",
                "--encoder-checkpoint",
                self.encoder("vit"),
                *words("--llm-training full --val-max-conversations 8"),
            ],
            "encoder-e2e": words("--encoder st-mem --val-max-conversations 8"),
        }[name]
        return [*RUN, *SOFT, *extra]

    def get(self, key: str) -> Path:
        """The run folder of ``key``: a paradigm, a variant, or stage2 (LoRA on the llava run)."""
        if key in self.done:
            return self.done[key]
        out = self.root / key
        if key in PARADIGMS:
            ok("train", key, *FAST, *self.data_args(), *self.paradigm_args(key), "--out", out)
        elif key == "stage2":
            first = self.get("llava")
            ok(
                "train",
                "llava",
                *FAST,
                *self.data_args(),
                "--out",
                out,
                "--init-from",
                first,
                *SOFT,
                *words(f"--llm-training lora --max-steps 2 --eval-every 2 --lr {LR} --report-to none"),
                *words("--val-max-conversations 8"),
            )
        else:
            extra = ["--system-prompt", SYSTEM_PROMPT] if key == "patience" else []
            torch.use_deterministic_algorithms(False)
            try:
                ok(
                    "train",
                    "encoder-free",
                    *FAST,
                    *self.data_args(),
                    "--out",
                    out,
                    *VARIANTS[key].split(),
                    *extra,
                )
                if key == "same":
                    self.deterministic = torch.are_deterministic_algorithms_enabled()
            finally:  # a process-wide switch: the other runs of this process keep the defaults
                torch.use_deterministic_algorithms(False)
        self.done[key] = out
        return out


@pytest.fixture(scope="module")
def runs(train_data: TrainData, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(train_data, tmp_path_factory.mktemp("train_runs"))


# ------------------------------------------------------------------------------------ paradigms

#: what each paradigm run's best checkpoint stores: the LLM's share by --llm-training (frozen: none,
#: lora: adapters, full: all weights), a frozen encoder only where it is not a stage-1 checkpoint
PARTS = {
    "end2end": {"ecg_embeddings", "lora"},
    "llava": {"projector", "encoder"},  # frozen LLM; the tiny CLIP tower is random, so it is saved
    "scratch": {"projector", "lora"},  # the frozen ST-MEM is referenced by path and checksum
    "finetune": {"projector", "llm"},
    "encoder-e2e": {"projector", "encoder", "lora"},
    "encoder-free": {"projector", "lora"},
}


@pytest.mark.parametrize("paradigm", list(PARADIGMS))
def test_paradigm_learns_and_writes_every_artefact(paradigm: str, runs: Runs, train_data: TrainData) -> None:
    out = runs.get(paradigm)
    train, val = losses(out, "train"), losses(out, "val")
    assert len(train) == STEPS and len(val) == 2
    assert sum(train[-2:]) < sum(train[:2]), train
    assert val[1] < val[0], val

    run = json.loads((out / "run.json").read_text())
    assert run["format"] == "ecgbench-train-run" and run["paradigm"] == paradigm
    assert run["status"] == "finished" and run["steps"] == STEPS and run["total_steps"] == STEPS
    assert run["best_step"] == STEPS and run["best_val_loss"] == pytest.approx(val[1])
    settings = run["settings"]
    assert settings["seed"] == 0 and settings["train"]["lr"] == LR and settings["train"]["max_steps"] == STEPS
    assert settings["train"]["batch_size"] == 4 and settings["model"]["llm"] == "tiny-gpt2"
    assert {"ecgbench", "torch", "transformers", "peft", "accelerate"} <= set(run["versions"])
    if (Path(ecgbench.__file__).parents[2] / ".git").exists():  # run from a git checkout
        assert isinstance(run["git_revision"], str) and run["git_revision"]
    assert run["inputs"]["sets"] == {str(train_data.sets.resolve()): sha256_file(train_data.sets)}
    assert run["inputs"]["splits"] == {str(train_data.splits.resolve()): sha256_file(train_data.splits)}
    manifest = sha256_file(train_data.store / "manifest.json")
    for split in ("train", "val"):
        assert [s["manifest_sha256"] for s in run["data"][split]["stores"]] == [manifest]
    assert run["data"]["train"]["conversations"] == 72
    assert run["elm_config"]["training_stage"] == paradigm

    rows = run_dir.read_metrics(out)
    for row in rows:
        keys = {"step", "epoch", "split", "loss", "lr"} | (
            {"tokens_per_s"} if row["split"] == "train" else set()
        )
        assert set(row) == keys and math.isfinite(row["loss"])
    assert all(row["tokens_per_s"] > 0 for row in metrics(out, "train"))
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))

    assert trained_parts(out / "best") == PARTS[paradigm]
    elm = load_elm(out / "best")
    assert (
        elm.config.training_stage == paradigm and elm.config.llm_training == settings["model"]["llm_training"]
    )
    for _, folder in run_dir.checkpoints(out):
        assert (folder / STATE_DIR / POSITION_FILE).is_file()
        assert read_checkpoint_config(folder)["trained_parts"] == sorted(PARTS[paradigm])
    assert run_dir.checkpoints(out)[-1][0] == STEPS


def test_llm_training_and_lora_flags_reach_the_model(runs: Runs) -> None:
    scratch = load_elm(runs.get("scratch") / "best")
    lora = scratch.llm.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (4, 8, 0.1)
    with safe_open(str(runs.get("scratch") / "best" / "elm_weights.safetensors"), "pt") as handle:
        ranks = {handle.get_slice(k).get_shape()[0] for k in handle.keys() if "lora_A" in k}  # noqa: SIM118
    assert ranks == {4}
    full = load_elm(runs.get("finetune") / "best")
    assert full.config.llm_training == "full" and full.config.encoder_checkpoint is not None
    # a fully trained LLM is saved whole, and differs from the tiny preset it started from
    fresh = load_elm(runs.get("llava") / "best")  # frozen: the preset's weights
    assert not torch.equal(full.llm.get_input_embeddings().weight, fresh.llm.get_input_embeddings().weight)


# ---------------------------------------------------------------------------------- run flags


def test_steps_evaluations_and_checkpoints_follow_their_flags(runs: Runs) -> None:
    out = runs.get("encoder-free")  # --max-steps 6 --eval-every 3 --save-every 2 --keep-checkpoints 2
    assert [r["step"] for r in metrics(out, "train")] == list(range(1, STEPS + 1))  # --log-every 1
    assert [r["step"] for r in metrics(out, "val")] == [3, 6]
    assert [step for step, _ in run_dir.checkpoints(out)] == [4, 6]  # step 2 pruned
    # without --save-every, a resumable checkpoint is written at each evaluation
    assert [step for step, _ in run_dir.checkpoints(runs.get("llava"))] == [3, 6]
    position = json.loads((run_dir.step_dir(out, 4) / STATE_DIR / POSITION_FILE).read_text())
    assert position["step"] == 4 and position["best_step"] == 3


def test_lr_column_follows_warmup_then_cosine(runs: Runs) -> None:
    rows = metrics(runs.get("encoder-free"), "train")
    expected = []
    for step in range(1, STEPS + 1):  # the rate update `step` used
        if step <= WARMUP:
            expected.append(LR * step / WARMUP)
        else:
            expected.append(LR * 0.5 * (1 + math.cos(math.pi * (step - 1 - WARMUP) / (STEPS - WARMUP))))
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-9, abs=1e-15)
    # --schedule linear without warmup, over the 4 updates of the epochs run
    linear = [r["lr"] for r in metrics(runs.get("epochs"), "train")]
    assert linear == pytest.approx([LR * (1 - k / 4) for k in range(4)], rel=1e-9)


def test_same_seed_reproduces_the_run_with_a_worker_and_without_a_tracker(runs: Runs) -> None:
    base, same = runs.get("encoder-free"), runs.get("same")
    # warmup 2 then cosine from its peak: the first 3 updates use the same rates at any --max-steps
    assert losses(same, "train") == losses(base, "train")[:3]
    assert losses(same, "val") == losses(base, "val")[:1]
    assert not (same / "tensorboard").exists()  # --report-to none
    assert (base / "tensorboard").is_dir()
    assert runs.deterministic  # --deterministic turned deterministic kernels on
    assert json.loads((same / "run.json").read_text())["settings"]["train"]["num_workers"] == 1


def test_another_seed_gives_other_losses(runs: Runs) -> None:
    assert losses(runs.get("seed"), "train")[0] != losses(runs.get("encoder-free"), "train")[0]


def test_gradient_checkpointing_gives_the_same_losses(runs: Runs) -> None:
    base, checkpointed = runs.get("encoder-free"), runs.get("checkpointing")
    assert losses(checkpointed, "train") == pytest.approx(losses(base, "train")[:3], rel=1e-5)
    assert losses(checkpointed, "val") == pytest.approx(losses(base, "val")[:1], rel=1e-5)
    assert load_elm(checkpointed / "best").config.gradient_checkpointing


def test_patience_stops_early(runs: Runs) -> None:
    out = runs.get("patience")  # --patience 2 --eval-every 1, a val loss that cannot improve
    val = losses(out, "val")
    assert len(val) == 3 and val[0] == val[1] == val[2]
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "stopped early" and run["steps"] == 3 and run["best_step"] == 1
    assert [r["lr"] for r in metrics(out, "train")] == [1e-30] * 3  # --schedule constant


def test_system_prompt_reaches_the_model(runs: Runs) -> None:
    # the same first batch (same seed, same lengths) and weights, with a system turn in front: the loss of
    # the first update, taken before any weight moves, differs only through the prompt
    assert losses(runs.get("patience"), "train")[0] != losses(runs.get("encoder-free"), "train")[0]


def test_val_max_conversations_caps_the_validation_split(runs: Runs) -> None:
    def val_size(key: str) -> int:
        return json.loads((runs.get(key) / "run.json").read_text())["data"]["val"]["conversations"]

    assert val_size("encoder-free") == 8 and val_size("patience") == 4
    assert val_size("scratch") == VAL_CONVERSATIONS


def test_epochs_grad_accum_and_set_weights(runs: Runs) -> None:
    out = runs.get("epochs")
    run = json.loads((out / "run.json").read_text())
    assert run["data"]["train"]["conversations"] == 18  # --set-weights 0.25 of 72
    assert run["total_steps"] == 4  # 18 // (4 x --grad-accum 2) = 2 updates per epoch, --epochs 2
    rows = metrics(out, "train")
    assert [r["epoch"] for r in rows] == [0.5, 1.0, 1.5, 2.0]
    assert [r["step"] for r in metrics(out, "val")] == [4]  # the last update is always evaluated


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 trains on a GPU")
def test_a_later_run_in_the_same_process_may_change_mixed_precision(
    runs: Runs, train_data: TrainData, tmp_path: Path
) -> None:
    # `ecgbench run` runs a recipe's stages in one process, where accelerate keeps one global state: a run
    # after another (here --mixed-precision no) gets its own precision, so fp16 on a CPU gets our error
    runs.get("encoder-free")
    out = tmp_path / "run"
    result = cli(
        "train", "encoder-free", *FAST, *runs.data_args(), *BASE, "--mixed-precision", "fp16", "--out", out
    )
    assert result.exit_code == 2 and "fp16 needs a GPU" in result.output, result.output
    assert not out.exists()


def test_init_from_continues_the_projector_stage_with_lora(runs: Runs) -> None:
    first, second = runs.get("llava"), runs.get("stage2")
    run = json.loads((second / "run.json").read_text())
    assert run["inputs"]["init_from"] == str(first.resolve())
    assert trained_parts(second / "best") == {"projector", "encoder", "lora"}
    # the first update of both stages sees the same batch (same seed); the second stage starts from the
    # trained projector, its new LoRA adapters adding nothing yet: a lower loss on that batch
    assert losses(second, "train")[0] < losses(first, "train")[0]
    stage1 = load_elm(first / "best")
    stage2 = load_elm(second / "best")
    assert stage2.config.llm_training == "lora" and stage1.config.llm_training == "frozen"


# ---------------------------------------------------------------------------------- bad inputs


def _write_set(source: Path, target: Path, change: Callable[[pa.Table], pa.Table]) -> Path:
    """A copy of a conversation set (our own Parquet format, metadata kept) with ``change`` applied."""
    table = pq.read_table(source)
    pq.write_table(change(table).replace_schema_metadata(table.schema.metadata), target)
    return target


def _unknown_record(table: pa.Table) -> pa.Table:
    ecgs = table.column("ecgs").to_pylist()
    ecgs[0] = [{"corpus": ecgs[0][0]["corpus"], "record_id": "no-such-record"}]
    return table.set_column(
        table.schema.get_field_index("ecgs"), "ecgs", pa.array(ecgs, table.schema.field("ecgs").type)
    )


@pytest.fixture(scope="module")
def other_segments_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer trained on the sample prepared into 1000-sample segments (the training store: 1250)."""
    root = tmp_path_factory.mktemp("seg1000")
    ok("data", "prepare", "sample", "--out", root / "store", "--seg-len", "1000")
    ok(
        "tokenizer",
        "train",
        "--store",
        root / "store",
        "--num-merges",
        "20",
        "--out",
        root / "tokenizer.json",
    )
    return root / "tokenizer.json"


#: case -> (paradigm, flags that replace or drop (None) the good run's, the error it must give)
BAD: dict[str, tuple[str, Callable[[TrainData, Path, Any], dict[str, Any]], str]] = {
    "missing store": ("end2end", lambda d, t, f: {"--store": t / "no-store"}, "no-store"),
    "missing set": ("end2end", lambda d, t, f: {"--sets": t / "no-set.parquet"}, "no-set.parquet"),
    "missing splits": ("end2end", lambda d, t, f: {"--splits": t / "no-splits.parquet"}, "no-splits.parquet"),
    "ECGs not in the store": (
        "end2end",
        # the set's own split column: with --splits, a conversation whose records the splits file does
        # not hold is placed in no split, and dropped before its ECGs are looked up
        lambda d, t, f: {
            "--sets": _write_set(d.sets, t / "unknown.parquet", _unknown_record),
            "--splits": None,
        },
        "ptbxl/no-such-record",
    ),
    "empty val split": (
        "end2end",
        lambda d, t, f: {
            "--sets": _write_set(
                d.sets, t / "noval.parquet", lambda x: x.filter(pc.not_equal(x["split"], "val"))
            ),
            "--splits": None,  # the set's own split column, which has no val rows
        },
        "no conversation in the val split",
    ),
    "empty train split": (
        "end2end",
        lambda d, t, f: {
            "--sets": _write_set(
                d.sets, t / "notrain.parquet", lambda x: x.filter(pc.not_equal(x["split"], "train"))
            ),
            "--splits": None,
        },
        "no conversation in the train split",
    ),
    "train split smaller than one update": (
        "end2end",
        lambda d, t, f: {"--batch-size": 100},
        "fewer than one optimizer update",
    ),
    "tokenizer of other segments": (
        "end2end",
        lambda d, t, f: {"--tokenizer": f.other_segments_tokenizer()},
        "trained on 1000-sample segments",
    ),
    "encoder checkpoint of the wrong kind": (
        "scratch",
        lambda d, t, f: {"--encoder-checkpoint": f.encoder("vit")},
        "is a 'vit' encoder checkpoint, not 'st-mem'",
    ),
    "unknown LLM": ("end2end", lambda d, t, f: {"--llm": "no-such-llm"}, "unknown model 'no-such-llm'"),
    "flash attention without flash-attn": (
        "end2end",
        lambda d, t, f: {"--attn-implementation": "flash_attention_2"},
        "flash_attention_2 needs the flash-attn package",
    ),
    "conversation longer than max length": (
        "end2end",
        lambda d, t, f: {"--max-length": 48},
        "does not fit in max_length=48",
    ),
    "tracker without its package": (
        "end2end",
        lambda d, t, f: {"--report-to": "wandb"},
        "--report-to wandb needs the wandb package",
    ),
    "out holds files": ("end2end", lambda d, t, f: {}, "already holds files"),
    "nothing to train": (
        "end2end",
        lambda d, t, f: {"--llm-training": "frozen", "--no-train-new-embeddings": True},
        "nothing would train",
    ),
    "init from another LLM": (
        "llava",
        lambda d, t, f: {"--init-from": f.run("llava"), "--llm": "tiny-llama"},
        "--llm 'tiny-llama' (it has 'tiny-gpt2'); --num-soft-tokens None (it has 8)",
    ),
}


class _Needs:
    """The slower set-ups some bad-input cases need, made on first use."""

    def __init__(self, runs: Runs, request: pytest.FixtureRequest):
        self.encoder = runs.encoder
        self.run = runs.get
        self.request = request

    def other_segments_tokenizer(self) -> Path:
        return self.request.getfixturevalue("other_segments_tokenizer")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_before_anything_is_written(
    case: str, train_data: TrainData, runs: Runs, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    paradigm, make, message = BAD[case]
    out = tmp_path / "run"
    if case == "out holds files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    flags: dict[str, Any] = {
        "--store": train_data.store,
        "--sets": train_data.sets,
        "--splits": train_data.splits,
        **({"--tokenizer": train_data.tokenizer} if paradigm == "end2end" else {}),
        **dict(zip(FAST[::2], FAST[1::2], strict=True)),
        **dict(zip(RUN[::2], RUN[1::2], strict=True)),
        "--out": out,
    }
    flags.update(make(train_data, tmp_path, _Needs(runs, request)))
    args = [x for k, v in flags.items() if v is not None for x in ((k,) if v is True else (k, v))]
    result = cli("train", paradigm, *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert "Traceback" not in result.output
    if case == "out holds files":
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    else:
        assert not out.exists()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_refuses_a_folder_that_is_not_a_run(train_data: TrainData, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    result = cli("train", "end2end", *train_data.args(), *FAST, *RUN, "--resume", tmp_path)
    assert result.exit_code == 2 and "is not a training run" in result.output, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_resume_refuses_other_settings(runs: Runs, train_data: TrainData, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(runs.get("encoder-free"), out)
    before = _snapshot(out)
    args = [a if a != str(LR) else "5e-3" for a in map(str, runs.paradigm_args("encoder-free"))]
    result = cli("train", "encoder-free", *FAST, *runs.data_args(), *args, "--resume", out)
    assert result.exit_code == 2, result.output
    assert "other settings or inputs (train.lr)" in result.output
    assert _snapshot(out) == before

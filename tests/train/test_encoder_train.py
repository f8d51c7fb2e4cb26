"""Stage-1 encoder training (`encoder train`) and embedding (`encoder embed`) on the bundled real sample.

Every encoder trains a few seeded steps at its tiny preset on the prepared sample store split by patient
(`data split --folds 5`); the flags are checked one by one on ST-MEM, the cheapest encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data.splits import read_record_splits, segments_in_split
from ecgbench.data.store import SegmentStore
from ecgbench.errors import UserError
from ecgbench.models.encoders import ENCODER_NAMES, load_encoder
from ecgbench.settings import EncoderTrainSettings
from ecgbench.train import encoder as encoder_training
from ecgbench.train import run_dir
from ecgbench.train.encoder import embed_segments, read_embeddings, train_encoder

runner = CliRunner()

#: encoder -> (representation, steps, lr): enough seeded steps for train and val loss to fall clearly
ENCODERS = {
    "st-mem": ("signal", 12, 2e-3),
    "mlae": ("signal", 12, 2e-3),
    "mtae": ("signal", 12, 2e-3),
    "merl": ("signal", 12, 2e-3),
    "vit": ("image", 10, 2e-3),
    "clip": ("image", 12, 1e-3),
    "siglip": ("image", 10, 1e-3),
    "dinov2": ("image", 10, 2e-3),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared machine: one intra-op thread is faster than two fighting for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def splits_file(sample_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("encoder_splits")
    result = runner.invoke(
        app, ["data", "split", "--store", str(sample_store), "--out", str(out), "--folds", "5"]
    )
    assert result.exit_code == 0, result.output
    return out / "splits.parquet"


def split_ids(store: Path, splits: Path, split: str) -> np.ndarray:
    return segments_in_split(SegmentStore.open(store).index, read_record_splits(splits), split)


def metrics(out: Path, split: str) -> list[dict]:
    return [row for row in run_dir.read_metrics(out) if row["split"] == split]


def fails(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output and lines[-1].startswith("error:"), result.output
    return lines[-1]


@pytest.fixture(scope="module")
def trained(sample_store: Path, splits_file: Path, tmp_path_factory: pytest.TempPathFactory):
    """`encoder train` of one encoder through the CLI (once per module), its run folder."""
    runs: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in runs:
            representation, steps, lr = ENCODERS[name]
            out = tmp_path_factory.mktemp(f"encoder_{name}") / "run"
            args = [
                "encoder", "train", "--store", sample_store, "--splits", splits_file, "--out", out,
                "--encoder", name, "--preset", "tiny", "--representation", representation,
                "--max-steps", steps, "--batch-size", 8, "--lr", lr, "--eval-every", steps // 2,
                "--warmup-steps", 1, "--seed", 0,
            ]  # fmt: skip
            result = runner.invoke(app, [str(a) for a in args])
            assert result.exit_code == 0, result.output
            runs[name] = out
        return runs[name]

    return run


def test_encoder_choices_are_the_registry() -> None:
    field = EncoderTrainSettings.model_fields["encoder"]
    assert set(field.annotation.__args__) == set(ENCODER_NAMES)  # type: ignore[union-attr]
    assert set(encoder_training.OBJECTIVES) == set(ENCODER_NAMES)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_train_and_val_loss_fall(name: str, trained) -> None:
    out = trained(name)
    train = [row["loss"] for row in metrics(out, "train")]
    val = [row["loss"] for row in metrics(out, "val")]
    steps = ENCODERS[name][1]
    assert len(train) == steps and [row["step"] for row in metrics(out, "val")] == [0, steps // 2, steps]
    assert all(np.isfinite(train)) and all(np.isfinite(val))
    assert np.mean(train[-3:]) < np.mean(train[:3]), train
    assert val[-1] < val[0], val
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["best_step"] > 0
    assert run["best_val_loss"] == pytest.approx(min(val))
    assert run["resolved"]["representation"] == ENCODERS[name][0]
    assert run["settings"]["encoder"]["encoder"] == name


@pytest.mark.parametrize("name", list(ENCODERS))
def test_checkpoint_is_the_encoder_of_an_encoder_elm(name: str, trained, sample_store: Path) -> None:
    from ecgbench.models.elm import ELMConfig, build_elm

    checkpoint = trained(name) / "encoder"
    representation = ENCODERS[name][0]
    store = SegmentStore.open(sample_store)
    config = ELMConfig(
        architecture="encoder",
        encoder=name,
        encoder_checkpoint=str(checkpoint),
        representation=representation,
        llm="tiny-llama",
        signal_length=store.seg_len,
        fs=float(store.fs),
    )
    elm = build_elm(config)
    saved = load_encoder(checkpoint).state_dict()
    loaded = elm.encoder.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    # the trained weights, not a fresh init: the run's best step is past the initial one
    fresh = encoder_training.build_objective(name, "tiny", representation).encoder.state_dict()
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved if saved[k].is_floating_point())
    assert elm.encoder.representation == representation
    # and it reads the store's segments inside the ELM
    with torch.no_grad():
        tokens = elm.soft_tokens(elm.processor.representation_of(store.read_many([0, 1])))
    assert tokens.shape[0] == 2 and torch.isfinite(tokens).all()


@pytest.mark.parametrize("name", ["st-mem", "clip"])
def test_embed_writes_one_row_per_segment_of_the_split(
    name: str, trained, sample_store: Path, splits_file: Path, tmp_path: Path
) -> None:
    checkpoint = trained(name) / "encoder"
    out = tmp_path / "val.parquet"
    args = [
        "encoder", "embed", "--encoder-checkpoint", checkpoint, "--store", sample_store,
        "--splits", splits_file, "--split", "val", "--out", out, "--batch-size", 5,
    ]  # fmt: skip
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    keys, matrix = read_embeddings(out)
    ids = split_ids(sample_store, splits_file, "val")
    assert keys.column("segment_id").to_pylist() == ids.tolist()
    store = SegmentStore.open(sample_store)
    index = store.index.take(pa.array(ids))
    assert keys.column("record_id").to_pylist() == index.column("record_id").to_pylist()
    assert keys.column("corpus").to_pylist() == index.column("corpus").to_pylist()
    encoder = load_encoder(checkpoint).eval()
    assert matrix.dtype == np.float32 and matrix.shape == (len(ids), encoder.out_dim)
    meta = json.loads(pq.read_schema(out).metadata[b"ecgbench"])
    assert meta["encoder"] == name and meta["split"] == "val"
    # row i is the mean of the encoder's features of segment i (batch boundaries change nothing)
    from ecgbench.models.inputs import to_representation

    inputs = to_representation(store.read_many(ids[6:8]), encoder.representation, fs=float(store.fs))
    with torch.no_grad():
        expected = encoder.features(inputs).mean(dim=1).numpy()
    np.testing.assert_allclose(matrix[6:8], expected, rtol=1e-4, atol=1e-5)


def test_embed_every_segment_without_splits(trained, sample_store: Path, tmp_path: Path) -> None:
    result = embed_segments(
        trained("mtae") / "encoder", sample_store, tmp_path / "all.parquet", batch_size=32
    )
    keys, matrix = read_embeddings(result.out)
    assert result.segments == len(SegmentStore.open(sample_store)) == matrix.shape[0]
    assert keys.column("segment_id").to_pylist() == list(range(result.segments))


def test_embed_representation_flag_switches_a_vision_tower(
    trained, sample_store: Path, tmp_path: Path
) -> None:
    checkpoint = trained("clip") / "encoder"  # trained on images
    image = read_embeddings(embed_segments(checkpoint, sample_store, tmp_path / "i.parquet").out)[1]
    stacked = embed_segments(checkpoint, sample_store, tmp_path / "s.parquet", representation="stacked")
    assert json.loads(pq.read_schema(stacked.out).metadata[b"ecgbench"])["representation"] == "stacked"
    assert not np.allclose(image, read_embeddings(stacked.out)[1])
    with pytest.raises(UserError, match="reads the signal representation"):
        embed_segments(
            trained("st-mem") / "encoder", sample_store, tmp_path / "x.parquet", representation="image"
        )


def test_embed_bad_inputs(trained, sample_store: Path, splits_file: Path, tmp_path: Path) -> None:
    checkpoint = trained("st-mem") / "encoder"
    common = ["encoder", "embed", "--store", sample_store]
    assert "must be a .parquet" in fails(
        *common, "--encoder-checkpoint", checkpoint, "--out", tmp_path / "x.npy"
    )
    assert "folder not found" in fails(
        *common, "--encoder-checkpoint", tmp_path / "no", "--out", tmp_path / "x.parquet"
    )
    assert "go together" in fails(
        *common, "--encoder-checkpoint", checkpoint, "--out", tmp_path / "x.parquet", "--splits", splits_file
    )
    assert not (tmp_path / "x.parquet").exists()


# -- every flag acts --------------------------------------------------------------------------------


def st_mem(store: Path, splits: Path, out: Path, *, seed: int = 0, **fields) -> Path:
    """A short ST-MEM run through the library with the given settings; its run folder."""
    values = {"encoder": "st-mem", "preset": "tiny", "batch_size": 8, "max_steps": 4, "lr": 1e-3, **fields}
    train_encoder(store, splits, out, EncoderTrainSettings(**values), seed=seed)
    return out


def lrs(out: Path) -> list[float]:
    return [row["lr"] for row in metrics(out, "train")]


def test_steps_epochs_batch_size_and_grad_accum_set_the_updates(
    sample_store: Path, splits_file: Path, tmp_path: Path
) -> None:
    n_train = len(split_ids(sample_store, splits_file, "train"))
    assert len(metrics(st_mem(sample_store, splits_file, tmp_path / "steps", max_steps=3), "train")) == 3
    two_epochs = st_mem(sample_store, splits_file, tmp_path / "epochs", max_steps=None, epochs=2)
    assert len(metrics(two_epochs, "train")) == 2 * (n_train // 8)
    batch = st_mem(sample_store, splits_file, tmp_path / "batch", max_steps=None, batch_size=16)
    assert len(metrics(batch, "train")) == n_train // 16
    accum = st_mem(sample_store, splits_file, tmp_path / "accum", max_steps=None, grad_accum=2)
    assert len(metrics(accum, "train")) == n_train // 8 // 2
    run = json.loads((accum / "run.json").read_text())
    assert run["resolved"]["updates_per_epoch"] == n_train // 8 // 2


def test_lr_schedule_and_warmup_shape_the_learning_rate(
    sample_store: Path, splits_file: Path, tmp_path: Path
) -> None:
    common = {"max_steps": 6, "lr": 1e-3, "warmup_steps": 2}
    constant = lrs(st_mem(sample_store, splits_file, tmp_path / "c", schedule="constant", **common))
    assert constant == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])
    # update k runs at the schedule's factor after k - 1 updates: warmup 1/2, 2/2, then the decay
    linear = lrs(st_mem(sample_store, splits_file, tmp_path / "l", schedule="linear", **common))
    assert linear == pytest.approx([5e-4, 1e-3, 1e-3, 7.5e-4, 5e-4, 2.5e-4])
    cosine = lrs(st_mem(sample_store, splits_file, tmp_path / "k", schedule="cosine", **common))
    assert cosine[:3] == pytest.approx([5e-4, 1e-3, 1e-3]) and cosine[4] == pytest.approx(5e-4)
    assert cosine[3] > linear[3] and cosine[5] < linear[5]


def test_seed_weight_decay_and_mixed_precision_change_the_run(
    sample_store: Path, splits_file: Path, tmp_path: Path
) -> None:
    def losses(out: Path) -> list[float]:
        return [row["loss"] for row in run_dir.read_metrics(out)]

    base = losses(st_mem(sample_store, splits_file, tmp_path / "a"))
    assert losses(st_mem(sample_store, splits_file, tmp_path / "b")) == base  # seeded: the same run
    assert losses(st_mem(sample_store, splits_file, tmp_path / "s", seed=1)) != base
    heavy = st_mem(sample_store, splits_file, tmp_path / "w", weight_decay=5.0)
    assert losses(heavy)[:2] == base[:2] and losses(heavy) != base  # decay acts from the first update on
    assert losses(st_mem(sample_store, splits_file, tmp_path / "bf16", mixed_precision="bf16")) != base
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        st_mem(sample_store, splits_file, tmp_path / "fp16", mixed_precision="fp16")
    assert not (tmp_path / "fp16").exists()


def test_eval_every_and_the_best_checkpoint_by_val_loss(
    sample_store: Path, splits_file: Path, tmp_path: Path
) -> None:
    out = st_mem(sample_store, splits_file, tmp_path / "e", max_steps=5, eval_every=2)
    val = metrics(out, "val")
    assert [row["step"] for row in val] == [0, 2, 4, 5]
    run = json.loads((out / "run.json").read_text())
    best = min(val, key=lambda row: row["loss"])
    assert run["best_step"] == best["step"] and run["best_val_loss"] == best["loss"]
    # OUT/encoder holds the weights of the best step: its val loss, recomputed, is the logged one
    resumable = json.loads(
        (out / "checkpoints" / "step-0000005" / "training_state" / "position.json").read_text()
    )
    assert resumable["best_step"] == best["step"]
    cfg = EncoderTrainSettings(encoder="st-mem", preset="tiny", batch_size=8)
    data = encoder_training._split_data(SegmentStore.open(sample_store), splits_file, cfg, "signal")
    objective = encoder_training.PretrainObjective(load_encoder(out / "encoder"))

    class _OneProcess:
        device, process_index, num_processes = torch.device("cpu"), 0, 1

        @staticmethod
        def reduce(tensor, _):
            return tensor

    batches = encoder_training.fixed_batches(len(data.val), 8)
    again = encoder_training._validation_loss(objective, data.val, batches, _OneProcess, 0)
    assert again == pytest.approx(best["loss"], rel=1e-5)


def test_splits_and_representation_flags(sample_store: Path, splits_file: Path, tmp_path: Path) -> None:
    out = st_mem(sample_store, splits_file, tmp_path / "t", max_steps=2, val_split="test")
    resolved = json.loads((out / "run.json").read_text())["resolved"]
    assert resolved["val_segments"] == len(split_ids(sample_store, splits_file, "test"))
    out = st_mem(sample_store, splits_file, tmp_path / "v", max_steps=2, train_split="val", val_split="train")
    resolved = json.loads((out / "run.json").read_text())["resolved"]
    assert resolved["train_segments"] == len(split_ids(sample_store, splits_file, "val"))
    assert resolved["val_segments"] == len(split_ids(sample_store, splits_file, "train"))
    vit = train_encoder(
        sample_store,
        splits_file,
        tmp_path / "vit",
        EncoderTrainSettings(
            encoder="vit", preset="tiny", representation="stacked", batch_size=8, max_steps=1
        ),
    )
    assert json.loads((vit.checkpoint / "encoder.json").read_text())["config"]["representation"] == "stacked"


def test_resume_continues_the_same_run(
    sample_store: Path, splits_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = {"max_steps": 6, "eval_every": 2}
    whole = st_mem(sample_store, splits_file, tmp_path / "whole", **fields)

    append = run_dir.append_metrics

    def interrupt_at_step_5(directory: Path, rows: list[dict]) -> None:
        if rows[0]["step"] == 5 and rows[0]["split"] == "train":
            raise KeyboardInterrupt
        append(directory, rows)

    monkeypatch.setattr(run_dir, "append_metrics", interrupt_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        st_mem(sample_store, splits_file, tmp_path / "cut", **fields)
    monkeypatch.setattr(run_dir, "append_metrics", append)
    assert [step for step, _ in run_dir.checkpoints(tmp_path / "cut")] == [4]
    cfg = EncoderTrainSettings(encoder="st-mem", preset="tiny", batch_size=8, lr=1e-3, **fields)
    with pytest.raises(UserError, match="already holds files"):
        train_encoder(sample_store, splits_file, tmp_path / "cut", cfg)
    with pytest.raises(UserError, match=r"other settings or inputs \(encoder.lr\)"):
        train_encoder(
            sample_store, splits_file, tmp_path / "cut", cfg.model_copy(update={"lr": 1e-2}), resume=True
        )
    result = train_encoder(sample_store, splits_file, tmp_path / "cut", cfg, resume=True)
    assert result.steps == 6
    assert run_dir.read_metrics(tmp_path / "cut") == run_dir.read_metrics(whole)
    for name in ("model.safetensors", "encoder.json"):
        assert (tmp_path / "cut" / "encoder" / name).read_bytes() == (whole / "encoder" / name).read_bytes()


def test_two_processes_train_one_run(trained, sample_store: Path, splits_file: Path, tmp_path: Path) -> None:
    """`accelerate launch` with 2 processes (MULTI_CPU over gloo): one writer, DDP across the objective
    (unused pooling heads, accumulation with no_sync), validation dealt to both and reduced."""
    import os
    import random
    import signal
    import subprocess
    import sys

    args = [
        "encoder", "train", "--store", sample_store, "--splits", splits_file, "--encoder", "merl",
        "--preset", "tiny", "--batch-size", 8, "--grad-accum", 2, "--max-steps", 2, "--eval-every", 2,
    ]  # fmt: skip
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(29500 + random.Random().randint(0, 400)), "-m", "ecgbench.cli",
        *map(str, args), "--out", str(tmp_path / "two"),
    ]  # fmt: skip
    # ACCELERATE_USE_CPU: without it accelerate runs each launched CPU process alone (DistributedType.NO)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    # its own session, so a hang kills the launcher and both workers
    process = subprocess.Popen(
        launch, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise
    assert process.returncode == 0, output
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["resolved"]["processes"] == 2 and run["resolved"]["updates_per_epoch"] == 41 // 16 // 2
    rows = run_dir.read_metrics(tmp_path / "two")
    assert [(r["step"], r["split"]) for r in rows] == [(0, "val"), (1, "train"), (2, "train"), (2, "val")]
    # rank 0 starts from the single-process initialisation (seed 0, batch size 8), and the validation
    # dealt to two processes and reduced is the same mean
    one = run_dir.read_metrics(trained("merl"))[0]
    assert one["step"] == 0 and rows[0]["loss"] == pytest.approx(one["loss"], rel=1e-6)
    load_encoder(tmp_path / "two" / "encoder")


# -- bad inputs -------------------------------------------------------------------------------------


def test_bad_inputs_fail_in_one_line_and_write_nothing(
    sample_store: Path, splits_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    table = read_record_splits(splits_file)
    no_train = tmp_path / "no_train.parquet"
    pq.write_table(
        table.set_column(table.schema.get_field_index("split"), "split", pa.array(["test"] * len(table))),
        no_train,
    )
    other_store = tmp_path / "other.parquet"  # a splits file of records this store does not hold
    pq.write_table(
        table.set_column(1, "record_id", pa.array([f"x{i}" for i in range(len(table))])), other_store
    )

    def train(*extra: object, store: object = sample_store, splits: object = splits_file) -> str:
        return fails(
            "encoder", "train", "--store", store, "--splits", splits, "--out", out, "--preset", "tiny",
            "--batch-size", 8, "--max-steps", 1, *extra,
        )  # fmt: skip

    assert "not a segment store" in train(store=tmp_path / "missing")
    assert "splits file not found" in train(splits=tmp_path / "missing.parquet")
    assert "no segment of the store is in the train split" in train(splits=no_train)
    assert "no segment of the store is in the train split" in train(splits=other_store)
    assert "--encoder" in train("--encoder", "resnet")
    assert "reads the signal representation, not 'image'" in train(
        "--encoder", "mlae", "--representation", "image"
    )
    assert "reads image or stacked inputs, not 'signal'" in train(
        "--encoder", "dinov2", "--representation", "signal"
    )
    assert "--val-split" in train("--val-split", "train")
    assert "fewer than one update" in train("--batch-size", 64)
    assert "--batch-size must be at least 2" in train("--encoder", "merl", "--batch-size", 1)
    assert "cannot load vit weights" in train("--encoder", "vit", "--preset", "base")
    assert "--out RUN_DIR" in fails("encoder", "train", "--store", sample_store, "--splits", splits_file)
    assert "inside the segment store" in fails(
        "encoder", "train", "--store", sample_store, "--splits", splits_file, "--out", sample_store / "run"
    )
    assert not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert "already holds files" in train()
    assert (out / "mine.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1
    assert "not an encoder training run" in fails(
        "encoder", "train", "--store", sample_store, "--splits", splits_file, "--resume", out
    )

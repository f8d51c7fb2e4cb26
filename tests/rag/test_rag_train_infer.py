"""`--rag` in `ecgbench train` and `ecgbench infer generate`: the processor inserts the retrieved reports in
training examples and generation prompts alike, the run records the index, inference follows the run."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data.dataset import ConversationDataset
from ecgbench.errors import UserError
from ecgbench.files import sha256_file
from ecgbench.models.checkpoint import load_elm
from ecgbench.rag.retrieval import CONTEXT_HEADER, Retrieval, augment, inference_retrieval
from ecgbench.train import run_dir as rd

runner = CliRunner()
FAST = [
    *("--llm", "tiny-gpt2", "--batch-size", "4", "--max-length", "384", "--num-workers", "0"),
    *("--num-soft-tokens", "8", "--max-steps", "1", "--eval-every", "1", "--val-max-conversations", "4"),
    *("--report-to", "none"),
]


def invoke(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def rag_run(
    sample_store: Path, split_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rag_run")
    splits, sets = split_dir / "splits.parquet", split_dir / "labels.parquet"
    code, output = invoke(
        "data", "rag", "build", "--store", sample_store, "--splits", splits, "--out", root / "index"
    )
    assert code == 0, output
    code, output = invoke("train", "encoder-free", "--store", sample_store, "--sets", sets,
                          "--splits", splits, "--out", root / "run", "--rag", root / "index",
                          "--rag-k", "2", "--rag-placement", "user", *FAST)  # fmt: skip
    assert code == 0, output
    return root / "run", root / "index"


def test_augment_places_the_block_in_system_or_first_user_turn() -> None:
    turns = [{"role": "user", "content": "<ecg>\nQ1"}, {"role": "assistant", "content": "A1"},
             {"role": "user", "content": "Q2"}]  # fmt: skip
    out, system = augment(turns, "Be brief.", ["r one", "r two"], "system")
    assert out == turns and system == f"Be brief.\n\n{CONTEXT_HEADER}\n1. r one\n2. r two"
    out, system = augment(turns, None, ["r one"], "user")
    assert (
        system is None
        and out[0]["content"] == f"{CONTEXT_HEADER}\n1. r one\n\n<ecg>\nQ1"
        and out[2] == turns[2]
    )
    assert turns[0]["content"] == "<ecg>\nQ1"  # pure: the input is untouched
    assert augment(turns, None, [], "user") == (turns, None)


def test_run_records_rag_and_inference_refuses_other_settings(
    rag_run, sample_store: Path, split_dir: Path
) -> None:
    run_folder, index = rag_run
    run = rd.read_run(run_folder)
    assert run["settings"]["train"]["rag"] == str(index) and run["settings"]["train"]["rag_k"] == 2
    assert list(run["inputs"]["rag_index"].values()) == [sha256_file(index / "manifest.json")]
    stores = ConversationDataset([split_dir / "labels.parquet"], [sample_store]).records.stores
    common = {"stores": stores, "splits_path": split_dir / "splits.parquet", "split": "test"}
    followed = inference_retrieval(run, rag=None, k=None, placement=None, **common)
    assert followed is not None and (followed.k, followed.placement) == (2, "user")
    with pytest.raises(UserError, match="trained with --rag-k 2"):
        inference_retrieval(run, rag=None, k=3, placement=None, **common)
    tampered = {**run, "inputs": {**run["inputs"], "rag_index": {str(index): "0" * 64}}}
    with pytest.raises(UserError, match="not the index the run was trained with"):
        inference_retrieval(tampered, rag=None, k=None, placement=None, **common)
    with pytest.raises(UserError, match="keeps the train split retrievable"):
        inference_retrieval(run, rag=None, k=None, placement=None, **{**common, "split": "train"})


def test_example_and_prompt_hold_the_same_retrieved_reports(
    rag_run, sample_store: Path, split_dir: Path
) -> None:
    run_folder, index = rag_run
    elm = load_elm(run_folder / rd.BEST_DIR)
    processor = elm.processor
    dataset = ConversationDataset([split_dir / "labels.parquet"], [sample_store], split="test")
    item = next(dataset[i] for i in range(len(dataset)) if dataset[i].ecgs)
    for placement in ("user", "system"):
        processor.retrieval = Retrieval(index, dataset.records.stores, k=2, placement=placement)
        contexts = processor.retrieval.contexts(item.ecgs, item.ecg_refs)
        assert len(contexts) == 2
        example = processor.prepare_example(item.turns, item.ecgs, max_length=2048, refs=item.ecg_refs)
        text = processor.tokenizer.decode(example["input_ids"])
        assert CONTEXT_HEADER in text and all(c in text for c in contexts)
        prompt = processor.prepare_prompt(item.turns[:1], item.ecgs, refs=item.ecg_refs)
        assert example["input_ids"][: len(prompt["input_ids"])] == prompt["input_ids"]  # the same insertion
        assert all(c in processor.tokenizer.decode(prompt["input_ids"]) for c in contexts)
        # DataLoader workers receive a pickled processor: the faiss index is read again there
        copy = pickle.loads(pickle.dumps(processor))
        assert (
            copy.prepare_prompt(item.turns[:1], item.ecgs, refs=item.ecg_refs)["input_ids"]
            == prompt["input_ids"]
        )
    with pytest.raises(ValueError, match="refs"):
        processor.prepare_prompt(item.turns[:1], item.ecgs)
    processor.retrieval = None
    assert CONTEXT_HEADER not in processor.tokenizer.decode(
        processor.prepare_prompt(item.turns[:1], item.ecgs)["input_ids"]
    )


def test_generate_follows_the_run_and_refuses_another_k(
    rag_run, tmp_path: Path, split_dir: Path, sample_store: Path
) -> None:
    run_folder, _ = rag_run
    args = ["infer", "generate", "--checkpoint", run_folder, "--splits", split_dir / "splits.parquet",
            "--max-new-tokens", "2", "--out", tmp_path / "gen"]  # fmt: skip
    code, output = invoke(*args, "--rag-k", "5")
    assert code == 2 and "trained with --rag-k 2" in output and not (tmp_path / "gen").exists()
    best = [a if a != run_folder else run_folder / rd.BEST_DIR for a in args]  # a checkpoint of the run
    inputs = ["--store", sample_store, "--sets", split_dir / "labels.parquet"]
    code, output = invoke(*best, *inputs, "--rag-placement", "system")
    assert code == 2 and "trained with --rag-placement user" in output
    code, output = invoke(*args)
    assert code == 0, output
    rows = [
        json.loads(line)
        for line in (tmp_path / "gen" / "real" / "predictions.jsonl").read_text().splitlines()
    ]
    assert rows and all("+rag#" in r["checkpoint"] and r["checkpoint"].endswith(":k2:user") for r in rows)


def test_train_refuses_rag_flags_without_rag_and_an_index_without_splits(
    sample_store: Path, split_dir: Path, tmp_path: Path
) -> None:
    base = ["train", "encoder-free", "--store", sample_store, "--sets", split_dir / "labels.parquet", *FAST]
    code, output = invoke(*base, "--out", tmp_path / "r1", "--rag-k", "4")
    assert code == 2 and "--rag-k needs --rag" in output
    code, output = invoke("data", "rag", "build", "--store", sample_store, "--out", tmp_path / "nosplits")
    assert code == 0, output
    code, output = invoke(*base, "--out", tmp_path / "r2", "--rag", tmp_path / "nosplits")
    assert code == 2 and "built without --splits" in output and not (tmp_path / "r2").exists()

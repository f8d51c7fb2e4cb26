"""A real LLM through the whole training path: SmolLM2-135M-Instruct (real weights, offline) as an
end2end ELM overfits a handful of bundled conversations and then answers them by greedy decoding."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
from conftest import TrainData, invoke

from ecgbench.data.conversations import read_conversation_set, write_conversation_set
from ecgbench.data.dataset import ConversationDataset
from ecgbench.models.checkpoint import load_elm
from ecgbench.train import run_dir

MAX_LENGTH = "144"


def _handful(data: TrainData, path: Path) -> Path:
    """Four choose questions of the training split, and every validation conversation."""
    table = read_conversation_set(data.sets)
    train = table.filter(
        pc.and_(pc.equal(table.column("split"), "train"), pc.equal(table.column("question_type"), "single-choose"))
    ).slice(0, 4)
    val = table.filter(pc.equal(table.column("split"), "val")).slice(0, 4)
    import pyarrow as pa

    write_conversation_set(path, pa.concat_tables([train, val]).replace_schema_metadata(table.schema.metadata))
    return path


def test_smollm2_end2end_overfits_and_answers(train_data: TrainData, tmp_path: Path) -> None:
    sets = _handful(train_data, tmp_path / "handful.parquet")
    out = tmp_path / "run"
    invoke(
        "train", "end2end", "--store", train_data.store, "--sets", sets, "--tokenizer", train_data.tokenizer,
        "--out", out, "--llm", "smollm2-135m-offline", "--max-steps", "6", "--batch-size", "4",
        "--max-length", MAX_LENGTH, "--lr", "3e-3", "--warmup-steps", "2", "--eval-every", "6",
        "--log-every", "1", "--num-workers", "0", "--report-to", "none", "--lora-dropout", "0",
    )
    losses = [r["loss"] for r in run_dir.read_metrics(out) if r["split"] == "train"]
    assert losses[-1] < 0.2 * losses[0], losses

    (step, last), *_ = reversed(run_dir.checkpoints(out))
    assert step == 6
    elm = load_elm(last)
    conversations = ConversationDataset([sets], [train_data.store], split="train")
    right = 0
    for i in range(len(conversations)):
        item = conversations[i]
        prompt = elm.processor.prepare_prompt(item.turns[:1], item.ecgs, max_length=int(MAX_LENGTH))
        (answer,) = elm.generate(elm.processor.collate([prompt], "left"), max_new_tokens=16)
        right += answer == item.turns[1]["content"]
    assert right == len(conversations) == 4

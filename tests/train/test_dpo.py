"""``train dpo``: the shifted response log-probs, trl parity of the losses, and DPO runs on the real sample.

The preference sets are built from the labels conversations of the bundled records in the schema
``judge compare|rank|export`` write (``ecgbench.judge.export.preference_schema``): the chosen answer is
the record's own report or label answer, the rejected one an evasive reply.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from conftest import TrainData
from ecgbench.cli import app
from ecgbench.judge.export import write_preferences
from ecgbench.models.chat import IGNORE_INDEX
from ecgbench.models.checkpoint import load_elm
from ecgbench.train import run_dir
from ecgbench.train.dpo import REFERENCE_FILE, preference_losses, response_logprobs

FAST = [
    "--llm",
    "tiny-gpt2",
    "--batch-size",
    "4",
    "--max-length",
    "256",
    "--num-workers",
    "0",
    "--log-every",
    "1",
]


def cli(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------------------- log-probs and losses


def test_response_logprobs_shift_by_one_and_count_the_response_only() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    input_ids = torch.tensor([[1, 2, 3, 4, 5], [6, 1, 2, 0, 0]])
    labels = torch.tensor(
        [[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX]]
    )
    assert torch.equal(labels[labels != IGNORE_INDEX], input_ids[labels != IGNORE_INDEX])
    by_hand = torch.zeros(2)
    for b in range(2):
        for t in range(1, 5):
            if labels[b, t] != IGNORE_INDEX:  # the token at t is scored by the logits at t - 1
                by_hand[b] += torch.log_softmax(logits[b, t - 1], -1)[labels[b, t]]
    ours = response_logprobs(logits, labels)
    torch.testing.assert_close(ours, by_hand, rtol=0, atol=1e-6)
    # unshifted scoring, or counting the prompt, would give other numbers
    assert not torch.allclose(ours, torch.log_softmax(logits, -1)[0, [2, 3], [3, 4]].sum().expand(2))


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, torch.Tensor]]:
    """trl's DPOTrainer on a tiny GPT-2 whose policy has moved away from its reference, and one batch."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from ecgbench.models.llm import load_llm

    torch.manual_seed(0)
    llm = load_llm("tiny-gpt2")
    policy, tokenizer = llm.model, llm.tokenizer
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    pairs = [
        {
            "prompt": "Describe this ECG.",
            "chosen": " Sinus rhythm, normal ECG.",
            "rejected": " Atrial fibrillation.",
        },
        {
            "prompt": "Is there a left bundle branch block?",
            "chosen": " No.",
            "rejected": " Yes, complete LBBB.",
        },
        {"prompt": "Heart rate?", "chosen": " About 72 beats per minute.", "rejected": " 150."},
    ]
    args = DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        report_to="none",
        beta=0.1,
        per_device_train_batch_size=3,
        use_cpu=True,
        max_length=None,
    )
    trainer = DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
    )
    return trainer, next(iter(trainer.get_train_dataloader()))


@pytest.mark.parametrize(
    ("loss", "label_smoothing"), [("sigmoid", 0.0), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.1)]
)
def test_loss_and_logprobs_equal_trl_dpo_trainer(
    loss: str, label_smoothing: float, trl_trainer: tuple[Any, dict[str, torch.Tensor]]
) -> None:
    trainer, batch = trl_trainer
    trainer.loss_types, trainer.label_smoothing = [loss], label_smoothing
    trainer._metrics["train"].clear()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, batch))
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        # our side reads plain logits of the same two models (trl's own forward fuses the LM head)
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE_INDEX)
        kwargs = {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "use_cache": False,
        }
        logps = response_logprobs(trainer.model(**kwargs).logits, labels)
        ref_logps = response_logprobs(trainer.ref_model(**kwargs).logits, labels)
    n = len(logps) // 2
    tokens = (labels[:, 1:] != IGNORE_INDEX).sum(1)
    losses = preference_losses(
        logps[:n], logps[n:], ref_logps[:n], ref_logps[n:],
        beta=0.1, loss=loss, label_smoothing=label_smoothing,
        chosen_tokens=tokens[:n], rejected_tokens=tokens[n:],
    )  # fmt: skip
    assert float(losses.mean()) == pytest.approx(trl_loss, abs=1e-5)
    assert float(logps[:n].mean()) == pytest.approx(metrics["logps/chosen"], abs=1e-5)
    assert float(logps[n:].mean()) == pytest.approx(metrics["logps/rejected"], abs=1e-5)
    margins = 0.1 * ((logps[:n] - ref_logps[:n]) - (logps[n:] - ref_logps[n:]))
    assert float(margins.mean()) == pytest.approx(metrics["rewards/margins"], abs=1e-5)
    assert float(margins.abs().min()) > 1e-3  # the policy differs from its reference: a real test


# ------------------------------------------------------------------------------------ runs on the sample


#: the rejected answer of every pair: the evasive reply an undertrained ELM gives, which DPO should learn
#: to avoid on any question (so a few steps can move held-out pairs too)
EVASIVE = "I am not able to interpret this ECG."


def preference_rows(sets: Path, splits: set[str], model: str | None = None) -> list[dict[str, Any]]:
    """Pairs (the record's own answer, an evasive reply) for the conversations of these splits."""
    rows = []
    for conv in pq.read_table(sets).to_pylist():
        if conv["split"] not in splits:
            continue
        turns = conv["turns"]
        answer, other = turns[1]["content"], EVASIVE
        rows.append(
            {
                "prompt": [turns[0]],
                "chosen": [{"role": "assistant", "content": answer}],
                "rejected": [{"role": "assistant", "content": other}],
                "system": None,
                "ecg_sha256": None,
                "ecg_path": None,
                "ecg_fs": None,
                "ecg_refs": [[e["corpus"], e["record_id"]] for e in conv["ecgs"]],
                "ecg_source": None,
                "chosen_model": "human",
                "rejected_model": model,
                "judge": "reference:exact",
                "judge_version": "test",
                "score_chosen": 1.0,
                "score_rejected": 0.0,
                "kind": "correction",
                "feedback_id": None,
                "timestamp": "2026-12-01T00:00:00Z",
                "decoding": None,
            }
        )
    return rows


class DPORuns:
    """SFT runs and DPO runs on them, each made once per session on first use."""

    def __init__(self, data: TrainData, root: Path):
        self.data, self.root, self.made = data, root, {}

    def sft(self, paradigm: str) -> Path:
        key = f"sft-{paradigm}"
        if key not in self.made:
            out = self.root / key
            args = self.data.args(tokenizer=paradigm == "end2end")
            result = cli(
                "train", paradigm, *args, "--splits", self.data.splits, *FAST, "--llm-training", "full",
                "--max-steps", "6", "--eval-every", "6", "--lr", "3e-3", "--report-to", "none", "--seed", "0",
                "--out", out,
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            self.made[key] = out
        return self.made[key]

    def sampling_sft(self) -> Path:
        """An encoder-free ELM trained long enough that its sampled answers use the labels' words (after
        a few steps a tiny GPT-2 samples from its whole vocabulary, and a judge ties every pair)."""
        key = "sft-sampling"
        if key not in self.made:
            out = self.root / key
            result = cli(
                "train", "encoder-free", *self.data.args(tokenizer=False), "--splits", self.data.splits,
                *FAST,
                "--batch-size", "8", "--llm-training", "full", "--max-steps", "30", "--eval-every", "30",
                "--lr", "1e-2", "--warmup-steps", "3", "--report-to", "none", "--seed", "0", "--out", out,
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            self.made[key] = out
        return self.made[key]

    def preferences(self) -> Path:
        path = self.root / "preferences.parquet"
        if not path.exists():
            write_preferences(preference_rows(self.data.sets, {"train", "val"}), path)
        return path

    def dpo(self, paradigm: str = "end2end", *extra: str) -> Path:
        key = f"dpo-{paradigm}{''.join(extra)}"
        if key not in self.made:
            out = self.root / key.replace("-", "_")
            result = cli(
                "train", "dpo", "--checkpoint", self.sft(paradigm), "--preferences", self.preferences(),
                "--out", out, *DPO_FLAGS, *extra,
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            self.made[key] = out
        return self.made[key]


DPO_FLAGS = [
    "--max-steps", "6", "--eval-every", "3", "--lr", "3e-4", "--beta", "0.5", "--batch-size", "4",
    "--max-length", "256", "--num-workers", "0", "--log-every", "1", "--report-to", "none", "--seed", "0",
    "--warmup-steps", "0", "--schedule", "constant",
]  # fmt: skip


@pytest.fixture(scope="module")
def dpo_runs(train_data: TrainData, tmp_path_factory: pytest.TempPathFactory) -> DPORuns:
    return DPORuns(train_data, tmp_path_factory.mktemp("dpo_runs"))


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dpo_raises_the_margin_on_held_out_pairs_and_leaves_the_reference_alone(dpo_runs: DPORuns) -> None:
    sft = dpo_runs.sft("end2end")
    before = _tree(sft)
    out = dpo_runs.dpo()
    assert _tree(sft) == before  # the starting checkpoint is read, never written

    run = json.loads((out / run_dir.RUN_FILE).read_text())
    assert run["paradigm"] == "dpo" and run["status"] == "finished" and run["steps"] == 6
    assert run["data"] == {"train": {"pairs": 72}, "val": {"pairs": 16}, "left_out_same_answer": 0}
    assert run["settings"]["dpo"]["beta"] == 0.5 and run["elm_config"]["training_stage"] == "dpo"
    val = [r for r in run_dir.read_metrics(out) if r["split"] == "val"]
    assert [r["step"] for r in val] == [3, 6]
    assert set(val[0]) == {"step", "epoch", "split", "loss", "reward_margin", "reward_accuracy", "lr"}
    # at step 0 the policy is its reference: margin 0, loss log 2; training moves both on held-out pairs
    assert val[-1]["reward_margin"] > val[0]["reward_margin"] > 0 and val[-1]["reward_accuracy"] > 0.5
    train = [r["loss"] for r in run_dir.read_metrics(out) if r["split"] == "train"]
    assert train[0] == pytest.approx(math.log(2), abs=1e-4)  # the first update starts at the reference
    assert sum(train[-2:]) < sum(train[:2]), train

    # the stored reference log-probs are the starting checkpoint's, recomputed here from its files
    from safetensors.numpy import load_file

    from ecgbench.data.dataset import RecordIndex
    from ecgbench.settings import DPOSettings
    from ecgbench.train.devices import make_accelerator
    from ecgbench.train.dpo import PairDataset, PairECGs, read_pairs, reference_logprobs, split_pairs

    stored = load_file(str(out / REFERENCE_FILE))
    start = load_elm(sft / run_dir.BEST_DIR)
    pairs, _ = read_pairs(dpo_runs.preferences())
    _, val_pairs = split_pairs(pairs, dpo_runs.data.splits, DPOSettings())
    records = RecordIndex.open([dpo_runs.data.store])
    ecgs = PairECGs(records, start.config.signal_length, start.config.fs, dpo_runs.preferences())
    dataset = PairDataset(val_pairs, ecgs, start.processor, 256, None)
    again = reference_logprobs(start, dataset, 8, make_accelerator("no"))
    np.testing.assert_allclose(again, stored["val"], rtol=0, atol=1e-4)
    trained = load_elm(out / run_dir.BEST_DIR)
    moved = reference_logprobs(trained, dataset, 8, make_accelerator("no"))
    assert np.abs(moved - stored["val"]).max() > 1e-3  # the policy moved; the reference did not


def test_dpo_on_an_encoder_free_elm_reads_the_ecg(dpo_runs: DPORuns) -> None:
    out = dpo_runs.dpo("encoder-free")
    run = json.loads((out / run_dir.RUN_FILE).read_text())
    assert run["status"] == "finished" and run["elm_config"]["architecture"] == "encoder-free"

    from ecgbench.data.dataset import RecordIndex
    from ecgbench.train.dpo import PairDataset, PairECGs, read_pairs

    elm = load_elm(out / run_dir.BEST_DIR)
    pairs, _ = read_pairs(dpo_runs.preferences())
    records = RecordIndex.open([dpo_runs.data.store])
    ecgs = PairECGs(records, elm.config.signal_length, elm.config.fs, dpo_runs.preferences())

    class Flat(PairECGs):
        def read(self, pair: Any) -> list[np.ndarray]:
            return [np.zeros_like(e) for e in super().read(pair)]

    flat = Flat(records, elm.config.signal_length, elm.config.fs, dpo_runs.preferences())
    with torch.no_grad():
        scores = []
        for source in (ecgs, flat):
            item = PairDataset(pairs[:1], source, elm.processor, 256, None)[0]
            batch = elm.processor.collate([item["chosen"]], "right")
            logits = elm({k: v for k, v in batch.items() if k != "labels"}).logits
            scores.append(float(response_logprobs(logits, torch.tensor([item["chosen"]["labels"]]))[0]))
    assert scores[0] != pytest.approx(scores[1], abs=1e-6)  # the answer's log-prob depends on the ECG


def test_dpo_resume_continues_to_the_same_losses(dpo_runs: DPORuns, tmp_path: Path) -> None:
    full = dpo_runs.dpo()
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    steps = [step for step, _ in run_dir.checkpoints(cut)]
    assert steps[-1] == 6 and 3 in steps
    shutil.rmtree(run_dir.step_dir(cut, 6))  # as if killed after the checkpoint of update 3
    result = cli(
        "train", "dpo", "--checkpoint", dpo_runs.sft("end2end"), "--preferences", dpo_runs.preferences(),
        "--resume", cut, *DPO_FLAGS,
    )  # fmt: skip
    assert result.exit_code == 0, result.output

    def losses(run: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in run_dir.read_metrics(run)]

    assert losses(cut) == losses(full)


def _bad_preferences(root: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    path = root / f"{name}.parquet"
    write_preferences(rows, path)
    return path


def test_bad_input_is_one_line_and_writes_nothing(dpo_runs: DPORuns, tmp_path: Path) -> None:
    import pyarrow as pa

    data = dpo_runs.data
    sft = dpo_runs.sft("end2end")
    rows = preference_rows(data.sets, {"train", "val"})
    missing_column = tmp_path / "missing.parquet"
    pq.write_table(pa.Table.from_pylist(rows).drop_columns(["rejected"]), missing_column)
    not_in_store = [{**rows[0], "ecg_refs": [["ptbxl", "no-such-record"]]}, *rows[1:]]
    empty_answer = [{**rows[0], "chosen": [{"role": "assistant", "content": " "}]}, *rows[1:]]
    other_kind = [
        {**r, "rejected_model": f"{dpo_runs.sft('encoder-free') / 'best'}#0123456789abcdef"} for r in rows
    ]
    cases = {
        "pairs of the evaluation split": (
            _bad_preferences(tmp_path, "test", preference_rows(data.sets, {"train", "val", "test"})),
            [],
            "20 preference pairs are about records of the test split, the evaluation split",
        ),
        "missing column": (missing_column, [], "is not a preference set (missing columns rejected"),
        "ECG not in the store": (
            _bad_preferences(tmp_path, "store", not_in_store),
            [],
            "(ptbxl, no-such-record) is in none",
        ),
        "empty answer": (
            _bad_preferences(tmp_path, "empty", empty_answer),
            [],
            "row 0: chosen must be one non-empty",
        ),
        "answers of another kind of ELM": (
            _bad_preferences(tmp_path, "kind", other_kind),
            [],
            "judges answers of a encoder-free ELM",
        ),
        "label smoothing without robust": (
            dpo_runs.preferences(),
            ["--label-smoothing", "0.1"],
            "--loss robust only",
        ),
        "evaluation split trained on": (
            dpo_runs.preferences(),
            ["--eval-split", "val"],
            "must differ from --train-split",
        ),
        "an online setting offline": (
            dpo_runs.preferences(),
            ["--candidates", "8"],
            "--candidates: online DPO settings (with --judge)",
        ),
        "not a checkpoint": (
            dpo_runs.preferences(),
            ["--checkpoint", str(tmp_path)],
            "neither an ELM checkpoint",
        ),
    }
    for case, (preferences, extra, message) in cases.items():
        out = tmp_path / "run"
        flags = ["--checkpoint", str(sft), *extra] if "--checkpoint" not in extra else extra
        result = cli("train", "dpo", *flags, "--preferences", preferences, "--out", out, *DPO_FLAGS)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1, (case, result.output)
        assert message in errors[0], (case, result.output)
        assert not out.exists(), case


def test_dpo_of_a_rag_run_reads_the_same_retrieved_reports(
    train_data: TrainData, tmp_path: Path, dpo_runs: DPORuns
) -> None:
    from ecgbench.data.dataset import RecordIndex
    from ecgbench.rag.retrieval import CONTEXT_HEADER, inference_retrieval
    from ecgbench.train.dpo import PairDataset, PairECGs, read_pairs

    index, sft, out = tmp_path / "index", tmp_path / "sft", tmp_path / "dpo"
    result = cli(
        "data", "rag", "build", "--store", train_data.store, "--splits", train_data.splits, "--out", index
    )
    assert result.exit_code == 0, result.output
    result = cli(
        "train", "encoder-free", *train_data.args(tokenizer=False), "--splits", train_data.splits, *FAST,
        "--max-length", "384", "--max-steps", "1", "--eval-every", "1", "--report-to", "none",
        "--rag", index, "--rag-k", "2", "--rag-placement", "user", "--out", sft,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = cli(
        "train", "dpo", "--checkpoint", sft, "--preferences", dpo_runs.preferences(), "--out", out,
        *DPO_FLAGS, "--max-steps", "1", "--eval-every", "1", "--max-length", "384",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = run_dir.read_run(out)
    assert run["settings"]["train"] == {"rag": str(index), "rag_k": 2, "rag_placement": "user"}
    assert run["inputs"]["rag_index"] == run_dir.read_run(sft)["inputs"]["rag_index"]
    records = RecordIndex.open([train_data.store])
    # inference from the DPO checkpoint follows the retrieval it was trained with
    followed = inference_retrieval(
        run,
        rag=None,
        k=None,
        placement=None,
        stores=records.stores,
        splits_path=train_data.splits,
        split="test",
    )
    assert followed is not None and (followed.k, followed.placement) == (2, "user")
    elm = load_elm(out / run_dir.BEST_DIR)
    elm.processor.retrieval = followed
    pairs, _ = read_pairs(dpo_runs.preferences())
    ecgs = PairECGs(records, elm.config.signal_length, elm.config.fs, dpo_runs.preferences())
    item = PairDataset(pairs[:1], ecgs, elm.processor, 384, None)[0]
    for answer in ("chosen", "rejected"):
        assert CONTEXT_HEADER in elm.processor.tokenizer.decode(item[answer]["input_ids"])


# ---------------------------------------------------------------------------------------- online DPO

ONLINE_FLAGS = [
    "--judge", "reference", "--rounds", "2", "--candidates", "3", "--conversations-per-round", "12",
    "--val-conversations", "8", "--max-new-tokens", "12",
    "--max-steps", "4", "--eval-every", "2", "--lr", "3e-4", "--beta", "0.5", "--batch-size", "4",
    "--max-length", "256", "--num-workers", "0", "--log-every", "1", "--report-to", "none", "--seed", "0",
    "--warmup-steps", "0", "--schedule", "constant",
]  # fmt: skip


@pytest.fixture(scope="module")
def online_run(dpo_runs: DPORuns) -> Path:
    out = dpo_runs.root / "online"
    result = cli("train", "dpo", "--checkpoint", dpo_runs.sampling_sft(), "--out", out, *ONLINE_FLAGS)
    assert result.exit_code == 0, result.output
    return out


def test_online_dpo_samples_from_the_policy_of_each_round_and_trains_on_judged_pairs(
    online_run: Path, dpo_runs: DPORuns
) -> None:
    from ecgbench.data.splits import read_record_splits, record_split_lookup
    from ecgbench.train.online_dpo import round_bounds

    run = run_dir.read_run(online_run)
    assert run["status"] == "finished" and run["steps"] == 4 and run["inputs"]["preferences"] is None
    assert round_bounds(4, 2) == [0, 2, 4]
    rounds = run["data"]["rounds"]
    assert [r["questions"] for r in rounds] == [12, 12] and all(r["pairs"] > 0 for r in rounds)
    assert run["data"]["val"]["questions"] == 8
    lookup = record_split_lookup(read_record_splits(dpo_runs.data.splits))
    online = online_run / "online"
    for folder, split, update in (("val", "val", 0), ("round-1", "train", 0), ("round-2", "train", 2)):
        table = pq.read_table(online / folder / "preferences.parquet").to_pylist()
        assert table and all(r["judge"] == "reference:rouge-l" for r in table)
        # questions of one split only: the evaluation split is never asked
        assert {lookup[tuple(ref)][1] for r in table for ref in r["ecg_refs"]} == {split}
        # every candidate was sampled from the policy as it was at the stage's start, with its own seed
        candidates = [
            [json.loads(line) for line in (online / folder / f"candidate-{k}" / "predictions.jsonl").open()]
            for k in (1, 2, 3)
        ]
        assert {row["checkpoint"].rsplit("@", 1)[1] for c in candidates for row in c} == {str(update)}
        assert len({c[0]["decoding"]["seed"] for c in candidates}) == 3
        assert all(c[0]["decoding"]["strategy"] == "sample" for c in candidates)
    # different questions each round, drawn from the train split
    first, second = (
        {
            r["prompt"][0]["content"] + str(r["ecg_refs"])
            for r in pq.read_table(online / f / "preferences.parquet").to_pylist()
        }
        for f in ("round-1", "round-2")
    )
    assert first != second

    # the reference of round 2 is the starting checkpoint (recomputed from its files), not the policy
    from safetensors.numpy import load_file

    from ecgbench.data.dataset import RecordIndex
    from ecgbench.train.devices import make_accelerator
    from ecgbench.train.dpo import PairDataset, PairECGs, read_pairs, reference_logprobs

    path = online / "round-2" / "preferences.parquet"
    pairs, _ = read_pairs(path)
    start = load_elm(dpo_runs.sampling_sft() / run_dir.BEST_DIR)
    ecgs = PairECGs(
        RecordIndex.open([dpo_runs.data.store]), start.config.signal_length, start.config.fs, path
    )
    dataset = PairDataset(pairs, ecgs, start.processor, 256, None)
    stored = load_file(str(online / "round-2" / REFERENCE_FILE))["train"]
    np.testing.assert_allclose(
        reference_logprobs(start, dataset, 8, make_accelerator("no")), stored, atol=1e-4
    )
    policy = load_elm(run_dir.step_dir(online_run, 2))
    assert np.abs(reference_logprobs(policy, dataset, 8, make_accelerator("no")) - stored).max() > 1e-3

    val = [r for r in run_dir.read_metrics(online_run) if r["split"] == "val"]
    assert [r["step"] for r in val] == [2, 4]
    assert val[-1]["reward_margin"] > 0  # the judged-better answers of held-out questions gained


def test_online_dpo_resumes_a_run_killed_between_rounds(
    online_run: Path, dpo_runs: DPORuns, tmp_path: Path
) -> None:
    cut = tmp_path / "cut"
    shutil.copytree(online_run, cut)
    shutil.rmtree(run_dir.step_dir(cut, 4))
    shutil.rmtree(cut / "online" / "round-2")  # killed after round 1, before round 2 was sampled
    result = cli("train", "dpo", "--checkpoint", dpo_runs.sampling_sft(), "--resume", cut, *ONLINE_FLAGS)
    assert result.exit_code == 0, result.output

    def losses(run: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in run_dir.read_metrics(run)]

    assert losses(cut) == losses(online_run)
    same = pq.read_table(online_run / "online" / "round-2" / "preferences.parquet").drop_columns(
        ["timestamp"]
    )
    again = pq.read_table(cut / "online" / "round-2" / "preferences.parquet").drop_columns(["timestamp"])
    assert again.equals(same)


def test_online_dpo_bad_input_is_one_line_and_writes_nothing(dpo_runs: DPORuns, tmp_path: Path) -> None:
    sft = dpo_runs.sampling_sft()
    at = ONLINE_FLAGS.index("--max-steps")
    without_steps = ONLINE_FLAGS[:at] + ONLINE_FLAGS[at + 2 :]
    cases = {
        "both modes": (["--preferences", str(dpo_runs.preferences()), *ONLINE_FLAGS], "not both"),
        "no mode": (DPO_FLAGS, "give --preferences"),
        "no --max-steps": (without_steps, "online DPO needs --max-steps"),
        "--epochs": ([*ONLINE_FLAGS, "--epochs", "2"], "--epochs is for offline DPO"),
        "more rounds than updates": ([*ONLINE_FLAGS, "--rounds", "5"], "without an update"),
        "unknown judge": ([*ONLINE_FLAGS, "--judge", "oracle"], "unknown judge 'oracle'"),
    }
    for case, (flags, message) in cases.items():
        out = tmp_path / "run"
        result = cli("train", "dpo", "--checkpoint", sft, "--out", out, *flags)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2 and len(errors) == 1, (case, result.output)
        assert message in errors[0], (case, result.output)
        assert not out.exists(), case

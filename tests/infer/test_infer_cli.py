"""`ecgbench infer generate | evaluate | compare | report | baseline` end to end through the command line, on
the bundled real sample: the labels conversations (`data map labels`), split by patient (`data split --folds
5`), a tiny end-to-end ELM (tiny GPT-2: the real GPT-2 vocabulary, random weights) trained for 4 steps.

Generation runs are shared by the tests of this module (module-scoped, made on first use) and short: 20
test questions, 8 new tokens, bootstrap intervals from 200 resamples.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data.conversations import read_conversation_set
from ecgbench.models.elm import ELM

runner = CliRunner()

GENERATE = ["--max-new-tokens", "8", "--max-length", "256", "--batch-size", "4"]
BOOT = ["--bootstrap-resamples", "200"]
EVALUATE = ["--bertscore", "off", *BOOT]
PREDICTION_FIELDS = {
    "conversation_id", "turn", "source", "question_type", "answer_options", "question", "reference",
    "prediction", "ecg_refs", "ecg_mode", "decoding", "checkpoint",
}  # fmt: skip
GREEDY = {"strategy": "greedy", "max_new_tokens": 8, "do_sample": False, "seed": 0}


def cli(*args: Any) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: Any) -> str:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return result.output


def fails(*args: Any) -> str:
    """The one-line error of a command that must refuse its input (exit code 2, no traceback)."""
    result = cli(*args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(path)]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models on a shared machine: one intra-op thread is faster than two fighting for a core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Runs:
    """The inputs and runs shared by this module's tests, each made once, on first use."""

    def __init__(self, store: Path, root: Path):
        self.store = store
        self.root = root
        ok("data", "map", "labels", "--store", store, "--out", root / "sets")
        ok(
            "data", "split", "--store", store, "--sets", root / "sets" / "labels.parquet",
            "--out", root / "split", "--folds", "5",
        )  # fmt: skip
        self.sets = root / "split" / "labels.parquet"
        self.splits = root / "split" / "splits.parquet"
        ok(
            "tokenizer", "train", "--store", store, "--splits", self.splits, "--split", "train",
            "--num-merges", "300", "--out", root / "tokenizer.json",
        )  # fmt: skip
        self.checkpoint = root / "run"
        ok(
            "train", "end2end", "--store", store, "--sets", self.sets, "--tokenizer", root / "tokenizer.json",
            "--out", self.checkpoint, "--llm", "tiny-gpt2", "--max-steps", "4", "--batch-size", "4",
            "--max-length", "256", "--eval-every", "2", "--num-workers", "0", "--report-to", "none",
        )  # fmt: skip
        self.done: dict[str, Path] = {}

    def data(self) -> list[Any]:
        return ["--store", self.store, "--sets", self.sets]

    def generated(self, name: str = "G", *extra: Any, modes: tuple[str, ...] = ("real", "shuffled")) -> Path:
        """An `infer generate` output folder (one sub-folder per ECG mode)."""
        if name not in self.done:
            ecg = [flag for mode in modes for flag in ("--ecg", mode)]
            ok(
                "infer",
                "generate",
                "--checkpoint",
                self.checkpoint,
                "--out",
                self.root / name,
                *ecg,
                *GENERATE,
                *extra,
            )
            self.done[name] = self.root / name
        return self.done[name]

    def evaluated(self) -> Path:
        """G with both modes evaluated."""
        out = self.generated()
        if "evaluated" not in self.done:
            for mode in ("real", "shuffled"):
                ok("infer", "evaluate", out / mode / "predictions.jsonl", *EVALUATE)
            self.done["evaluated"] = out
        return out

    def baselines(self) -> Path:
        """B/majority and B/nearest on the test split, evaluated."""
        out = self.root / "B"
        if "baselines" not in self.done:
            for name in ("majority", "nearest"):
                ok("infer", "baseline", name, *self.data(), "--out", out / name)
                ok("infer", "evaluate", out / name / "predictions.jsonl", *EVALUATE)
            self.done["baselines"] = out
        return out

    def test_questions(self) -> list[tuple[str, int]]:
        """(conversation id, assistant turn) of every test-split question, from the set itself."""
        table = read_conversation_set(self.sets).to_pylist()
        return [
            (row["conversation_id"], k)
            for row in table
            if row["split"] == "test"
            for k, turn in enumerate(row["turns"])
            if turn["role"] == "assistant"
        ]


@pytest.fixture(scope="module")
def runs(sample_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(sample_store, tmp_path_factory.mktemp("infer_cli"))


# ------------------------------------------------------------------------------------------- generate


def test_generate_writes_every_field_once_per_question(runs: Runs) -> None:
    out = runs.generated()
    expected = runs.test_questions()
    for mode in ("real", "shuffled"):
        predictions = rows(out / mode / "predictions.jsonl")
        assert [
            (r["conversation_id"], r["turn"]) for r in predictions
        ] == expected  # question order, once each
        for row in predictions:
            assert row.keys() >= PREDICTION_FIELDS
            assert row["ecg_mode"] == mode
            assert row["decoding"] == GREEDY
            assert row["checkpoint"].startswith(str((runs.checkpoint / "best").resolve()) + "#")
            assert row["ecg_refs"] and all(corpus and record for corpus, record in row["ecg_refs"])
            assert isinstance(row["prediction"], str)
            assert isinstance(row["answer_options"], list)


def test_greedy_decoding_is_deterministic(runs: Runs) -> None:
    first = runs.generated() / "real" / "predictions.jsonl"
    again = runs.generated("G-again", modes=("real",)) / "real" / "predictions.jsonl"
    assert first.read_bytes() == again.read_bytes()


def test_sampling_with_a_seed_is_reproducible_and_recorded(runs: Runs) -> None:
    sample = ["--do-sample", "--temperature", "1.5", "--top-k", "50", "--seed", "7"]
    one = rows(runs.generated("S1", *sample, modes=("real",)) / "real" / "predictions.jsonl")
    two = rows(runs.generated("S2", *sample, modes=("real",)) / "real" / "predictions.jsonl")
    assert one == two
    assert {json.dumps(r["decoding"], sort_keys=True) for r in one} == {
        json.dumps(
            {"strategy": "sample", "max_new_tokens": 8, "do_sample": True, "temperature": 1.5, "top_p": 1.0,
             "top_k": 50, "seed": 7},
            sort_keys=True,
        )
    }  # fmt: skip
    greedy = rows(runs.generated() / "real" / "predictions.jsonl")
    assert [r["prediction"] for r in one] != [r["prediction"] for r in greedy]  # it did sample


def test_a_killed_generate_resumes_without_answering_a_finished_question_again(
    runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = runs.root / "K"
    predictions = out / "real" / "predictions.jsonl"
    argv = [
        Path(sys.executable).parent / "ecgbench", "infer", "generate", "--checkpoint", runs.checkpoint,
        "--out", out, "--ecg", "real", "--max-new-tokens", "48", "--max-length", "256", "--batch-size", "1",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [str(a) for a in argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if predictions.is_file() and len(predictions.read_bytes().splitlines()) >= 3:
                break
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    before = predictions.read_text(encoding="utf-8").splitlines()
    total = len(runs.test_questions())
    assert 3 <= len(before) < total, f"{len(before)} of {total} lines when killed: kill earlier"
    finished = [line for line in before if _parses(line)]  # a line a kill cut short is not finished

    answered = []  # prompts the resumed run generates
    generate = ELM.generate

    def counting(self: ELM, batch: Any, **kwargs: Any) -> list[str]:
        answered.append(int(batch["input_ids"].shape[0]))
        return generate(self, batch, **kwargs)

    monkeypatch.setattr(ELM, "generate", counting)
    ok(*argv[1:])
    after = lines(predictions)
    finished_rows = [json.loads(line) for line in finished]
    assert sum(answered) == total - len(finished_rows)
    assert set(finished) <= set(after)  # the lines written before the kill, byte for byte
    keys = [(r["conversation_id"], r["turn"]) for r in map(json.loads, after)]
    assert keys == runs.test_questions() and len(set(keys)) == total
    # and they are the answers an uninterrupted run gives (greedy)
    whole = runs.generated("K-whole", "--max-new-tokens", "48", "--batch-size", "1", modes=("real",))
    uninterrupted = rows(whole / "real" / "predictions.jsonl")
    assert rows(predictions) == uninterrupted


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def test_generate_refuses_to_resume_another_run_into_the_same_folder(runs: Runs) -> None:
    out = runs.generated()
    error = fails(
        "infer", "generate", "--checkpoint", runs.checkpoint, "--out", out, "--ecg", "real", *GENERATE,
        "--max-new-tokens", "9",
    )  # fmt: skip
    assert "holds answers with another decoding" in error


# ------------------------------------------------------------------------------- evaluate, compare, report


def test_evaluate_writes_results_and_samples(runs: Runs) -> None:
    out = runs.evaluated()
    for mode in ("real", "shuffled"):
        results = json.loads((out / mode / "results.json").read_text(encoding="utf-8"))
        assert results["profile"] == "ecgbench" and results["ecg_mode"] == mode
        assert results["n_items"] == len(runs.test_questions())
        assert results["decoding"] == GREEDY
        assert results["checkpoint"].startswith(str((runs.checkpoint / "best").resolve()))
        assert results["versions"]["torch"] and results["versions"]["python"]
        assert {"acc", "bleu4", "qa_acc", "token_f1"} <= results["metrics"].keys()
        assert results["by_question_type"]
        samples = rows(out / mode / "samples.jsonl")
        assert len(samples) == results["n_items"]
        assert all("scores" in s and s["ecg_mode"] == mode for s in samples)


def test_compare_writes_paired_tests(runs: Runs) -> None:
    out = runs.evaluated()
    ok("infer", "compare", out / "real", out / "shuffled", "--out", runs.root / "cmp", *BOOT)
    compared = json.loads((runs.root / "cmp" / "compare.json").read_text(encoding="utf-8"))
    result = compared["comparisons"][str(out / "shuffled")]
    assert result["n_items"] == len(runs.test_questions())
    assert result["metrics"]["acc"]["test"].startswith("mcnemar")
    assert "p_holm" in result["metrics"]["bleu4"]


def test_report_compares_runs_and_the_ecg_modes(runs: Runs) -> None:
    out = runs.evaluated()
    baselines = runs.baselines()
    report_dir = runs.root / "report"
    output = ok("infer", "report", out, baselines, "--out", report_dir, *BOOT)
    assert "ECG reliance of" in output and "per question type" in output
    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    names = [run["name"] for run in report["runs"]]
    assert names == [
        str(out / "real"),
        str(out / "shuffled"),
        str(baselines / "majority"),
        str(baselines / "nearest"),
    ]
    assert report["n_items"] == len(runs.test_questions())
    assert sorted(report["comparisons"]) == sorted(names[1:])
    # the reliance of the ELM: real vs shuffled; the baselines (two checkpoints) give none
    (reliance,) = report["ecg_reliance"]
    assert reliance["run"] == str(out) and reliance["modes"] == ["shuffled"]
    acc = reliance["metrics"]["acc"]
    assert acc["real"] == report["runs"][0]["metrics"]["acc"]["value"]
    shuffled = acc["modes"]["shuffled"]
    assert shuffled["value"] == report["runs"][1]["metrics"]["acc"]["value"]
    assert shuffled["difference"] == pytest.approx(acc["real"] - shuffled["value"])
    assert shuffled["test"].startswith("mcnemar") and "p_holm" in shuffled
    # majority vs the ELM: the paired comparison matches the two runs' own values
    majority = report["comparisons"][str(baselines / "majority")]["metrics"]["acc"]
    assert majority["b"] == report["runs"][2]["metrics"]["acc"]["value"]
    assert report["plots"] == ["metrics.png", "question_types.png", "ecg_reliance.png"]
    for plot in report["plots"]:
        assert (report_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_and_compare_refuse_runs_on_different_items(runs: Runs) -> None:
    out = runs.evaluated()
    part = runs.root / "part"
    part.mkdir()
    (part / "predictions.jsonl").write_text("\n".join(lines(out / "real" / "predictions.jsonl")[:10]) + "\n")
    ok("infer", "evaluate", part / "predictions.jsonl", *EVALUATE)
    for command in (["compare", out / "real", part], ["report", out, part, "--out", runs.root / "rep2"]):
        error = fails("infer", *command, *BOOT)
        assert "were evaluated on different items" in error
    assert not (runs.root / "rep2" / "report.json").exists()


def test_report_names_predictions_left_unevaluated(runs: Runs) -> None:
    out = runs.evaluated()
    folder = runs.root / "pending"
    for name in ("predictions.jsonl", "results.json", "samples.jsonl"):
        (folder / "real").mkdir(parents=True, exist_ok=True)
        (folder / "real" / name).write_bytes((out / "real" / name).read_bytes())
    (folder / "noise").mkdir()
    (folder / "noise" / "predictions.jsonl").write_bytes(
        (out / "shuffled" / "predictions.jsonl").read_bytes()
    )
    output = ok("infer", "report", folder, "--out", runs.root / "pending-report", *BOOT)
    assert "note:" in output and "pending/noise has predictions but no results.json" in output
    report = json.loads((runs.root / "pending-report" / "report.json").read_text(encoding="utf-8"))
    assert [run["name"] for run in report["runs"]] == [str(folder / "real")]
    assert report["ecg_reliance"] == [] and len(report["notes"]) == 1
    assert report["plots"] == ["metrics.png", "question_types.png"]


# ------------------------------------------------------------------------------------------- baselines


def test_baselines_answer_from_the_train_split_only(runs: Runs) -> None:
    out = runs.baselines()
    table = read_conversation_set(runs.sets).to_pylist()
    by_id = {row["conversation_id"]: row for row in table}
    patients = {
        (r["corpus"], r["record_id"]): r["patient_id"]
        for r in pq.read_table(runs.splits, columns=["corpus", "record_id", "patient_id"]).to_pylist()
    }
    train = [row for row in table if row["split"] == "train"]
    for name in ("majority", "nearest"):
        predictions = rows(out / name / "predictions.jsonl")
        assert [(r["conversation_id"], r["turn"]) for r in predictions] == runs.test_questions()
        assert all(
            r.keys() >= PREDICTION_FIELDS and r["checkpoint"].startswith(f"baseline:{name}#")
            for r in predictions
        )
        assert {r["ecg_mode"] for r in predictions} == {"none" if name == "majority" else "real"}
        results = json.loads((out / name / "results.json").read_text(encoding="utf-8"))
        assert results["n_items"] == len(predictions) and results["decoding"]["strategy"] == name
    # majority: the option of each question answered most often for its type on the train split
    for row in rows(out / "majority" / "predictions.jsonl"):
        counts = Counter(
            t["turns"][1]["content"] for t in train if t["question_type"] == row["question_type"]
        )
        if row["answer_options"]:
            assert counts[row["prediction"]] == max(counts[o] for o in row["answer_options"])
            assert row["prediction"] in row["answer_options"]
    # nearest: a training conversation asked the same question, of another patient; its answer
    nearest = rows(out / "nearest" / "predictions.jsonl")
    from_neighbour = [r for r in nearest if r["answer_from"] == "neighbour"]
    assert from_neighbour
    for row in from_neighbour:
        neighbour = by_id[row["neighbour"]]
        assert neighbour["split"] == "train"
        assert neighbour["turns"][row["turn"] - 1]["content"] == row["question"]
        assert neighbour["turns"][row["turn"]]["content"] == row["prediction"]
        own = {patients[tuple(ref)] for ref in row["ecg_refs"]}
        assert own.isdisjoint(patients[(e["corpus"], e["record_id"])] for e in neighbour["ecgs"])
    # where no training conversation asked the question, the majority answer
    majority = {
        (r["conversation_id"], r["turn"]): r["prediction"]
        for r in rows(out / "majority" / "predictions.jsonl")
    }
    for row in nearest:
        if row["answer_from"] == "majority":
            assert row["prediction"] == majority[(row["conversation_id"], row["turn"])]
            assert not any(
                t["turns"][row["turn"] - 1]["content"] == row["question"]
                for t in train
                if len(t["turns"]) > row["turn"]
            )


def _with_splits(runs: Runs, name: str, change: Any) -> Path:
    """A copy of the split labels set with its split column changed by ``change(table) -> split array``."""
    table = pq.read_table(runs.sets)
    column = table.schema.get_field_index("split")
    out = runs.root / name
    pq.write_table(table.set_column(column, table.schema.field("split"), change(table)), out)
    return out


def test_baseline_refuses_a_split_sharing_a_record_with_train(runs: Runs) -> None:
    def leak(table: pa.Table) -> pa.Array:
        # one conversation about a test record moves to train; the record's other questions stay in test
        split = table.column("split").to_pylist()
        split[split.index("test")] = "train"
        return pa.array(split, pa.string())

    leaky = _with_splits(runs, "leaky.parquet", leak)
    error = fails(
        "infer", "baseline", "nearest", "--store", runs.store, "--sets", leaky, "--out", runs.root / "BL"
    )
    assert "share 1 record(s)" in error
    assert "answer another --split" in fails(
        "infer", "baseline", "majority", *runs.data(), "--split", "train", "--out", runs.root / "BT"
    )


# ------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_are_one_line_errors(runs: Runs) -> None:
    out = runs.evaluated()
    real = lines(out / "real" / "predictions.jsonl")
    bad = runs.root / "bad"
    bad.mkdir()
    missing = json.loads(real[2])
    del missing["reference"]
    (bad / "missing.jsonl").write_text("\n".join([real[0], real[1], json.dumps(missing)]) + "\n")
    error = fails("infer", "evaluate", bad / "missing.jsonl", *EVALUATE)
    assert "missing.jsonl" in error and "prediction item 3: 'reference' must be a string" in error

    shuffled = lines(out / "shuffled" / "predictions.jsonl")
    (bad / "mixed.jsonl").write_text("\n".join([*real[:5], *shuffled[5:]]) + "\n")
    assert "the predictions mix ECG modes (real, shuffled)" in fails(
        "infer", "evaluate", bad / "mixed.jsonl", *EVALUATE
    )
    majority = lines(runs.baselines() / "majority" / "predictions.jsonl")
    (bad / "two-runs.jsonl").write_text("\n".join([*real[:5], *majority[5:]]) + "\n")
    assert "mixes predictions of 2 different checkpoint values" in fails(
        "infer", "evaluate", bad / "two-runs.jsonl", *EVALUATE
    )

    assert "checkpoint not found" in fails(
        "infer", "generate", "--checkpoint", runs.root / "nothing", "--out", bad / "g", *GENERATE
    )
    # a flat line has no ECG-Byte encoding (each lead is scaled by its own range): refused before any answer
    assert "ablate a token ELM with --ecg noise, shuffled or none" in fails(
        "infer", "generate", "--checkpoint", runs.checkpoint, "--ecg", "zeros", "--out", bad / "z", *GENERATE
    )
    assert not (bad / "z").exists()

    empty = _with_splits(
        runs,
        "no-test.parquet",
        lambda t: pc.if_else(pc.equal(t.column("split"), "test"), "val", t.column("split")),
    )
    for command in (
        [
            "generate",
            "--checkpoint",
            runs.checkpoint,
            "--store",
            runs.store,
            "--sets",
            empty,
            "--out",
            bad / "e",
            *GENERATE,
        ],
        ["baseline", "majority", "--store", runs.store, "--sets", empty, "--out", bad / "e"],
    ):
        assert "has no conversation in the test split" in fails("infer", *command)
    assert not (bad / "e").exists()

    # BERTScore asked for by name, without its roberta-large weights offline
    error = fails(
        "infer",
        "evaluate",
        out / "real" / "predictions.jsonl",
        "--bertscore",
        "bertscore",
        "--out",
        bad / "bs",
    )
    assert "roberta-large" in error
    assert not (bad / "bs").exists()

"""The packaged recipes of the published comparisons: ECG-Bench's "Signal, Image, or Symbolic" on ECG-QA
PTB-XL, ECG-QA MIMIC-IV-ECG, pretrain-MIMIC, ECG-Instruct-45K and PULSE ECGBench.

``--dry-run`` shows each plans 5 patient-level folds x 4 representations with the peer's sizes, every fold
scored with its own checkpoint on its own test fold; each recipe also runs end to end (one fold, all four
representations, so every paradigm path runs) on tiny offline presets against corpora written in their
upstream layouts from the bundled real records (tests/data/corpus_fixtures.py, tests/data/sets_helpers.py)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgbench.cli import app

sys.path.insert(0, str(Path(__file__).parent / "data"))  # the fixture writers shared with the data tests
from corpus_fixtures import write_mimic_cohort, write_ptbxl
from sets_helpers import ECG_CHAT_ITEMS, write_ecg_chat, write_ecgqa, write_pulse_bench

runner = CliRunner()

# recipe -> (its input variables, the conversation set it maps)
COMPARISONS = {
    "ecgqa-ptbxl": (("ptbxl", "ecgqa"), "ecg-qa-ptbxl"),
    "ecgqa-mimic": (("mimic", "ecgqa"), "ecg-qa-mimic"),
    "pretrain-mimic": (("mimic", "pretrain_mimic"), "pretrain-mimic"),
    "ecg-instruct-45k": (("mimic", "ecg_instruct_45k"), "ecg-instruct-45k"),
    "pulse-ecgbench": (("ptbxl", "ecgbench"), "ecg-bench-pulse"),
}
REPRESENTATIONS = ("ecg-byte", "signal", "stacked", "image")
PARADIGMS = {"ecg-byte": "end2end", "signal": "scratch", "stacked": "llava", "image": "llava"}
PEER_SIZES = "--llm llama-3.2-1b --llm-training lora --lora-rank 16 --lora-alpha 32 --lr 1e-4"
PTBXL_IDS = (1, 6000, 6001, 6002, 6003, 6004)  # the records of write_ptbxl

# Tiny offline presets for the end-to-end runs: one fold, one epoch over a handful of conversations (one or
# two updates), 2 s segments, a small ECG-Byte tokenizer, tiny ST-MEM and tiny random SigLIP towers, 4 answer
# tokens.
TINY = {
    "llm": "tiny-gpt2", "fold": "1", "epochs": "1", "batch_size": "4", "max_length": "288",
    "seg_len": "500", "eval_every": "100", "val_conversations": "2", "num_workers": "0",
    "prepare_workers": "1", "warmup_steps": "0", "num_merges": "50", "tokenizer_sample": "20",
    "clusters": "2", "encoder_preset": "tiny", "encoder_epochs": "1", "encoder_batch_size": "8",
    "vision_preset": "tiny", "max_new_tokens": "4", "bootstrap": "20",
}  # fmt: skip


def _sets(values: dict[str, object]) -> list[str]:
    return [a for name, value in values.items() for a in ("--set", f"{name}={value}")]


def _plan(output: str) -> dict[str, tuple[str, str]]:
    """``--dry-run`` output -> {stage id: (notes, command line)}."""
    plan: dict[str, tuple[str, str]] = {}
    lines = output.splitlines()
    for k, line in enumerate(lines):
        match = re.match(r"^(?:runs|cached)\s+(\S+?)(?::\s(.*))?$", line)
        if match:
            plan[match.group(1)] = (match.group(2) or "", lines[k + 1].strip().removeprefix("ecgbench "))
    return plan


@pytest.mark.parametrize("name", list(COMPARISONS))
def test_dry_run_plans_five_folds_by_four_representations_with_the_peer_sizes(
    name: str, tmp_path: Path
) -> None:
    inputs, set_name = COMPARISONS[name]
    out = tmp_path / "run"
    dry = runner.invoke(
        app, ["run", name, "--dry-run", *_sets({"out": out, **{v: tmp_path / v for v in inputs}})]
    )
    assert dry.exit_code == 0, dry.output
    cells = [f"fold={f},representation={r}" for f in range(1, 6) for r in REPRESENTATIONS]
    assert re.findall(r"^  cell \d+: (\S+)$", dry.stdout, re.M) == cells
    plan = _plan(dry.stdout)
    assert len(plan) == 2 + 5 * 4 + 20 * 5 + 1  # shared, per fold, per cell, the report
    for shared in ("prepare", "map"):
        assert plan[shared][0].endswith("shared by 20 cells")
    assert f"data map {set_name} --store {out}/store --source {tmp_path}/" in plan["map"][1]
    for fold in range(1, 6):
        split = plan[f"split[fold={fold}]"]
        assert split[0].endswith("shared by 4 cells")
        assert f"--folds 5 --test-fold {fold - 1} --val-fold {fold % 5} " in split[1]
        # The tokenizer and the signal encoder of a fold, only for the cells that read them.
        owners = (("tokenizer-sample", "ecg-byte"), ("tokenizer", "ecg-byte"), ("encoder", "signal"))
        for stage, rep in owners:
            assert plan[f"{stage}[fold={fold},representation={rep}]"][0] == "never ran"
        fold_set = f"{out}/fold={fold}/splits/{set_name}.parquet"
        for rep in REPRESENTATIONS:
            cell = f"fold={fold},representation={rep}"
            train = plan[f"train[{cell}]"][1]
            assert train.startswith(f"train {PARADIGMS[rep]} --store {out}/store --sets {fold_set} ")
            assert PEER_SIZES in train and train.endswith(f"--out {out}/{cell}/elm")
            own = {
                "ecg-byte": f"--tokenizer {out}/fold={fold}/tokenizer.json",
                "signal": f"--encoder-checkpoint {out}/fold={fold}/encoder/encoder",
                "stacked": "--representation stacked --encoder siglip --encoder-preset base",
                "image": "--representation image --encoder siglip --encoder-preset base",
            }[rep]
            assert own in train
            # The fold's own checkpoint answers the fold's own test split, greedy and with a pinned length.
            generate = plan[f"generate[{cell}]"][1]
            assert f"--checkpoint {out}/{cell}/elm --sets {fold_set} --split test" in generate
            assert "--ecg real --ecg shuffled --no-do-sample --max-new-tokens 128" in generate
            compare = plan[f"compare[{cell}]"][1]
            assert compare.startswith(f"infer compare {out}/{cell}/eval/real {out}/{cell}/eval/shuffled")
    report = plan["report"][1]
    assert report.startswith("infer report " + " ".join(f"{out}/{c}/eval" for c in cells) + " ")
    # The inputs are not there: the plan says so, naming the variable for each (corpus, then questions).
    missing = re.findall(
        r"^stage (\w+): input not found: .* \(give it with --set (\w+)=PATH\)", dry.stdout, re.M
    )
    assert missing == [("prepare", inputs[0]), ("map", inputs[1])]


@pytest.fixture(scope="session")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every input of the five recipes, in the upstream layouts: a PTB-XL root (6 real records, 6 patients), a
    MIMIC-IV-ECG root (5 patients, 2 studies each), the ECG-QA question folders for both, ECG-Chat's two JSON
    files and PULSE's ECGBench JSON, their real items re-pointed at those records."""
    root = tmp_path_factory.mktemp("corpora")
    studies = write_mimic_cohort(root / "mimic-iv-ecg")
    ecgqa = write_ecgqa(root / "ecg-qa", "ptbxl", [[i] for i in PTBXL_IDS], per_file=3)
    # ECG-QA MIMIC items compare two ECGs: two studies of one patient (so the pair stays in one fold).
    write_ecgqa(ecgqa, "mimic", [[int(studies[k][1]), int(studies[k + 1][1])] for k in range(0, 10, 2)], 5)
    instruct, report = ECG_CHAT_ITEMS[0], ECG_CHAT_ITEMS[1]  # a two-turn dialogue; a report request
    return {
        "ptbxl": write_ptbxl(root / "ptb-xl"),
        "mimic": root / "mimic-iv-ecg",
        "ecgqa": ecgqa,
        "pretrain_mimic": write_ecg_chat(root / "ecg-chat" / "pretrain_mimic.json", studies, [report]),
        "ecg_instruct_45k": write_ecg_chat(root / "ecg-chat" / "ecg_instruct_45k.json", studies, [instruct]),
        "ecgbench": write_pulse_bench(root / "pulse" / "ptb_report_generation_test.json", PTBXL_IDS, 2),
    }


# ECG-QA MIMIC-IV-ECG compares two ECGs per question: twice the ECG tokens (196 each from a vision tower).
LONGER = {"ecgqa-mimic": {"max_length": "480"}}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMPARISONS))
def test_recipe_runs_every_representation_on_tiny_presets(
    name: str, corpora: dict[str, Path], tmp_path: Path
) -> None:
    inputs, set_name = COMPARISONS[name]
    out = tmp_path / "run"
    values = {"out": out, **{v: corpora[v] for v in inputs}, **TINY, **LONGER.get(name, {})}
    result = runner.invoke(app, ["run", name, *_sets(values)])
    assert result.exit_code == 0, result.output
    assert "done: 27 stage(s) ran, 0 cached" in " ".join(result.stderr.split())
    cells = [f"fold=1,representation={r}" for r in REPRESENTATIONS]
    for cell in cells:
        for mode in ("real", "shuffled"):
            results = json.loads((out / cell / "eval" / mode / "results.json").read_text())
            assert results["ecg_mode"] == mode and results["n_items"] > 0, (cell, mode)
            assert results["decoding"]["do_sample"] is False and results["decoding"]["max_new_tokens"] == 4
            assert {"acc", "bleu4", "meteor", "rougeL"} <= set(results["metrics"])
            assert all(m["n"] == results["n_items"] for m in results["metrics"].values())
            assert results["checkpoint"].startswith(f"{out}/{cell}/elm/best")  # the cell's own model
        assert json.loads((out / cell / "eval" / "compare.json").read_text())
    report = json.loads((out / "report" / "report.json").read_text())
    runs = [(Path(r["name"]).parent.parent.name, r["ecg_mode"]) for r in report["runs"]]
    assert runs == [(c, mode) for c in cells for mode in ("real", "shuffled")]
    assert all(r["metrics"] for r in report["runs"])
    reliance = report["ecg_reliance"]
    assert [Path(r["run"]).parent.name for r in reliance] == cells
    assert all(r["modes"] == ["shuffled"] and r["n_items"] > 0 for r in reliance)
    assert set_name in {p.stem for p in (out / "fold=1" / "splits").glob("*.parquet")}


def test_a_missing_corpus_is_one_line_before_anything_runs(corpora: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    absent = runner.invoke(app, ["run", "ecgqa-ptbxl", *_sets({"out": out, "ptbxl": tmp_path / "nope",
                                                               "ecgqa": corpora["ecgqa"]})])  # fmt: skip
    assert absent.exit_code == 2
    assert " ".join(absent.stderr.split()) == (
        f"error: stage prepare: input not found: {tmp_path}/nope/ptbxl_database.csv (give it with --set "
        "ptbxl=PATH); nothing ran"
    )
    assert "Traceback" not in absent.output and not out.exists()
    # The question set is read only after the corpus is prepared: it is checked before that too.
    questions = runner.invoke(app, ["run", "ecgqa-mimic", *_sets({"out": out, "mimic": corpora["mimic"],
                                                                  "ecgqa": tmp_path / "none"})])  # fmt: skip
    assert questions.exit_code == 2
    assert "stage map: input not found" in questions.stderr and "--set ecgqa=PATH" in questions.stderr
    assert not out.exists()

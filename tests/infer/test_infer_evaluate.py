"""evaluate_items on real texts: the peer profile equals the libraries called directly, nothing is dropped,
ECG-QA aware scores per question type, paired comparison, ECG reliance, and the results files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from infer_helpers import prediction_item, write_jsonl
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu
from nltk.translate.meteor_score import meteor_score
from rouge import Rouge
from sklearn.metrics import roc_auc_score

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.infer.evaluate import (
    compare_samples,
    ecg_reliance,
    evaluate_items,
    read_predictions,
    read_results,
    read_samples,
    split_by_ecg_mode,
    summarize_results,
    write_evaluation,
)

FAST = {"bertscore": "off", "resamples": 200}


@pytest.fixture(scope="module")
def peer_run(report_items: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return evaluate_items(report_items, "peer", **FAST)


def _qa_items(ecgqa_questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """30 verify and 30 query items of the bundled ECG-QA sample with predictions of every kind; query items
    carry ``labels_said`` (an extra field, as items may have): the labels their prediction names."""
    verify_all = [q for q in ecgqa_questions if q["question_type"] == "single-verify"]
    yes, no = ([q for q in verify_all if q["reference"] == answer] for answer in ("yes", "no"))
    verify = [q for pair in zip(yes[:15], no[:15], strict=True) for q in pair]
    query = [q for q in ecgqa_questions if q["question_type"] == "comparison_irrelevant-query"][:30]
    items = []
    for i, q in enumerate(verify):
        ref = q["reference"]
        # right, right with words around it, the other answer, no option at all, empty
        prediction = [
            ref,
            f"{ref.capitalize()}, I think.",
            "no" if ref == "yes" else "yes",
            "static noise",
            "",
        ]
        scores = {option: 0.6 * (option == ref) + 0.2 * (i % 3) for option in q["answer_options"]}
        common = {
            "question_type": q["question_type"],
            "answer_options": q["answer_options"],
            "source": "ecgqa",
        }
        items.append(
            prediction_item(q["conversation_id"], ref, prediction[i % 5], option_scores=scores, **common)
        )
    for i, q in enumerate(query):
        answer = q["answer"]
        # exact, reordered and joined with "and", the first label only, a fixed pair
        prediction = [q["reference"], " and ".join(reversed(answer)), answer[0], "p duration, qt interval"]
        said = [answer, answer, answer[:1], ["p duration", "qt interval"]]
        common = {
            "question_type": q["question_type"],
            "answer_options": q["answer_options"],
            "source": "ecgqa",
        }
        items.append(
            prediction_item(
                q["conversation_id"], q["reference"], prediction[i % 4], labels_said=said[i % 4], **common
            )
        )
    return items


@pytest.fixture(scope="module")
def qa_run(ecgqa_questions: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict]]:
    items = _qa_items(ecgqa_questions)
    results, samples = evaluate_items(items, "ecgbench", **FAST)
    return results, samples, items


def test_peer_profile_equals_the_libraries_called_directly(report_items: list[dict[str, Any]]) -> None:
    # the pairs every library accepts: the peer's numbers must come out exactly
    items = [item for item in report_items if item["prediction"] not in ("", "...")]
    refs, hyps = [i["reference"] for i in items], [i["prediction"] for i in items]
    results, _ = evaluate_items(items, "peer", **FAST)
    metrics = {name: entry["value"] for name, entry in results["metrics"].items()}
    peer_rouge = Rouge().get_scores(hyps, refs, avg=True)
    expected = {
        "acc": np.mean([r == h for r, h in zip(refs, hyps, strict=True)]),
        "bleu4": corpus_bleu(
            [[r.split()] for r in refs],
            [h.split() for h in hyps],
            smoothing_function=SmoothingFunction().method1,
        ),
        "meteor": np.mean([meteor_score([r.split()], h.split()) for r, h in zip(refs, hyps, strict=True)]),
        "rouge1": peer_rouge["rouge-1"]["f"],
        "rouge2": peer_rouge["rouge-2"]["f"],
        "rougeL": peer_rouge["rouge-l"]["f"],
    }
    assert metrics == pytest.approx(expected, rel=1e-12)
    assert results["profile"] == "peer" and "by_question_type" not in results


def test_empty_predictions_are_scored_wrong_and_counted(
    peer_run: tuple[dict[str, Any], list[dict[str, Any]]], report_items: list[dict[str, Any]]
) -> None:
    results, samples = peer_run
    assert results["n_items"] == len(samples) == 40  # nothing dropped
    assert results["counts"]["empty_predictions"] == 4
    assert results["counts"]["rouge_refused"] == 5  # the four empty ones and "..."
    for sample in samples:
        if sample["empty"]:
            assert set(sample["scores"].values()) == {0.0}
    # an empty answer counts as 0 in the mean: ROUGE-1 is the accepted pairs' sum over all 40 items
    accepted = [i for i in report_items if i["prediction"] not in ("", "...")]
    peer = Rouge().get_scores(
        [i["prediction"] for i in accepted], [i["reference"] for i in accepted], avg=True
    )
    assert results["metrics"]["rouge1"]["value"] == pytest.approx(peer["rouge-1"]["f"] * len(accepted) / 40)
    bleu = results["metrics"]["bleu4"]
    assert bleu["n"] == 40 and bleu["ci"][0] <= bleu["value"] <= bleu["ci"][1]


def test_samples_carry_ids_texts_and_every_score(
    peer_run: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, samples = peer_run
    sample = samples[3]
    assert sample["conversation_id"] == "pulse/3" and sample["turn"] == 1 and sample["ecg_mode"] == "real"
    assert set(sample["scores"]) == {"acc", "meteor", "rouge1", "rouge2", "rougeL"}
    assert len(sample["bleu4_stats"]) == 10


def test_ecgbench_profile_scores_ecgqa_per_question_type(qa_run: Any) -> None:
    results, _, items = qa_run
    by_type = results["by_question_type"]
    assert set(by_type) == {"single-verify", "comparison_irrelevant-query"}
    verify = by_type["single-verify"]["metrics"]
    # verify predictions cycle: right, "Right, I think.", the other answer, no option, empty -> 2 of 5 right
    assert verify["qa_acc"]["value"] == pytest.approx(12 / 30)
    assert verify["acc"]["value"] == pytest.approx(6 / 30)  # exact match only takes the bare answers
    query = by_type["comparison_irrelevant-query"]["metrics"]
    said = [(set(item["reference"].split(", ")), set(item["labels_said"])) for item in items[30:]]
    expected_f1 = [2 * len(ref & got) / (len(ref) + len(got)) for ref, got in said]
    assert query["qa_f1"]["value"] == pytest.approx(np.mean(expected_f1))
    assert query["qa_acc"]["value"] == pytest.approx(np.mean([ref == got for ref, got in said]))
    assert query["qa_acc"]["value"] >= 15 / 30  # at least the exact and the reordered ones
    assert results["counts"]["reference_outside_options"] == 0
    assert results["counts"]["unparsable"] == 6 and results["counts"]["empty_predictions"] == 6
    assert results["counts"]["closed_questions"] == 60
    for metrics in (verify, query):
        assert 0.0 <= metrics["macro_f1"]["value"] <= 1.0 and metrics["macro_f1"]["ci"] is not None
    assert "auroc" not in query  # no option scores there
    assert "macro_f1" not in results["metrics"]  # label metrics only within one question type


def test_auroc_from_option_scores(qa_run: Any) -> None:
    results, samples, items = qa_run
    verify = [(s, i) for s, i in zip(samples, items, strict=True) if s["question_type"] == "single-verify"]
    per_label = []
    for label in ("no", "not sure", "yes"):
        truth = np.array([s["qa"]["reference"] == [label] for s, _ in verify])
        if truth.any() and not truth.all():
            per_label.append(roc_auc_score(truth, [i["option_scores"][label] for _, i in verify]))
    auroc = results["by_question_type"]["single-verify"]["metrics"]["auroc"]
    assert auroc["value"] == pytest.approx(np.mean(per_label))


def test_bad_items_are_one_line_errors(report_items: list[dict[str, Any]]) -> None:
    good = report_items[:2]
    with pytest.raises(UserError, match=r"mix ECG modes \(real, zeros\)"):
        evaluate_items([good[0], {**good[1], "ecg_mode": "zeros"}], **FAST)
    with pytest.raises(UserError, match="turn 1 appears twice"):
        evaluate_items([good[0], good[0]], **FAST)
    with pytest.raises(UserError, match="prediction item 2: 'reference' must be a string"):
        evaluate_items([good[0], {k: v for k, v in good[1].items() if k != "reference"}], **FAST)
    with pytest.raises(UserError, match="unknown ecg_mode 'blank'"):
        evaluate_items([{**good[0], "ecg_mode": "blank"}], **FAST)
    with pytest.raises(UserError, match="unknown evaluation profile 'lm-eval'"):
        evaluate_items(good, "lm-eval", **FAST)
    with pytest.raises(UserError, match="no prediction items"):
        evaluate_items([], **FAST)
    null_prediction = evaluate_items([{**good[0], "prediction": None}], "peer", **FAST)[0]
    assert null_prediction["counts"]["empty_predictions"] == 1
    modes = split_by_ecg_mode([good[0], {**good[1], "ecg_mode": "zeros"}])
    assert list(modes) == ["real", "zeros"]


def test_stand_in_similarity_is_never_reported_as_bertscore(
    report_items: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # no roberta-large anywhere
    results, samples = evaluate_items(report_items[:6], "peer", bertscore="auto", resamples=50)
    assert {"minilm_precision", "minilm_recall", "minilm_f1"} <= results["metrics"].keys()
    assert not any(name.startswith("bertscore") for name in results["metrics"])
    assert results["bertscore"]["metric"] == "minilm" and "not comparable" in results["bertscore"]["note"]
    assert any("roberta-large" in note for note in results["notes"])
    assert samples[0]["scores"]["minilm_f1"] == 0.0  # item 0 is an empty prediction
    with pytest.raises(UserError, match="roberta-large"):
        evaluate_items(report_items[:2], "peer", bertscore="bertscore")


def test_compare_same_run_finds_no_difference(peer_run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    _, samples = peer_run
    comparison = compare_samples(samples, list(reversed(samples)), names=("x", "y"), resamples=100)
    assert comparison["n_items"] == 40
    for entry in comparison["metrics"].values():
        assert entry["difference"] == 0.0 and entry["p_value"] == 1.0 and entry["p_holm"] == 1.0
    assert comparison["metrics"]["acc"]["test"] == "mcnemar-exact"
    assert comparison["metrics"]["bleu4"]["test"] == "paired-bootstrap"


def test_compare_known_difference(report_items: list[dict[str, Any]]) -> None:
    better = [{**item, "prediction": item["reference"]} for item in report_items]  # every answer right
    _, samples_a = evaluate_items(better, "peer", **FAST)
    _, samples_b = evaluate_items(report_items, "peer", **FAST)
    comparison = compare_samples(samples_a, samples_b, resamples=200)
    acc = comparison["metrics"]["acc"]
    wrong_b = sum(1 for s in samples_b if s["scores"]["acc"] == 0.0)
    assert acc["difference"] == pytest.approx(wrong_b / 40)
    assert (acc["only_a_correct"], acc["only_b_correct"]) == (wrong_b, 0)
    assert acc["p_value"] == pytest.approx(2 * 0.5**wrong_b)  # exact: all discordant pairs one way
    assert (
        comparison["metrics"]["bleu4"]["difference"] > 0 and comparison["metrics"]["bleu4"]["p_value"] < 0.05
    )
    p_values = {name: entry["p_value"] for name, entry in comparison["metrics"].items()}
    assert all(entry["p_holm"] >= p_values[name] for name, entry in comparison["metrics"].items())


def test_compare_refuses_different_items(peer_run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    _, samples = peer_run
    with pytest.raises(UserError, match="evaluated on different items: 1 only in a, 0 only in b"):
        compare_samples(samples, samples[1:])
    with pytest.raises(UserError, match="a has conversation 'pulse/0' turn 1 twice"):
        compare_samples([*samples, samples[0]], samples)
    changed = [dict(s) for s in samples]
    changed[4]["reference"] = "Sinus bradycardia."
    with pytest.raises(UserError, match="different references for conversation 'pulse/4'"):
        compare_samples(samples, changed)


def test_ecg_reliance(report_items: list[dict[str, Any]], ecgqa_questions: list[dict[str, Any]]) -> None:
    items = _qa_items(ecgqa_questions)
    # the same model without the ECG: a fixed answer for every question
    blind = [{**item, "prediction": "yes", "ecg_mode": "zeros"} for item in items]
    _, real = evaluate_items(items, "ecgbench", **FAST)
    _, zeros = evaluate_items(blind, "ecgbench", **FAST)
    table = ecg_reliance({"real": real, "zeros": zeros}, resamples=100)
    assert table["reference_mode"] == "real" and table["modes"] == ["zeros"] and table["n_items"] == 60
    qa_acc = table["metrics"]["qa_acc"]
    blind_acc = np.mean([s["scores"]["qa_acc"] for s in zeros if s["scores"]["qa_acc"] is not None])
    assert qa_acc["real"] == pytest.approx(
        12 / 30 * 0.5 + np.mean([s["scores"]["qa_acc"] for s in real[30:]]) * 0.5
    )
    entry = qa_acc["modes"]["zeros"]
    assert entry["value"] == pytest.approx(blind_acc)
    assert entry["difference"] == pytest.approx(qa_acc["real"] - blind_acc)
    assert entry["test"].startswith("mcnemar") and "p_holm" in entry
    assert "macro_f1/single-verify" in table["metrics"]
    with pytest.raises(UserError, match="generated with ECG mode real"):
        ecg_reliance({"real": real, "noise": real})
    with pytest.raises(UserError, match="needs the samples with the 'real' ECG"):
        ecg_reliance({"zeros": zeros})


def test_results_files_round_trip(
    peer_run: tuple[dict[str, Any], list[dict[str, Any]]], tmp_path: Path
) -> None:
    results, samples = peer_run
    results_path, samples_path = write_evaluation(tmp_path / "eval", results, samples)
    assert read_results(results_path) == results
    assert read_samples(samples_path) == samples
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["results.json", "samples.jsonl"]
    assert "NaN" not in results_path.read_text()
    (tmp_path / "bad.jsonl").write_text('{"conversation_id": "x"}\nnot json\n')
    with pytest.raises(CorruptFileError, match=r"bad\.jsonl:2: not valid JSON"):
        read_predictions(tmp_path / "bad.jsonl")
    with pytest.raises(CorruptFileError, match="not an ecgbench evaluation sample"):
        read_samples(write_jsonl(tmp_path / "s.jsonl", [{}]))


def test_predictions_file_feeds_evaluate(report_items: list[dict[str, Any]], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "predictions.jsonl", report_items[:5])
    results, samples = evaluate_items(read_predictions(path), "peer", **FAST)
    assert [s["conversation_id"] for s in samples] == [f"pulse/{i}" for i in range(5)]
    assert json.loads(json.dumps(results)) == results


def test_summarize_results_over_runs(peer_run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    results, _ = peer_run
    runs = []
    for value in (0.5, 0.6, 0.7):
        run = json.loads(json.dumps(results))
        run["metrics"]["acc"]["value"] = value
        runs.append(run)
    summary = summarize_results(runs)
    assert summary["runs"] == 3 and summary["metrics"]["acc"]["mean"] == pytest.approx(0.6)
    assert summary["metrics"]["acc"]["std"] == pytest.approx(0.1)
    with pytest.raises(UserError, match="different profiles"):
        summarize_results([runs[0], {**runs[1], "profile": "ecgbench"}])

"""Score prediction items under a named profile; results and per-item samples in the style of
lm-evaluation-harness; paired comparisons of two runs and the ECG-reliance table.

A prediction item is what ``infer generate`` writes for each answered turn (one JSON object per line)::

    {"conversation_id": str, "turn": int, "source": str, "question_type": str | null,
     "answer_options": [str], "reference": str, "prediction": str | null,
     "ecg_mode": "real" | "zeros" | "noise" | "shuffled" | "none",
     "option_scores": {option: float}}          # optional: a score per option, for AUROC

Profiles (recorded in every results file):

- ``peer``: ECG-Bench's published settings, for comparable numbers. BLEU-4 = nltk ``corpus_bleu`` on
  whitespace tokens, uniform weights, ``SmoothingFunction().method1``; METEOR = mean nltk ``meteor_score``
  on whitespace tokens; ROUGE-1/2/L = mean F of the ``rouge`` package; BERTScore = bert-score, roberta-large
  layer 17, no idf, no rescaling; ACC = exact match after strip. Unlike the peer, empty predictions are
  scored (as wrong), not dropped.
- ``ecgbench`` (default): the same, plus normalised accuracy, SQuAD token F1, ECG-QA aware scores (``qa_*``)
  and, per question type, macro F1 and (where ``option_scores`` exist) macro AUROC.

Every metric gets a bootstrap interval over items (BLEU and macro F1 resampled as corpora). Nothing is
dropped: empty predictions, unparsable answers and pairs the ROUGE package refuses are scored 0 and counted.

results.json: ``format``, ``version``, ``profile``, ``ecg_mode``, ``n_items``, ``metrics`` ({name: {value,
ci, stderr, n}}; n = items the metric applies to), ``by_question_type`` (ecgbench: {type: {n, metrics}}),
``counts`` (items, empty_predictions, rouge_refused, by_source, by_question_type; ecgbench also
closed_questions, unparsable = non-empty answers naming no option, reference_outside_options),
``bertscore`` (model, layers, hash, or None), ``notes``, ``settings``, ``versions``. samples.jsonl: one
record per item with its ids, texts, ``scores`` ({metric: value or None where it does not apply}),
``bleu4_stats`` and, for closed questions, ``qa`` (reference and predicted labels, parsed) -- everything
``compare_samples`` and ``ecg_reliance`` need, so two runs are compared from their samples alone.
"""

from __future__ import annotations

import json
import math
import platform
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.files import atomic_write, read_json_document
from ecgbench.infer import stats
from ecgbench.infer.metrics import bleu, classification, ecgqa, text
from ecgbench.infer.metrics.bertscore import SimilarityModel, resolve_similarity_model, similarity_scores
from ecgbench.infer.metrics.meteor import meteor
from ecgbench.infer.metrics.rouge import rouge

PROFILES = ("ecgbench", "peer")
ECG_MODES = ("real", "zeros", "noise", "shuffled", "none")
RESULTS_FORMAT = "ecgbench-eval-results"
RESULTS_VERSION = 1
RESULTS_FILE, SAMPLES_FILE = "results.json", "samples.jsonl"
NO_QUESTION_TYPE = "(none)"  # the by_question_type key of items without one

# Metric names, in the order reports list them. Binary metrics (per-item 0/1) are compared with McNemar.
PEER_METRICS = ("acc", "bleu4", "meteor", "rouge1", "rouge2", "rougeL")
ECGBENCH_METRICS = ("acc_norm", "token_f1", "qa_acc", "qa_precision", "qa_recall", "qa_f1")
SIMILARITY_METRICS = tuple(
    f"{key}_{part}" for key in ("bertscore", "minilm") for part in ("precision", "recall", "f1")
)
GROUP_METRICS = ("macro_f1", "auroc")  # per question type, over label-style answers
BINARY_METRICS = frozenset({"acc", "acc_norm", "qa_acc"})
METRIC_ORDER = (*PEER_METRICS, *SIMILARITY_METRICS, *ECGBENCH_METRICS, *GROUP_METRICS)

PEER_SETTINGS = {
    "acc": "exact match after stripping outer whitespace",
    "bleu4": "nltk corpus_bleu, whitespace tokens, uniform weights (0.25 x 4), SmoothingFunction().method1",
    "meteor": "mean of nltk meteor_score([reference.split()], prediction.split()), WordNet 3.0",
    "rouge": "mean F of rouge 1.0.1 Rouge().get_scores(prediction, reference); a refused pair scores 0",
}
ECGBENCH_SETTINGS = {
    "acc_norm": "exact match after case folding, punctuation to spaces, whitespace collapsed",
    "token_f1": "SQuAD v1.1 token F1 (lower case, punctuation and articles removed)",
    "qa": "options found as whole words; verify: first one; choose, query: set equality; query: set P/R/F1",
}


# ----------------------------------------------------------------------------------------------------------
# Prediction items


def _item_error(index: int, problem: str) -> UserError:
    return UserError(f"prediction item {index + 1}: {problem}")


def validate_items(items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The items with their fields checked and defaults filled (a null prediction becomes ""); a UserError
    naming the item for a missing or mistyped field, a repeated (conversation_id, turn), or mixed ECG
    modes."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise _item_error(index, "not a JSON object")
        for field, kind in (("conversation_id", str), ("reference", str), ("ecg_mode", str)):
            if not isinstance(item.get(field), kind):
                raise _item_error(index, f"{field!r} must be a string")
        turn = item.get("turn")
        if type(turn) is not int:
            raise _item_error(index, "'turn' must be an integer")
        prediction = item.get("prediction", "")
        if prediction is not None and not isinstance(prediction, str):
            raise _item_error(index, "'prediction' must be a string or null")
        if item["ecg_mode"] not in ECG_MODES:
            raise _item_error(
                index, f"unknown ecg_mode {item['ecg_mode']!r} (allowed: {', '.join(ECG_MODES)})"
            )
        question_type = item.get("question_type")
        if question_type is not None and not isinstance(question_type, str):
            raise _item_error(index, "'question_type' must be a string or null")
        options = item.get("answer_options") or []
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise _item_error(index, "'answer_options' must be a list of strings")
        option_scores = item.get("option_scores")
        if option_scores is not None and not (
            isinstance(option_scores, Mapping)
            and all(isinstance(k, str) and _is_number(v) for k, v in option_scores.items())
        ):
            raise _item_error(index, "'option_scores' must map options to numbers")
        key = (item["conversation_id"], turn)
        if key in seen:
            raise _item_error(index, f"conversation {key[0]!r} turn {turn} appears twice")
        seen.add(key)
        clean = dict(item)
        clean.update(
            prediction=prediction or "",
            source=str(item.get("source") or ""),
            question_type=question_type,
            answer_options=list(options),
        )
        out.append(clean)
    modes = sorted({item["ecg_mode"] for item in out})
    if len(modes) > 1:
        raise UserError(
            f"the predictions mix ECG modes ({', '.join(modes)}): evaluate each mode on its own "
            "(split_by_ecg_mode) and compare them with ecg_reliance"
        )
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def split_by_ecg_mode(items: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Items grouped by their ``ecg_mode``, in first-seen order."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        groups.setdefault(str(item.get("ecg_mode")), []).append(item)
    return groups


def _key(sample: Mapping[str, Any]) -> tuple[str, int]:
    return sample["conversation_id"], sample["turn"]


# ----------------------------------------------------------------------------------------------------------
# Per-item scoring


def _score_item(item: Mapping[str, Any], profile: str) -> dict[str, Any]:
    reference, prediction = item["reference"], item["prediction"]
    scores: dict[str, float | None] = {"acc": text.exact_match(reference, prediction)}
    scores["meteor"] = meteor(reference, prediction)
    rouge_scores = rouge(reference, prediction)
    scores.update(rouge1=rouge_scores.rouge1, rouge2=rouge_scores.rouge2, rougeL=rouge_scores.rougeL)
    sample: dict[str, Any] = {
        key: item[key]
        for key in ("conversation_id", "turn", "source", "question_type", "ecg_mode", "answer_options")
    }
    sample.update(reference=reference, prediction=prediction, empty=text.is_empty(prediction))
    if "option_scores" in item and item["option_scores"] is not None:
        sample["option_scores"] = dict(item["option_scores"])
    sample["rouge_scored"] = rouge_scores.scored
    if profile == "ecgbench":
        scores["acc_norm"] = text.normalized_match(reference, prediction)
        scores["token_f1"] = text.token_f1(reference, prediction)
        scores.update(qa_acc=None, qa_precision=None, qa_recall=None, qa_f1=None)  # free text: no QA score
        kind = ecgqa.question_kind(item["question_type"])
        if kind is not None:
            qa = ecgqa.score_closed(kind, reference, prediction, item["answer_options"])
            scores.update(qa_acc=qa.correct, qa_precision=qa.precision, qa_recall=qa.recall, qa_f1=qa.f1)
            sample["qa"] = {
                "kind": qa.kind,
                "reference": qa.reference,
                "predicted": qa.predicted,
                "parsed": qa.parsed,
                "reference_outside_options": qa.reference_outside_options,
            }
    sample["scores"] = scores
    sample["bleu4_stats"] = [int(x) for x in bleu.bleu_stats(reference, prediction)]
    return sample


def _score_items(
    items: Sequence[Mapping[str, Any]],
    profile: str = "ecgbench",
    *,
    similarity: SimilarityModel | None = None,
    device: str | None = None,
    show_progress: bool = False,
) -> list[dict[str, Any]]:
    """Per-item samples of validated items: ids, reference, prediction and every per-item score."""
    samples: list[dict[str, Any]] = []
    with _progress(show_progress, "scoring", len(items)) as advance:
        for item in items:
            samples.append(_score_item(item, profile))
            advance()
    if similarity is not None:
        triples = similarity_scores(
            similarity, [s["reference"] for s in samples], [s["prediction"] for s in samples], device=device
        )
        for sample, (precision, recall, f1) in zip(samples, triples, strict=True):
            sample["scores"].update(
                {
                    f"{similarity.key}_precision": float(precision),
                    f"{similarity.key}_recall": float(recall),
                    f"{similarity.key}_f1": float(f1),
                }
            )
    return samples


@contextmanager
def _progress(show: bool, description: str, total: int) -> Iterator[Callable[[], None]]:
    """A rich progress bar when asked for; yields a function that advances it by one."""
    if not show:
        yield lambda: None
        return
    from ecgbench.console import progress

    with progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise UserError(f"unknown evaluation profile {profile!r} (allowed: {', '.join(PROFILES)})")


# ----------------------------------------------------------------------------------------------------------
# Metrics as weighted statistics of samples


def _label_groups(samples: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, sample in enumerate(samples):
        if "qa" in sample:
            groups.setdefault(sample["question_type"], []).append(i)
    return groups


def group_statistics(samples: Sequence[Mapping[str, Any]]) -> dict[str, stats.WeightedStatistic]:
    """Macro F1 and, where every item has ``option_scores``, macro AUROC of one question type's samples."""
    seen: dict[str, None] = {}  # every label of the question type, in first-seen order
    for sample in samples:
        known = ecgqa.vocabulary(sample["qa"]["kind"], sample["answer_options"])
        seen.update(dict.fromkeys([*known, *sample["qa"]["reference"], *sample["qa"]["predicted"]]))
    labels = list(seen)
    y_true = classification.indicator([s["qa"]["reference"] for s in samples], labels)
    y_pred = classification.indicator([s["qa"]["predicted"] for s in samples], labels)
    out: dict[str, stats.WeightedStatistic] = {
        "macro_f1": stats.totals_statistic(
            classification.f1_stats(y_true, y_pred), classification.macro_f1_from_totals
        )
    }
    if all("option_scores" in s for s in samples):
        scores = np.full(y_true.shape, np.nan)
        column = {label: j for j, label in enumerate(labels)}
        for i, sample in enumerate(samples):
            for option, value in sample["option_scores"].items():
                j = column.get(text.normalize_answer(option))
                if j is not None:
                    scores[i, j] = value
        out["auroc"] = lambda w: classification.macro_auroc(y_true, scores, w)
    return out


def sample_statistics(samples: Sequence[Mapping[str, Any]]) -> dict[str, stats.WeightedStatistic]:
    """Every metric the samples carry, as a weighted statistic over them, in report order."""
    present = {name for s in samples for name, value in s["scores"].items() if value is not None}
    out: dict[str, stats.WeightedStatistic] = {}
    for name in METRIC_ORDER:
        if name == "bleu4" and samples:
            out[name] = stats.totals_statistic(
                np.array([s["bleu4_stats"] for s in samples], dtype=np.float64), bleu.bleu_from_totals
            )
        elif name in present:
            values = [s["scores"].get(name) for s in samples]
            out[name] = stats.mean_statistic(
                np.array([np.nan if v is None else v for v in values], dtype=float)
            )
    return out


def _applicable(samples: Sequence[Mapping[str, Any]], name: str) -> int:
    if name in ("bleu4", *GROUP_METRICS):
        return len(samples)
    return sum(1 for s in samples if s["scores"].get(name) is not None)


def metric_table(
    samples: Sequence[Mapping[str, Any]],
    *,
    groups: bool,
    resamples: int = stats.RESAMPLES,
    confidence: float = stats.CONFIDENCE,
    seed: int = stats.SEED,
) -> dict[str, dict[str, Any]]:
    """{metric: {value, ci, stderr, n}} of the samples; with ``groups``, the label metrics too (the samples
    being one question type's)."""
    statistics = sample_statistics(samples)
    if groups and samples and all("qa" in s for s in samples):
        statistics.update(group_statistics(samples))
    table = stats.bootstrap(statistics, len(samples), resamples=resamples, confidence=confidence, seed=seed)
    return {name: {**entry, "n": _applicable(samples, name)} for name, entry in table.items()}


# ----------------------------------------------------------------------------------------------------------
# Evaluation


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("ecgbench-elm", "numpy", "scipy", "nltk", "rouge", "bert-score", "torch", "transformers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def _counts(samples: Sequence[Mapping[str, Any]], profile: str) -> dict[str, Any]:
    counts: dict[str, Any] = {
        "items": len(samples),
        "empty_predictions": sum(1 for s in samples if s["empty"]),
        "rouge_refused": sum(1 for s in samples if not s["rouge_scored"]),
        "by_source": dict(Counter(s["source"] for s in samples)),
        "by_question_type": dict(Counter(s["question_type"] or NO_QUESTION_TYPE for s in samples)),
    }
    if profile == "ecgbench":
        closed = [s for s in samples if "qa" in s]
        counts["closed_questions"] = len(closed)
        counts["unparsable"] = sum(1 for s in closed if not s["qa"]["parsed"] and not s["empty"])
        counts["reference_outside_options"] = sum(1 for s in closed if s["qa"]["reference_outside_options"])
    return counts


def evaluate_items(
    items: Sequence[Mapping[str, Any]],
    profile: str = "ecgbench",
    *,
    bertscore: str = "auto",
    bertscore_model: str | Path | None = None,
    device: str | None = None,
    resamples: int = stats.RESAMPLES,
    confidence: float = stats.CONFIDENCE,
    seed: int = stats.SEED,
    show_progress: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score prediction items of one run (one ECG mode) under ``profile``.

    ``bertscore``: ``auto`` (roberta-large where present, else the MiniLM stand-in under ``minilm_*``),
    ``bertscore`` (roberta-large or a UserError naming it), ``minilm``, ``off``; ``bertscore_model`` is a
    local roberta-large directory. Returns (results, samples): results hold the profile, counts, every
    metric with its bootstrap interval (per question type too under ``ecgbench``), settings and library
    versions; samples hold one record per item with every per-item score.
    """
    _check_profile(profile)
    items = validate_items(items)
    if not items:
        raise UserError("no prediction items to evaluate")
    similarity, note = resolve_similarity_model(bertscore, bertscore_model)
    samples = _score_items(items, profile, similarity=similarity, device=device, show_progress=show_progress)
    boot = {"resamples": resamples, "confidence": confidence, "seed": seed}
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "profile": profile,
        "ecg_mode": items[0]["ecg_mode"],
        "n_items": len(samples),
        "metrics": metric_table(samples, groups=False, **boot),
    }
    if profile == "ecgbench":
        by_type: dict[str, list[dict[str, Any]]] = {}
        for sample in samples:
            by_type.setdefault(sample["question_type"] or NO_QUESTION_TYPE, []).append(sample)
        results["by_question_type"] = {
            question_type: {"n": len(group), "metrics": metric_table(group, groups=True, **boot)}
            for question_type, group in sorted(by_type.items())
        }
    results["counts"] = _counts(samples, profile)
    results["bertscore"] = similarity.describe() if similarity else None
    results["notes"] = [note] if note else []
    results["settings"] = {
        "bootstrap": boot,
        **PEER_SETTINGS,
        **(ECGBENCH_SETTINGS if profile == "ecgbench" else {}),
    }
    results["versions"] = _versions()
    return results, samples


# ----------------------------------------------------------------------------------------------------------
# Paired comparison and ECG reliance


def _by_key(samples: Sequence[Mapping[str, Any]], name: str) -> dict[tuple[str, int], Mapping[str, Any]]:
    out: dict[tuple[str, int], Mapping[str, Any]] = {}
    for sample in samples:
        key = _key(sample)
        if key in out:
            raise UserError(f"{name} has conversation {key[0]!r} turn {key[1]} twice")
        out[key] = sample
    return out


def _aligned(
    samples_a: Sequence[Mapping[str, Any]], samples_b: Sequence[Mapping[str, Any]], names: tuple[str, str]
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """The two runs' samples in one item order; a UserError when they were not evaluated on the same items."""
    by_key_a, by_key_b = _by_key(samples_a, names[0]), _by_key(samples_b, names[1])
    only_a, only_b = by_key_a.keys() - by_key_b.keys(), by_key_b.keys() - by_key_a.keys()
    if only_a or only_b:
        example = sorted(only_a or only_b)[:1]
        raise UserError(
            f"{names[0]} and {names[1]} were evaluated on different items: {len(only_a)} only in {names[0]}, "
            f"{len(only_b)} only in {names[1]}"
            + (f" (e.g. conversation {example[0][0]!r} turn {example[0][1]})" if example else "")
        )
    keys = sorted(by_key_a)
    for key in keys:
        if by_key_a[key]["reference"] != by_key_b[key]["reference"]:
            raise UserError(
                f"{names[0]} and {names[1]} have different references for conversation {key[0]!r} "
                f"turn {key[1]}: they were not evaluated on the same items"
            )
    return [by_key_a[k] for k in keys], [by_key_b[k] for k in keys]


def _with_groups(samples: Sequence[Mapping[str, Any]]) -> dict[str, stats.WeightedStatistic]:
    """Overall metrics, and the label metrics of each question type as ``<metric>/<question type>`` (a
    statistic of the whole aligned run whose weights outside the type are ignored)."""
    out = sample_statistics(samples)
    for question_type, indices in sorted(_label_groups(samples).items()):
        members = np.array(indices)
        for name, statistic in group_statistics([samples[i] for i in indices]).items():
            out[f"{name}/{question_type}"] = lambda w, s=statistic, m=members: s(np.atleast_2d(w)[:, m])
    return out


def compare_samples(
    samples_a: Sequence[Mapping[str, Any]],
    samples_b: Sequence[Mapping[str, Any]],
    *,
    names: tuple[str, str] = ("a", "b"),
    resamples: int = stats.RESAMPLES,
    confidence: float = stats.CONFIDENCE,
    seed: int = stats.SEED,
) -> dict[str, Any]:
    """Paired comparison of two runs (``names``: how to call them in messages) on the same items.

    For every metric both carry: {a, b, difference (a - b), ci (paired bootstrap), test, p_value, p_holm};
    p-values from McNemar for binary metrics (with only_a_correct, only_b_correct), the paired bootstrap
    otherwise, Holm-corrected over the metrics. Label metrics of each question type are ``<metric>/<type>``.
    """
    a, b = _aligned(samples_a, samples_b, names)
    stats_a, stats_b = _with_groups(a), _with_groups(b)
    shared = [name for name in stats_a if name in stats_b]
    n = len(a)
    paired = stats.paired_bootstrap(
        {name: (stats_a[name], stats_b[name]) for name in shared},
        n,
        resamples=resamples,
        confidence=confidence,
        seed=seed,
    )
    full = np.ones((1, n))
    metrics: dict[str, dict[str, Any]] = {}
    for name in shared:
        entry = {
            "a": stats.finite_or_none(float(stats_a[name](full)[0])),
            "b": stats.finite_or_none(float(stats_b[name](full)[0])),
            **paired[name],
        }
        if name in BINARY_METRICS:
            both = [(x["scores"][name], y["scores"][name]) for x, y in zip(a, b, strict=True)]
            both = [(x, y) for x, y in both if x is not None and y is not None]
            entry.update(stats.mcnemar([x == 1 for x, _ in both], [y == 1 for _, y in both]))
        metrics[name] = entry
    for name, adjusted in zip(shared, stats.holm([metrics[m]["p_value"] for m in shared]), strict=True):
        metrics[name]["p_holm"] = adjusted
    only = sorted(set(stats_a) ^ set(stats_b))
    return {
        "names": list(names),
        "n_items": n,
        "metrics": metrics,
        "not_compared": {name: f"only in {names[0] if name in stats_a else names[1]}" for name in only},
        "settings": {"resamples": resamples, "confidence": confidence, "seed": seed, "correction": "holm"},
    }


def ecg_reliance(
    samples_by_mode: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    reference_mode: str = "real",
    resamples: int = stats.RESAMPLES,
    confidence: float = stats.CONFIDENCE,
    seed: int = stats.SEED,
) -> dict[str, Any]:
    """How much a model relies on the ECG, from its samples under several ECG modes ({mode: samples}).

    For every metric: its value with the real ECG and, per perturbed mode, {value, difference (real -
    perturbed), ci, test, p_value, p_holm} from ``compare_samples`` (Holm over the metrics of each mode).
    """
    if reference_mode not in samples_by_mode:
        raise UserError(f"ECG reliance needs the samples with the {reference_mode!r} ECG")
    for mode, samples in samples_by_mode.items():
        found = {s.get("ecg_mode") for s in samples}
        if found - {mode}:
            raise UserError(
                f"the samples given as {mode!r} were generated with ECG mode {', '.join(map(str, found))}"
            )
    others = [mode for mode in samples_by_mode if mode != reference_mode]
    if not others:
        raise UserError("ECG reliance needs samples of at least one perturbed ECG mode (zeros, noise, ...)")
    metrics: dict[str, dict[str, Any]] = {}
    n_items = 0
    for mode in others:
        comparison = compare_samples(
            samples_by_mode[reference_mode],
            samples_by_mode[mode],
            names=(reference_mode, mode),
            resamples=resamples,
            confidence=confidence,
            seed=seed,
        )
        n_items = comparison["n_items"]
        for name, entry in comparison["metrics"].items():
            row = metrics.setdefault(name, {reference_mode: entry["a"], "modes": {}})
            rest = {k: v for k, v in entry.items() if k not in ("a", "b")}
            row["modes"][mode] = {"value": entry["b"], **rest}
    return {"reference_mode": reference_mode, "modes": others, "n_items": n_items, "metrics": metrics}


def summarize_results(
    results: Sequence[Mapping[str, Any]], confidence: float = stats.CONFIDENCE
) -> dict[str, Any]:
    """Mean, standard deviation and t-interval of each overall metric over several runs (seeds or folds)."""
    if not results:
        raise UserError("no results to summarise")
    profiles = {r.get("profile") for r in results}
    if len(profiles) > 1:
        raise UserError(
            f"the results were evaluated under different profiles: {', '.join(map(str, profiles))}"
        )
    names = [name for name in METRIC_ORDER if all(name in r["metrics"] for r in results)]
    return {
        "profile": profiles.pop(),
        "runs": len(results),
        "metrics": {
            name: stats.summarize_runs([r["metrics"][name]["value"] for r in results], confidence)
            for name in names
        },
    }


# ----------------------------------------------------------------------------------------------------------
# Files


def write_evaluation(
    directory: Path, results: Mapping[str, Any], samples: Sequence[Mapping[str, Any]]
) -> tuple[Path, Path]:
    """``results.json`` and ``samples.jsonl`` in ``directory``, each written atomically."""
    directory = Path(directory)
    results_path, samples_path = directory / RESULTS_FILE, directory / SAMPLES_FILE
    body = json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    atomic_write(results_path, lambda tmp: tmp.write_text(body, encoding="utf-8"))

    def write_samples(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as handle:
            for sample in samples:
                handle.write(json.dumps(sample, ensure_ascii=False, allow_nan=False) + "\n")

    atomic_write(samples_path, write_samples)
    return results_path, samples_path


def read_results(path: Path) -> dict[str, Any]:
    """A results.json written by ``write_evaluation``."""
    return read_json_document(
        Path(path), fmt=RESULTS_FORMAT, what="an ecgbench results file", version=RESULTS_VERSION
    )


def read_jsonl(path: Path, what: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (blank lines skipped); one-line errors naming the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    out = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorruptFileError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(value, dict):
                raise CorruptFileError(f"{path}:{number}: expected a JSON object")
            out.append(value)
    return out


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """Prediction items from a JSON-lines file (checked by ``evaluate_items``)."""
    return read_jsonl(path, "predictions file")


def read_samples(path: Path) -> list[dict[str, Any]]:
    """Per-item samples from a samples.jsonl written by ``write_evaluation``."""
    samples = read_jsonl(path, "samples file")
    for number, sample in enumerate(samples, start=1):
        if not {"conversation_id", "turn", "reference", "scores", "bleu4_stats"} <= sample.keys():
            raise CorruptFileError(f"{path}: record {number} is not an ecgbench evaluation sample")
    return samples

"""The judges behind `judge compare | rank`: the interface, both answer orders, round-robin ranking, the
reference judge on real PULSE reports, the SmolLM2 judge (real offline weights) and a PairRM-style ranker
(a tiny random-init checkpoint in the real PairRM-hf layout)."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
from judge_helpers import tiny_pairrm
from safetensors import safe_open

from ecgbench.errors import CorruptFileError, UserError
from ecgbench.judge.judges import (
    JudgeItem,
    Verdict,
    judge_both_orders,
    load_judge,
    rank_candidates,
)
from ecgbench.judge.judges.llm import LLMJudge, parse_verdict
from ecgbench.judge.judges.reward import SOURCE_MAX_LENGTH, RewardJudge
from ecgbench.resources import SAMPLE_DIR

REPORTS = [
    c["conversation"][1]["value"]
    for c in json.loads((SAMPLE_DIR / "pulse_ecgbench" / "ptb_report_generation_test.json").read_text())
]
QUESTION = [{"role": "user", "content": "<ecg>\nPlease write a clinical report based on this ECG."}]


class FirstAnswerJudge:
    """A judge with pure position bias: whatever comes first wins (what small LLM judges do)."""

    id, version = "test:first", "1"

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return [Verdict("a", 1.0, 0.0) for _ in items]


class LongerAnswerJudge:
    """An order-independent judge: the longer answer wins; same length ties; '?' answers are unparsable."""

    id, version = "test:longer", "1"

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        out = []
        for item in items:
            a, b = len(item.answer_a), len(item.answer_b)
            if "?" in (item.answer_a + item.answer_b):
                out.append(Verdict(None, math.nan, math.nan))
            else:
                out.append(Verdict("a" if a > b else "b" if b > a else "tie", float(a), float(b)))
        return out


@pytest.mark.parametrize(
    ("reply", "winner"),
    [
        ("A", "a"), ("B", "b"), ("tie", "tie"), ("Tie.", "tie"), ("  B.", "b"), ("A: sinus rhythm", "a"),
        ("A\n\nA", "a"), ("Answer A", None), ("a", None), ("Both", None), ("Ambiguous", None), ("B2", None),
        ("", None), ("tied", None), ("AB", None),
    ],
)  # fmt: skip
def test_llm_verdicts_are_parsed_strictly(reply: str, winner: str | None) -> None:
    assert parse_verdict(reply).winner == winner


def test_both_orders_remove_position_bias() -> None:
    items = [JudgeItem(QUESTION, "Sinus rhythm.", "Sinus rhythm, normal ECG.")]
    counts: Counter[str] = Counter()
    assert judge_both_orders(FirstAnswerJudge(), items, on_disagreement="tie", counts=counts) == [
        Verdict("tie", 0.5, 0.5)
    ]
    assert judge_both_orders(FirstAnswerJudge(), items, on_disagreement="drop", counts=counts) == [None]
    assert counts == {"disagreements": 2}
    items += [JudgeItem(QUESTION, "Normal ECG.", "Sinus beat."), JudgeItem(QUESTION, "ok?", "Normal.")]
    verdicts = judge_both_orders(LongerAnswerJudge(), items, on_disagreement="drop", counts=counts)
    assert [v.winner if v else "dropped" for v in verdicts] == ["b", "tie", None]
    assert (verdicts[0].score_a, verdicts[0].score_b) == (13.0, 25.0)  # each answer's own score, both orders
    assert counts == {"disagreements": 2, "unparsable": 1}


def test_rank_candidates_round_robin() -> None:
    candidates = ["Sinus rhythm.", "Sinus rhythm, normal axis.", "ok", " Sinus rhythm. ", "ok?"]
    counts: Counter[str] = Counter()
    scores = rank_candidates(LongerAnswerJudge(), QUESTION, candidates, counts=counts)
    # unique texts: 13, 26, 2 characters (and "ok?", unparsable against everything): win rates
    assert scores[:4] == [0.5, 1.0, 0.0, 0.5] and math.isnan(scores[4])
    assert counts == {"unparsable": 3}
    assert rank_candidates(FirstAnswerJudge(), QUESTION, candidates[:3]) == [0.5, 0.5, 0.5]


def test_reference_judge_on_real_reports() -> None:
    reference, other = REPORTS[1], REPORTS[2]
    half = " ".join(reference.split()[: len(reference.split()) // 2])
    item = JudgeItem(QUESTION, other, half, reference)
    for spec in ("reference", "reference:rouge-l", "reference:bleu", "reference:token-f1"):
        judge = load_judge(spec)
        (verdict,) = judge.judge([item])
        assert verdict.winner == "b" and verdict.score_b > verdict.score_a, (spec, verdict)
    assert load_judge("reference").id == "reference:rouge-l"
    exact = load_judge("reference:exact-match")
    assert exact.judge(
        [JudgeItem(QUESTION, "yes", "no", "yes"), JudgeItem(QUESTION, "no", "No.", "yes")]
    ) == [
        Verdict("a", 1.0, 0.0),
        Verdict("tie", 0.0, 0.0),
    ]
    scores = rank_candidates(judge, QUESTION, [other, reference, half], reference)  # token-f1
    assert scores == [0.0, 1.0, 0.5]
    with pytest.raises(UserError, match="needs a gold answer, and 1 of 2 items have none"):
        judge.judge([item, JudgeItem(QUESTION, "a", "b")])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpt4", "unknown judge 'gpt4'"),
        ("reference:cider", "unknown reference metric 'cider'"),
        ("llm:", "names no model"),
        ("reward:  ", "names no model"),
        ("reward:/no/such/pairrm", "reward model not found"),
    ],
)
def test_bad_judge_specs(spec: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_judge(spec)


@pytest.fixture(scope="module")
def pairrm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    words = " ".join(REPORTS[:20]).lower().replace(",", " ").replace(".", " ").split()
    return tiny_pairrm(tmp_path_factory.mktemp("pairrm") / "pairrm", words)


def test_pairrm_checkpoint_layout_loads(pairrm_dir: Path) -> None:
    with safe_open(str(pairrm_dir / "model.safetensors"), "pt") as weights:
        names = set(weights.keys())
    # the parameter names of llm-blender/PairRM-hf (a checkpoint in its layout loads into this class)
    assert {"head_layer.1.weight", "head_layer.1.bias", "head_layer.4.weight", "head_layer.4.bias"} <= names
    assert "pretrained_model.embeddings.word_embeddings.weight" in names
    assert all(n.startswith(("pretrained_model.", "head_layer.")) for n in names)
    judge = load_judge(f"reward:{pairrm_dir}")
    assert isinstance(judge, RewardJudge) and judge.id == f"reward:{pairrm_dir}"
    tokenizer = judge.tokenizer
    ids = judge.encode("Describe this ECG.", "Sinus rhythm.", "Normal ECG.")
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    source, first, second = (judge.prefix_ids[t] for t in ("<|source|>", "<|candidate1|>", "<|candidate2|>"))
    # [CLS] <|source|> ... [SEP] [CLS] <|candidate1|> ... [SEP] [CLS] <|candidate2|> ... [SEP]
    starts = [i for i, t in enumerate(ids) if t == cls]
    assert len(starts) == 3 and [ids[i + 1] for i in starts] == [source, first, second]
    assert [ids[i - 1] for i in starts[1:]] == [sep, sep] and ids[-1] == sep
    long = judge.encode(" ".join(REPORTS) * 3, " ".join(REPORTS), " ".join(REPORTS))
    assert long.index(first) == SOURCE_MAX_LENGTH + 1 and len(long) <= 2048 and second in long  # cut at 1224


def test_pairrm_preference_is_antisymmetric_and_batched(pairrm_dir: Path) -> None:
    items = [JudgeItem(QUESTION, REPORTS[i], REPORTS[i + 1]) for i in range(3)]
    items.append(JudgeItem([*QUESTION, {"role": "assistant", "content": "x"}], REPORTS[0], REPORTS[9]))
    judge = load_judge(f"reward:{pairrm_dir}", batch_size=3)
    logits = judge.preference_logits(items)
    assert judge.preference_logits(items) == logits  # deterministic
    flipped = judge.preference_logits([JudgeItem(i.prompt, i.answer_b, i.answer_a) for i in items])
    assert flipped == pytest.approx([-x for x in logits], abs=1e-6)
    judge.batch_size = 1
    single = judge.preference_logits(items)
    judge.batch_size = 3
    assert single == pytest.approx(logits, abs=1e-5)  # padding in a batch changes nothing
    assert len({round(x, 4) for x in logits}) == len(items) and all(x != 0 for x in logits)
    verdicts = judge.judge(items)
    assert [v.winner for v in verdicts] == ["a" if x > 0 else "b" for x in logits]
    assert all(v.score_a + v.score_b == pytest.approx(1.0) for v in verdicts)
    both = judge_both_orders(judge, items, on_disagreement="drop")
    assert [v.winner for v in both if v] == [v.winner for v in verdicts]  # an antisymmetric judge agrees


def test_reward_checkpoints_that_are_not_pairrm(pairrm_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a model folder"):
        load_judge(f"reward:{tmp_path / 'empty'}")
    config = json.loads((pairrm_dir / "config.json").read_text())
    plain = tmp_path / "plain"  # a DeBERTa-v2 classifier config without PairRM's fields
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({k: v for k, v in config.items() if "prefix" not in k}))
    with pytest.raises(UserError, match=r"not a PairRM-style reward model.*without source_prefix_id"):
        load_judge(f"reward:{plain}")
    headless = tmp_path / "headless"  # the encoder alone: a random head would judge by chance
    RewardJudge(str(pairrm_dir)).model.pretrained_model.save_pretrained(headless)
    (headless / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (headless / name).write_bytes((pairrm_dir / name).read_bytes())
    with pytest.raises(CorruptFileError, match="lacks weights of the PairRM model: head_layer"):
        load_judge(f"reward:{headless}")


def test_smollm2_judge_greedy_batched_and_position_biased() -> None:
    """The real SmolLM2-135M-Instruct names the first answer whatever it says: both orders expose it (the
    pair is then a disagreement, see test_both_orders_remove_position_bias)."""
    question = [{"role": "user", "content": "<ecg>\nWhat is the rhythm?"}]
    items = [
        JudgeItem(question, "Sinus rhythm.", "Atrial fibrillation.", "sinus rhythm"),
        JudgeItem(question, "yes", "no"),
    ]
    smollm2_judge = load_judge("llm:smollm2", batch_size=4)
    assert isinstance(smollm2_judge, LLMJudge)
    assert smollm2_judge.id == "llm:smollm2-135m-offline" and smollm2_judge.version == "llm-pairwise-v1"
    swapped = [JudgeItem(i.prompt, i.answer_b, i.answer_a, i.reference) for i in items]
    replies = smollm2_judge.replies([*items, *swapped])  # one batch of 4, left-padded
    assert replies == ["A", "A", "A", "A"]
    assert smollm2_judge.replies(items[1:]) == replies[1:2]  # alone (no padding): the same greedy reply
    verdicts = [parse_verdict(r) for r in replies]  # what judge_both_orders then sees: a disagreement each
    assert [v.winner for v in verdicts] == ["a"] * 4

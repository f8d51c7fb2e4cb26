"""`ecgbench judge compare | rank`: predictions files of `infer generate` (written with its own
``prediction_row``) about the real conversations of the bundled sample (`data map labels`), judged by the
reference judge and a tiny PairRM-style ranker, written as preference sets in `judge export`'s schema."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from judge_helpers import CHECKPOINT_A, CHECKPOINT_B, prediction_lines, tiny_pairrm, write_jsonl
from typer.testing import CliRunner

from ecgbench.cli import app
from ecgbench.data.conversations import (
    Conversation,
    conversation_table,
    iter_conversations,
    read_conversation_set,
    write_conversation_set,
)
from ecgbench.judge.export import preference_schema
from ecgbench.judge.judges import UNPARSABLE, JudgeItem, Verdict

runner = CliRunner()
N = 10  # conversations used


@pytest.fixture(scope="module")
def conversations(labels_set: Path) -> list[Conversation]:
    rows = list(iter_conversations(read_conversation_set(labels_set)))
    # distinct gold answers, so that another conversation's answer is a wrong one
    seen: dict[str, Conversation] = {}
    for c in rows:
        seen.setdefault(c.turns[1]["content"], c)
    assert len(seen) > N
    return list(seen.values())[:N]


def gold(conversations: Sequence[Conversation]) -> list[str]:
    return [c.turns[1]["content"] for c in conversations]


def wrong(conversations: Sequence[Conversation]) -> list[str]:
    answers = gold(conversations)
    return answers[1:] + answers[:1]  # every conversation gets the next one's answer


def invoke(*args: Any) -> Any:
    return runner.invoke(app, ["judge", *map(str, args)])


def read_rows(path: Path) -> list[dict[str, Any]]:
    table = pq.read_table(path)
    schema = preference_schema()
    assert table.schema.names == schema.names and table.schema.metadata == schema.metadata
    assert table.cast(schema).schema.equals(schema, check_metadata=True)
    return table.to_pylist()


def test_compare_writes_pairs_the_reference_judge_prefers(
    conversations: list[Conversation], labels_set: Path, tmp_path: Path
) -> None:
    right, bad = gold(conversations), wrong(conversations)
    # A answers right on even conversations, B on odd ones; 8: the same answer; 9: both wrong, equally (a tie)
    a_answers = [right[i] if i % 2 == 0 else bad[i] for i in range(N)]
    b_answers = [bad[i] if i % 2 == 0 else right[i] for i in range(N)]
    a_answers[8] = b_answers[8] = "Sinus rhythm."
    a_answers[9], b_answers[9] = "zzz", "qqq"
    pred_a = write_jsonl(
        tmp_path / "a" / "predictions.jsonl", prediction_lines(conversations, a_answers, CHECKPOINT_A)
    )
    lines_b = prediction_lines(
        conversations, b_answers, CHECKPOINT_B, do_sample=True, temperature=0.7, seed=3
    )
    pred_b = write_jsonl(tmp_path / "b" / "predictions.jsonl", lines_b[1:])  # B lacks conversation 0
    out = tmp_path / "prefs.parquet"
    result = invoke(
        "compare", pred_a, pred_b, "--sets", labels_set, "--judge", "reference:rouge-l", "--out", out
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"wrote {out}: 7 pairs from 9 questions (judge reference:rouge-l, reference-v1); left out 1 pairs of "
        f"identical answers, 1 ties, 1 items of {pred_a} that another file does not answer"
    )
    rows = read_rows(out)
    assert [r["chosen"] for r in rows] == [[{"role": "assistant", "content": right[i]}] for i in range(1, 8)]
    assert [r["rejected"][0]["content"] for r in rows] == [bad[i] for i in range(1, 8)]
    assert [r["chosen_model"] for r in rows] == [CHECKPOINT_B, CHECKPOINT_A] * 3 + [CHECKPOINT_B]
    for i, row in enumerate(rows, 1):
        conversation = conversations[i]
        assert row["prompt"] == conversation.turns[:1] and "<ecg>" in row["prompt"][0]["content"]
        assert row["ecg_refs"] == [[e.corpus, e.record_id] for e in conversation.ecgs]
        assert (row["judge"], row["judge_version"], row["kind"]) == (
            "reference:rouge-l",
            "reference-v1",
            "preference",
        )
        assert (
            row["score_chosen"] == pytest.approx(1.0) and row["score_rejected"] < 0.9
        )  # the rouge F of a copy
        assert {
            row[k] for k in ("system", "ecg_sha256", "ecg_path", "ecg_fs", "ecg_source", "feedback_id")
        } == {None}
        decoding = json.loads(row["decoding"])
        sampled = {"strategy": "sample", "do_sample": True, "temperature": 0.7, "seed": 3, "ecg_mode": "real"}
        greedy = {"strategy": "greedy", "do_sample": False, "seed": 0, "ecg_mode": "real"}
        assert (
            decoding[("chosen" if row["chosen_model"] == CHECKPOINT_B else "rejected")].items()
            >= sampled.items()
        )
        assert (
            decoding[("rejected" if row["chosen_model"] == CHECKPOINT_B else "chosen")].items()
            >= greedy.items()
        )
        datetime.fromisoformat(row["timestamp"])
    # first turns: the question alone is the same prompt, so --sets may be left out
    again = tmp_path / "again.parquet"
    result = invoke("compare", pred_a, pred_b, "--judge", "reference", "--out", again)
    assert result.exit_code == 0, result.output
    strip = [{k: v for k, v in r.items() if k != "timestamp"} for r in read_rows(again)]
    assert strip == [{k: v for k, v in r.items() if k != "timestamp"} for r in rows]


def test_later_turns_take_their_prompt_from_the_sets(
    conversations: list[Conversation], labels_set: Path, tmp_path: Path
) -> None:
    """Two real questions about one record as one conversation; the answers are to its second question."""
    first, second = conversations[0], next(c for c in conversations[1:] if c.ecgs == conversations[0].ecgs)
    follow_up = {"role": "user", "content": second.turns[0]["content"].replace("<ecg>\n", "")}
    multi = Conversation("multi", "0", [*first.turns, follow_up, second.turns[1]], first.ecgs)
    sets = write_conversation_set(tmp_path / "multi.parquet", conversation_table([multi]))
    answers = second.turns[1]["content"], conversations[5].turns[1]["content"]
    files = [
        write_jsonl(tmp_path / f"{name}.jsonl", prediction_lines([multi], [answer], checkpoint, turn=3))
        for name, answer, checkpoint in zip("ab", answers, (CHECKPOINT_A, CHECKPOINT_B), strict=True)
    ]
    out = tmp_path / "prefs.parquet"
    result = invoke("compare", *files, "--sets", sets, "--judge", "reference:token-f1", "--out", out)
    assert result.exit_code == 0, result.output
    (row,) = read_rows(out)
    assert row["prompt"] == multi.turns[:3] and row["chosen"][0]["content"] == answers[0]
    for args, message in (
        ([], "answers a later turn of a conversation: give --sets"),
        (["--sets", labels_set], "multi/0 (answered in"),
    ):
        result = invoke("compare", *files, *args, "--judge", "reference", "--out", tmp_path / "x.parquet")
        assert result.exit_code == 2 and message in result.stderr, result.output


def test_rank_writes_best_against_worst(
    conversations: list[Conversation], labels_set: Path, tmp_path: Path
) -> None:
    right = gold(conversations)
    partial = [" ".join(r.split()[: max(1, len(r.split()) // 2)]) for r in right]
    candidates = {"right": right, "empty": [""] * N, "partial": partial}  # an empty answer scores 0
    candidates["empty"][3] = candidates["partial"][3] = right[
        3
    ]  # three times the same answer: nothing to rank
    files = [
        write_jsonl(
            tmp_path / name / "predictions.jsonl", prediction_lines(conversations, texts, f"runs/{name}#0")
        )
        for name, texts in candidates.items()
    ]
    out = tmp_path / "ranked.parquet"
    result = invoke("rank", *files, "--sets", labels_set, "--judge", "reference:token-f1", "--out", out)
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert result.stdout.strip() == (
        f"wrote {out}: 9 pairs from {N} questions (judge reference:token-f1, reference-v1); left out 1 "
        "questions whose answers are all the same"
    )
    for i, row in zip([i for i in range(N) if i != 3], rows, strict=True):
        assert (row["chosen"][0]["content"], row["chosen_model"]) == (right[i], "runs/right#0")
        assert row["score_chosen"] == 1.0  # won every comparison
        # the worst: the empty answer (lost to both, or tied with a half that shares no word)
        assert (row["rejected"][0]["content"], row["rejected_model"]) == ("", "runs/empty#0")
        assert row["score_rejected"] <= 0.25
        assert row["prompt"] == conversations[i].turns[:1]


def test_compare_with_a_pairrm_ranker(conversations: list[Conversation], tmp_path: Path) -> None:
    words = " ".join(gold(conversations)).lower().replace(",", " ").replace(".", " ").split()
    model = tiny_pairrm(tmp_path / "pairrm", words)
    files = [
        write_jsonl(tmp_path / f"{name}.jsonl", prediction_lines(conversations[:4], answers[:4], checkpoint))
        for name, answers, checkpoint in (
            ("a", gold(conversations), CHECKPOINT_A),
            ("b", wrong(conversations), CHECKPOINT_B),
        )
    ]
    out = tmp_path / "prefs.parquet"
    result = invoke(
        "compare", *files, "--judge", f"reward:{model}", "--batch-size", "3", "--device", "cpu", "--out", out
    )
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert len(rows) == 4  # a random head still prefers one answer of each pair (never exactly 0)
    for row in rows:
        assert (row["judge"], row["judge_version"]) == (f"reward:{model}", "pairrm-v1")
        assert row["score_chosen"] > 0.5 > row["score_rejected"]
        assert row["score_chosen"] + row["score_rejected"] == pytest.approx(1.0)


class FirstAnswerJudge:
    """Pure position bias, as small LLM judges show (see test_judges): every verdict flips with the order."""

    id, version = "llm:biased", "1"

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        # a sound judgement only against an empty answer
        return [Verdict("b", 0.0, 1.0) if not i.answer_a else Verdict("a", 1.0, 0.0) for i in items]


def test_answer_order_disagreements_are_counted(
    conversations: list[Conversation], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [
        write_jsonl(tmp_path / f"{name}.jsonl", prediction_lines(conversations[:3], answers[:3], checkpoint))
        for name, answers, checkpoint in (
            ("a", gold(conversations), CHECKPOINT_A),
            ("b", wrong(conversations), CHECKPOINT_B),
        )
    ]
    monkeypatch.setattr("ecgbench.judge.judges.load_judge", lambda spec, **kwargs: FirstAnswerJudge())
    for mode in ("tie", "drop"):
        out = tmp_path / f"{mode}.parquet"
        result = invoke("compare", *files, "--judge", "llm:biased", "--on-disagreement", mode, "--out", out)
        assert result.exit_code == 2 and not out.exists(), result.output
        assert (
            f"no preference pairs from {files[0]}, {files[1]} (3 disagreements between the answer orders "
            f"({'ties' if mode == 'tie' else 'dropped'})): nothing written"
        ) in result.stderr
    empty = write_jsonl(
        tmp_path / "empty.jsonl", prediction_lines(conversations[:3], [""] * 3, "runs/empty#0")
    )
    out = tmp_path / "ranked.parquet"
    result = invoke("rank", *files, empty, "--judge", "llm:biased", "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"wrote {out}: 3 pairs from 3 questions (judge llm:biased, 1); of 9 comparisons, 3 changed with the "
        "answer order and 0 were unparsable"
    )
    rows = read_rows(out)
    assert [(r["chosen_model"], r["rejected_model"]) for r in rows] == [(CHECKPOINT_A, "runs/empty#0")] * 3
    assert [(r["score_chosen"], r["score_rejected"]) for r in rows] == [
        (0.75, 0.0)
    ] * 3  # a tie, a win; 2 losses


class NoVerdictJudge:
    id, version = "llm:mumbler", "1"

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return [UNPARSABLE for _ in items]


def test_bad_inputs_give_one_line_and_write_nothing(
    conversations: list[Conversation], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines_a = prediction_lines(conversations[:3], gold(conversations)[:3], CHECKPOINT_A)
    lines_b = prediction_lines(conversations[:3], wrong(conversations)[:3], CHECKPOINT_B)
    good_a, good_b = write_jsonl(tmp_path / "a.jsonl", lines_a), write_jsonl(tmp_path / "b.jsonl", lines_b)
    cut = tmp_path / "cut.jsonl"
    cut.write_text(json.dumps(lines_b[0]) + "\n" + json.dumps(lines_b[1])[:40] + "\n", encoding="utf-8")
    no_answer = write_jsonl(
        tmp_path / "no_answer.jsonl", [{k: v for k, v in lines_b[0].items() if k != "prediction"}]
    )
    other = write_jsonl(
        tmp_path / "other.jsonl", prediction_lines(conversations[3:5], gold(conversations)[3:5], "x")
    )
    moved = write_jsonl(
        tmp_path / "moved.jsonl", [{**row, "ecg_refs": [["ptbxl", "999"]]} for row in lines_b]
    )
    no_ref = [write_jsonl(tmp_path / f"noref_{n}.jsonl", [{**r, "reference": None} for r in rows])
              for n, rows in (("a", lines_a), ("b", lines_b))]  # fmt: skip
    out = tmp_path / "prefs.parquet"
    out.write_bytes(b"an earlier preference set")
    cases = [
        (["compare", good_a, cut], f"{cut} line 2: not valid JSON"),
        (["compare", good_a, no_answer], f"{no_answer} line 1: missing prediction"),
        (["compare", good_a, other], "have no question in common"),
        (["compare", good_a, moved], "has another ecg_refs in"),
        (["compare", *no_ref], "needs a gold answer, and 3 of 3 questions in"),
        (["compare", good_a, tmp_path / "nothing.jsonl"], "predictions file not found"),
        (["rank", good_a], "judge rank needs at least two predictions files"),
    ]
    for args, message in cases:
        result = invoke(*args, "--judge", "reference", "--out", out)
        assert result.exit_code == 2, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (message, result.stderr)
    for spec, message in (
        ("oracle", "unknown judge 'oracle'"),
        ("reference:cider", "unknown reference metric"),
    ):
        result = invoke("compare", good_a, good_b, "--judge", spec, "--out", out)
        assert result.exit_code == 2 and message in result.stderr, result.output
    result = invoke("compare", good_a, good_b, "--judge", "reference", "--out", tmp_path / "prefs.csv")
    assert result.exit_code == 2 and "must end in .parquet" in result.stderr
    monkeypatch.setattr("ecgbench.judge.judges.load_judge", lambda spec, **kwargs: NoVerdictJudge())
    result = invoke("compare", good_a, good_b, "--judge", "llm:mumbler", "--out", out)
    assert result.exit_code == 2, result.output
    assert "the judge llm:mumbler gave no parsable verdict on any of the 3 items" in result.stderr
    assert out.read_bytes() == b"an earlier preference set"

"""The demo's functions through gradio's own client, against the pages served on 127.0.0.1.

Side by side (model A: end-to-end ECG-Byte ELM, model B: encoder-free ELM) and with one model; the real
bundled PTB-XL record 00001_lr is uploaded as WFDB files or picked from the prepared sample store."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import gradio_client
import numpy as np
import pytest
from demo_helpers import PTBXL, Runs, Served, expected_answer, feedback_lines, shown

from ecgbench.data.store import SegmentStore
from ecgbench.demo.app import Session
from ecgbench.demo.inputs import ecg_sha256
from ecgbench.files import sha256_file

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # gradio's own pandas calls

#: after the question: system prompt, max new tokens, sample, temperature, top p, top k, seed, longest prompt
GREEDY = ("", 6, False, 1.0, 1.0, 0, 0, 256)


def last_answer(chat: list[dict[str, Any]]) -> str:
    assert chat[-1]["role"] == "assistant"
    return "".join(part["text"] for part in chat[-1]["content"] if part.get("type") == "text")


def new_lines(served: Served, before: int) -> list[dict[str, Any]]:
    return feedback_lines(served)[before:]


def count(served: Served) -> int:
    return len(feedback_lines(served))


def client(served: Served) -> Any:
    return gradio_client.Client(served.url, verbose=False, download_files=False)


def upload_ptbxl(c: Any, segment: int = 0) -> tuple:
    files = [gradio_client.handle_file(str(PTBXL.with_suffix(s))) for s in (".hea", ".dat")]
    return c.predict(files, None, "mV", "50", segment, api_name="/load_upload")


def test_side_by_side_streams_both_answers_and_logs_the_pick(
    side_by_side: Served, runs: Runs, sample_store: Path
) -> None:
    c = client(side_by_side)
    before = count(side_by_side)
    cleared, plot, status, chat_a, chat_b, _ = upload_ptbxl(c)
    store_ecg = SegmentStore.open(sample_store).read(0)  # ptbxl/1 #0: what `data prepare` made of it
    assert status.startswith("Loaded 00001_lr.hea, 00001_lr.dat (segment 0 of 2)")
    assert ecg_sha256(store_ecg)[:12] in status and cleared is None and chat_a == chat_b == []
    assert Path(plot["path"]).is_file() and plot["path"].endswith(".png")

    job = c.submit("Is this ECG normal?", *GREEDY, api_name="/ask")
    final = job.result()
    steps = job.outputs()
    assert len(steps) >= 4  # A streamed, then B streamed: many partial updates, not one final one
    turns = [{"role": "user", "content": "<ecg>\nIs this ECG normal?"}]
    answers = {slot: expected_answer(side_by_side, slot, turns, store_ecg) for slot in "ab"}
    assert last_answer(final[0]) == shown(answers["a"]) and last_answer(final[1]) == shown(answers["b"])
    assert final[3] == "Which answer is better?"

    # the next question waits for the pick (every logged pair answers one shared prompt)
    blocked = c.predict("And the rhythm?", *GREEDY, api_name="/ask")
    assert "pick the better answer" in blocked[3] and blocked[2] == "And the rhythm?"

    chats = c.predict(api_name="/prefer_b")
    assert chats[2].startswith("Recorded: B is better")
    (line,) = new_lines(side_by_side, before)
    assert line["mode"] == "side_by_side" and line["choice"] == "b" and line["corrected"] is None
    assert datetime.fromisoformat(line["timestamp"]).utcoffset().total_seconds() == 0
    assert line["checkpoints"] == {m.slot: m.checkpoint_id for m in side_by_side.app.models}
    for slot, run in (("a", runs.end2end), ("b", runs.encoder_free)):
        best = run / "best"
        assert line["checkpoints"][slot] == f"{best.resolve()}#{sha256_file(best / 'elm_config.json')[:16]}"
    assert line["turns"] == turns and line["answers"] == answers
    assert line["decoding"]["strategy"] == "greedy" and line["decoding"]["max_new_tokens"] == 6
    source = line["ecg"]["source"]
    assert source["kind"] == "upload" and source["format"] == "wfdb" and source["segment_index"] == 0
    assert set(source["files"]) == {"00001_lr.hea", "00001_lr.dat"} and source["mains_hz"] == 50.0
    for slot in "ab":
        ecg = line["ecg"][slot]
        assert ecg["sha256"] == ecg_sha256(store_ecg) and (ecg["fs"], ecg["samples"]) == (250.0, 1250)
        np.testing.assert_array_equal(np.load(side_by_side.feedback.parent / ecg["file"]), store_ecg)

    # the conversation goes on from B's answer, for both models; sampling settings are recorded
    sampled = ("", 6, True, 1.5, 1.0, 0, 7, 256)
    final = c.submit("And the rhythm?", *sampled, api_name="/ask").result()
    history = [
        *turns,
        {"role": "assistant", "content": answers["b"]},
        {"role": "user", "content": "And the rhythm?"},
    ]
    second = {
        slot: expected_answer(
            side_by_side,
            slot,
            history,
            store_ecg,
            do_sample=True,
            temperature=1.5,
            top_p=1.0,
            top_k=0,
            seed=7,
        )
        for slot in "ab"
    }
    assert last_answer(final[0]) == shown(second["a"]) and last_answer(final[1]) == shown(second["b"])
    assert c.predict(api_name="/prefer_tie")[2].startswith("Recorded: a tie")
    (line,) = new_lines(side_by_side, before + 1)
    assert line["turns"] == history and line["answers"] == second and line["choice"] == "tie"
    assert line["decoding"] == {
        "strategy": "sample", "max_new_tokens": 6, "do_sample": True, "temperature": 1.5, "top_p": 1.0,
        "top_k": 0, "seed": 7, "max_length": 256,
    }  # fmt: skip
    assert c.predict(api_name="/prefer_a")[2].startswith("Error: ask a question first")
    assert len(new_lines(side_by_side, before)) == 2
    # a click while the answers are still streaming judges nothing
    streaming = Session(question=turns[0], answers={"a": answers["a"], "b": "half an ans"})
    assert (
        side_by_side.app.prefer("a", streaming)[2] == "Error: wait for the answers to finish, then judge them"
    )
    assert len(new_lines(side_by_side, before)) == 2


def test_store_record_and_segment_choice(side_by_side: Served, sample_store: Path) -> None:
    c = client(side_by_side)
    _, _, status, *_ = c.predict("cpsc/A1980 #1", api_name="/load_record")
    opened = SegmentStore.open(sample_store)
    row = [(r["corpus"], r["record_id"], r["segment_index"]) for r in opened.index.to_pylist()].index(
        ("cpsc", "A1980", 1)
    )
    assert status.startswith("Loaded cpsc/A1980 #1") and ecg_sha256(opened.read(row))[:12] in status
    _, plot, status, *_ = c.predict("cpsc/A1980 #7", api_name="/load_record")
    assert plot is None and status.startswith("Error:") and "not a segment" in status
    # segment 1 of the upload is the store's second segment of the record; segment 5 does not exist
    _, _, status, *_ = upload_ptbxl(c, segment=1)
    assert ecg_sha256(opened.read(1))[:12] in status
    _, _, status, *_ = c.predict(None, None, "mV", "50", 5, api_name="/load_upload")  # the kept files again
    assert "segment 5 does not exist (choose 0 to 1)" in status


def test_one_model_ratings_and_corrected_answers(single: Served, sample_store: Path) -> None:
    c = client(single)
    before = count(single)
    assert c.predict("", api_name="/rate_up")[2].startswith("Error: ask a question first")
    c.predict("ptbxl/1 #0", api_name="/load_record")
    final = c.submit("Is this ECG normal?", *GREEDY, api_name="/ask").result()
    answer = last_answer(final[0])
    chat, corrected, status = c.predict("Normal ECG, sinus rhythm.", api_name="/rate_down")
    assert status.startswith("Recorded: thumbs down with your corrected answer") and corrected == ""
    assert last_answer(chat) == "Normal ECG, sinus rhythm."  # the conversation goes on from the correction
    (line,) = new_lines(single, before)
    assert line["mode"] == "single" and line["choice"] == "down"
    assert line["corrected"] == "Normal ECG, sinus rhythm." and shown(line["answers"]["a"]) == answer
    assert line["checkpoints"]["b"] is None and line["ecg"]["b"] is None
    assert line["ecg"]["source"]["kind"] == "store" and line["ecg"]["source"]["record_id"] == "1"
    assert line["ecg"]["a"]["sha256"] == ecg_sha256(SegmentStore.open(sample_store).read(0))

    # a second question without rating the first answer, then a thumbs up without correction
    c.submit("Any ST changes?", *GREEDY, api_name="/ask").result()
    c.submit("And the axis?", *GREEDY, api_name="/ask").result()
    assert c.predict("", api_name="/rate_up")[2].startswith("Recorded: thumbs up (feedback")
    (line,) = new_lines(single, before + 1)
    roles = [(t["role"], t["content"]) for t in line["turns"]]
    assert roles[:3] == [
        ("user", "<ecg>\nIs this ECG normal?"),
        ("assistant", "Normal ECG, sinus rhythm."),
        ("user", "Any ST changes?"),
    ]
    assert roles[4] == ("user", "And the axis?") and line["corrected"] is None and line["choice"] == "up"
    assert c.predict("", api_name="/rate_down")[2].startswith("Error: ask a question first")  # rated once


def test_bad_inputs_get_a_message_in_the_page(single: Served, tmp_path: Path) -> None:
    c = client(single)
    assert "load an ECG first" in c.predict("Is it normal?", *GREEDY, api_name="/ask")[2]
    assert upload_ptbxl(c)[2].startswith("Loaded")
    noise = tmp_path / "A0001.hea"
    noise.write_bytes(b"\x00\x01 this is no header\n")
    _, plot, status, chat, _ = c.predict(
        [gradio_client.handle_file(str(noise))], None, "mV", "none", 0, api_name="/load_upload"
    )
    assert plot is None and status.startswith("Error: the file cannot be read: A0001.hea") and chat == []
    # together over the limit of 1 MB (each file alone would pass gradio's own check)
    halves = []
    for name in ("a.npy", "b.npy"):
        np.save(tmp_path / name, np.zeros((12, 6000)))
        halves.append(gradio_client.handle_file(str(tmp_path / name)))
    status = c.predict(halves, 500, "mV", "none", 0, api_name="/load_upload")[2]
    assert "the upload is 1.15 MB; the demo reads at most 1 MB" in status
    bad = c.predict("Is it normal?", *GREEDY, api_name="/ask")
    assert "load an ECG first" in bad[2]  # a failed load leaves no ECG behind, not even the one before
    upload_ptbxl(c)
    with pytest.raises(gradio_client.exceptions.AppError, match="less than minimum value 1"):
        c.predict("Is it normal?", "", 0, False, 1.0, 1.0, 0, 0, 256, api_name="/ask")  # gradio's own check
    assert "type a question" in c.predict("  ", *GREEDY, api_name="/ask")[2]
    final = c.submit("Is it normal?", *GREEDY, api_name="/ask").result()  # the page still works
    assert final[2] == "Rate the answer (optional)."

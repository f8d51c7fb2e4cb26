"""Every ELM kind in the demo, not only the trained end-to-end and encoder-free runs: a LLaVA-style encoder
ELM on the 12-lead image and an encoder-free ELM on the stacked signal, saved as bare checkpoint folders
(no run around them) at 100 Hz x 500 samples, a rate no store of the sample has. The app's functions are
called directly here (the served pages are tested with gradio's client and a browser elsewhere)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from demo_helpers import PTBXL

from ecgbench.demo.app import DemoApp, load_demo_model
from ecgbench.demo.feedback import FeedbackLog, read_feedback
from ecgbench.demo.inputs import model_spec, process_upload, read_upload
from ecgbench.models.checkpoint import save_elm
from ecgbench.models.elm import ELMConfig, build_elm

KINDS = {
    "encoder-image": {"architecture": "encoder", "representation": "image", "encoder": "clip"},
    "free-stacked": {"architecture": "encoder-free", "representation": "stacked", "patch_size": 16},
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_other_elm_kinds_answer_about_an_upload(kind: str, tmp_path: Path, sample_store: Path) -> None:
    config = ELMConfig(
        **KINDS[kind], llm="tiny-gpt2", signal_length=500, fs=100.0, image_size=32, num_soft_tokens=4
    )
    checkpoint = save_elm(build_elm(config), tmp_path / "checkpoint")
    model = load_demo_model(checkpoint, stores=[sample_store])
    assert (model.spec.fs, model.spec.length, model.spec.store) == (100.0, 500, None)  # ecgbench defaults
    app = DemoApp([model], FeedbackLog(tmp_path / "feedback.jsonl"))
    try:
        files = [str(PTBXL.with_suffix(s)) for s in (".hea", ".dat")]
        _, plot, status, _, _, session = app.load_upload(files, None, "mV", "50", 1, None)
        assert status.startswith("Loaded 00001_lr.hea, 00001_lr.dat (segment 1 of 2): 5 s at 100 Hz")
        assert Path(plot).is_file()
        ecg = process_upload(read_upload([PTBXL.with_suffix(".hea"), PTBXL.with_suffix(".dat")]),
                             model_spec(100.0, 500, []), 50.0)[1]  # fmt: skip
        np.testing.assert_array_equal(session.ecgs["a"].signal, ecg)
        *_, (chat, question, hint, session) = app.ask(
            "Is this ECG normal?", "", 5, False, 1.0, 1.0, 0, 0, 0, session
        )
        elm = model.elm
        prompt = elm.processor.prepare_prompt(
            [{"role": "user", "content": "<ecg>\nIs this ECG normal?"}], [ecg]
        )
        expected = elm.generate(elm.processor.collate([prompt], "left"), max_new_tokens=5)[0]
        assert chat[-1] == {"role": "assistant", "content": expected or "(empty answer)"}
        assert hint == "Rate the answer (optional)." and question == ""
        *_, status, _ = app.rate("up", "", session)
        ((line,), damaged) = read_feedback(app.feedback.path)
        assert damaged == [] and (line["ecg"]["a"]["fs"], line["ecg"]["a"]["samples"]) == (100.0, 500)
        assert line["answers"]["a"] == expected and "ecgbench's default" in line["ecg"]["a"]["settings"]
        # the sample store holds 250 Hz segments: this model cannot read them
        _, plot, status, *_ = app.load_record("ptbxl/1 #0", session)
        assert plot is None and "reads 500 samples at 100 Hz; this store holds 1250 at 250 Hz" in status
    finally:
        app.close()

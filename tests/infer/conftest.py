"""Real texts for the metric tests: PULSE's PTB-XL report-generation references and bundled ECG-QA items,
turned into prediction items in the schema ``infer generate`` writes (see ecgbench.infer.evaluate)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from infer_helpers import ECGQA_PTBXL, PULSE_REPORTS, prediction_item

from ecgbench.data.mapping.ecgqa import answer_options


@pytest.fixture(scope="session")
def pulse_reports() -> list[str]:
    """The 100 assistant reports of PULSE's ptb_report_generation_test.json (LLaVA-style conversations)."""
    conversations = json.loads(PULSE_REPORTS.read_text(encoding="utf-8"))
    return [c["conversation"][1]["value"] for c in conversations]


@pytest.fixture(scope="session")
def ecgqa_questions() -> list[dict[str, Any]]:
    """Bundled ECG-QA PTB-XL items (template and paraphrased, every split), with the reference written as the
    ECG-QA mapping writes it (the answer list joined with ", ") and the template's closed answer set."""
    options = answer_options(ECGQA_PTBXL)
    out = []
    for path in sorted(ECGQA_PTBXL.glob("*/*/*.json")):
        for item in json.loads(path.read_text(encoding="utf-8")):
            out.append(
                {
                    "conversation_id": f"{path.parent.parent.name}/{item['sample_id']}",
                    "question_type": item["question_type"],
                    "answer_options": options.get(item["template_id"], []),
                    "reference": ", ".join(item["answer"]),
                    "answer": item["answer"],
                }
            )
    return out


@pytest.fixture(scope="session")
def report_items(pulse_reports: list[str]) -> list[dict[str, Any]]:
    """40 report items: exact copies, case and punctuation variants, other records' reports, two empty
    answers and one the ROUGE package refuses ('...')."""
    refs = pulse_reports[:40]
    items = []
    for i, ref in enumerate(refs):
        if i % 10 == 0:
            prediction = ""
        elif i % 10 == 1:
            prediction = "..." if i == 1 else ref
        elif i % 10 in (2, 3):
            prediction = ref.lower().replace(".", "")
        elif i % 10 in (4, 5, 6):
            prediction = pulse_reports[40 + i]  # another record's report
        else:
            prediction = ref
        items.append(prediction_item(f"pulse/{i}", ref, prediction, question_type="report", source="pulse"))
    return items

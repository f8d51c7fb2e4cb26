"""The page in a real browser: Debian's headless Chromium driven by Selenium with Debian's chromedriver
(`./dev setup` installs both), against the side-by-side demo served on 127.0.0.1.

Screenshots are kept as test artefacts in $TEST_ARTIFACTS_DIR (default: artifacts/ under pytest's base
temporary folder)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from demo_helpers import PTBXL, Served, expected_answer, feedback_lines, shown
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from ecgbench.data.store import SegmentStore
from ecgbench.demo.inputs import ecg_sha256

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")
WAIT_S = 120  # longest wait for one step of the page (generation on a busy machine included)


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: run ./dev setup")
    return chromium, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium, driver = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(WAIT_S)
    try:
        yield session
    finally:
        session.quit()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("TEST_ARTIFACTS_DIR") or tmp_path_factory.getbasetemp() / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_text(browser: Any, element_id: str, words: str) -> str:
    WebDriverWait(browser, WAIT_S).until(lambda b: words in b.find_element(By.ID, element_id).text)
    return " ".join(browser.find_element(By.ID, element_id).text.split())


def upload(browser: Any, *files: Path) -> None:
    field = browser.find_element(By.CSS_SELECTOR, "#ecg-files input[type=file]")
    field.send_keys("\n".join(str(f) for f in files))


def bot_text(browser: Any, slot: str) -> str:
    messages = browser.find_elements(By.CSS_SELECTOR, f'#chat-{slot} [data-testid="bot"]')
    return " ".join(messages[-1].text.split())


def test_the_page_in_a_browser(
    browser: Any, side_by_side: Served, sample_store: Path, artifacts: Path, tmp_path: Path
) -> None:
    before = len(feedback_lines(side_by_side))
    browser.get(side_by_side.url)
    WebDriverWait(browser, WAIT_S).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, "#ecg-files input[type=file]")
    )
    header = browser.find_element(By.ID, "header").text
    assert "Model A" in header and "token ELM" in header and "encoder-free ELM" in header

    upload(browser, PTBXL.with_suffix(".hea"), PTBXL.with_suffix(".dat"))
    status = wait_text(browser, "ecg-status", "Loaded")
    store_ecg = SegmentStore.open(sample_store).read(0)
    assert status.startswith("Loaded 00001_lr.hea, 00001_lr.dat (segment 0 of 2)")
    WebDriverWait(browser, WAIT_S).until(
        lambda b: b.execute_script(
            "const i = document.querySelector('#ecg-plot img'); return i && i.complete && i.naturalWidth > 0"
        )
    )

    browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys("Is this ECG normal?")
    browser.find_element(By.ID, "ask").click()
    wait_text(browser, "feedback-status", "Which answer is better?")
    turns = [{"role": "user", "content": "<ecg>\nIs this ECG normal?"}]
    answers = {slot: expected_answer(side_by_side, slot, turns, store_ecg) for slot in "ab"}
    for slot in "ab":
        assert bot_text(browser, slot) == " ".join(shown(answers[slot]).split())
    browser.save_screenshot(str(artifacts / "demo-side-by-side.png"))

    browser.find_element(By.ID, "prefer-a").click()
    assert wait_text(browser, "feedback-status", "Recorded").startswith("Recorded: A is better")
    (line,) = feedback_lines(side_by_side)[before:]
    assert (line["choice"], line["turns"], line["answers"]) == ("a", turns, answers)
    assert line["ecg"]["a"]["sha256"] == ecg_sha256(store_ecg)
    assert set(line["ecg"]["source"]["files"]) == {"00001_lr.hea", "00001_lr.dat"}

    corrupt = tmp_path / "00001_lr.hea"
    corrupt.write_bytes(b"\x00\xffthis is not a WFDB header\n")
    upload(browser, corrupt)
    error = wait_text(browser, "ecg-status", "Error")
    assert error.startswith("Error: the file cannot be read: 00001_lr.hea")
    browser.save_screenshot(str(artifacts / "demo-error.png"))

    np.save(tmp_path / "large.npy", np.zeros((12, 20_000)))  # 1.9 MB, over the page's 1 MB
    upload(browser, tmp_path / "large.npy")
    toast = WebDriverWait(browser, WAIT_S).until(
        lambda b: " ".join(t.text for t in b.find_elements(By.CSS_SELECTOR, ".toast-body.error")).strip()
    )  # gradio's own message: the file never reaches the server
    assert "exceed the maximum allowed size" in toast and "large.npy" in toast
    assert (artifacts / "demo-side-by-side.png").stat().st_size > 10_000

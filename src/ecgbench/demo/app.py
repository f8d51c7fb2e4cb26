"""The demo page: an ECG, a multi-turn chat with one ELM or two side by side, and the feedback buttons.

One :class:`DemoApp` holds the loaded models (any architecture and representation: each reads its ECG through
its own processor) and the feedback log; every browser tab gets its own :class:`Session` (gradio state). A
handler never raises into gradio: what goes wrong, from an unreadable upload to a failed generation, becomes
one line in the page.

Side by side, both models answer the same conversation. The user's pick (or the first model's answer on a
tie) is what the conversation continues with, so every logged pair answers one shared prompt; with one
model, a corrected answer replaces the model's for the turns that follow.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

# Gradio's usage statistics would tell a third party about a page that holds clinical data.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from ecgbench.data.conversations import ECG_PLACEHOLDER
from ecgbench.demo import DEFAULT_MAX_UPLOAD_MB
from ecgbench.demo.feedback import FeedbackLog
from ecgbench.demo.inputs import (
    ECG,
    UNITS,
    UPLOAD_KINDS,
    SignalSpec,
    StoreCatalog,
    model_spec,
    process_upload,
    read_upload,
    store_spec,
)
from ecgbench.errors import UserError
from ecgbench.infer.generate import Decoding

log = logging.getLogger(__name__)

SLOTS = ("a", "b")
NO_MAINS = "none"
#: the longest answer the page lets a user ask for
MAX_NEW_TOKENS = 2048


@dataclass
class DemoModel:
    """One checkpoint as the demo uses it."""

    slot: str  # "a" or "b"
    elm: Any
    checkpoint_id: str
    spec: SignalSpec
    stores: list[Path]
    trained_system: str | None = None
    trained_max_length: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time per model

    def describe(self) -> str:
        c = self.elm.config
        seconds = self.spec.length / self.spec.fs
        return (
            f"`{self.checkpoint_id}`: {c.architecture} ELM on {c.representation} input, LLM `{c.llm}`; reads "
            f"{seconds:g} s at {self.spec.fs:g} Hz processed with the settings of {self.spec.origin}"
        )


def resolve_device(name: str) -> Any:
    """``auto`` (a CUDA GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a device (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine has no CUDA GPU (use auto or cpu)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: the demo runs on cpu or cuda")
    return device


def load_demo_model(
    path: Path, slot: str = "a", *, stores: list[Path] | None = None, device: Any = None
) -> DemoModel:
    """A run folder (its best checkpoint; its stores give the signal settings) or an ELM checkpoint."""
    from ecgbench.files import sha256_file
    from ecgbench.infer.cli import _checkpoint_dir
    from ecgbench.models.checkpoint import CONFIG_FILE, load_elm

    directory, run = _checkpoint_dir(Path(path))
    run_stores = [Path(p) for p in run["inputs"]["stores"]] if run else []
    chosen = [Path(p) for p in stores] if stores else run_stores
    elm = load_elm(directory, device=device)
    spec = model_spec(elm.config.fs, elm.config.signal_length, chosen)
    train = (run or {}).get("settings", {}).get("train", {})
    return DemoModel(
        slot=slot,
        elm=elm,
        checkpoint_id=f"{directory.resolve()}#{sha256_file(directory / CONFIG_FILE)[:16]}",
        spec=spec,
        stores=chosen,
        trained_system=train.get("system_prompt"),
        trained_max_length=train.get("max_length"),
    )


@dataclass
class Session:
    """What one browser tab holds: its ECG, the shared conversation and the answers awaiting judgement."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    files: list[Path] = field(default_factory=list)  # copies of the last upload (read again on "Load")
    source: dict[str, Any] | None = None
    ecgs: dict[str, ECG] = field(default_factory=dict)  # per slot: what each model reads
    turns: list[dict[str, str]] = field(default_factory=list)  # the conversation so far
    question: dict[str, str] | None = None  # the user turn the current answers reply to
    answers: dict[str, str] = field(default_factory=dict)
    answered: bool = False  # every model has finished its answer (no judging half an answer)
    system: str | None = None
    decoding: dict[str, Any] | None = None

    def new_conversation(self) -> None:
        self.turns, self.question, self.answers, self.answered = [], None, {}, False


def _shown(text: str) -> str:
    return text.replace(f"{ECG_PLACEHOLDER}\n", "").replace(ECG_PLACEHOLDER, "").strip()


def _error(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return f"Error: {exc}"
    log.exception("demo handler failed")
    return f"Error: something went wrong ({type(exc).__name__}: {exc}); details are in the terminal"


class DemoApp:
    """The page's handlers and layout for one or two models and one feedback log."""

    def __init__(
        self,
        models: list[DemoModel],
        feedback: FeedbackLog,
        *,
        decoding: Decoding = Decoding(),
        max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
        stores: list[Path] | None = None,
    ):
        if not 1 <= len(models) <= 2:
            raise ValueError("the demo shows one model or two side by side")
        self.models = models
        self.side_by_side = len(models) == 2
        self.feedback = feedback
        self.decoding = decoding
        self.max_upload_mb = max_upload_mb
        given = stores or [s for m in models for s in m.stores]
        self.catalog = StoreCatalog(list(dict.fromkeys(Path(s).resolve() for s in given)))
        self._workdir = Path(tempfile.mkdtemp(prefix="ecgbench-demo-"))  # plots and kept uploads
        self.notch_auto = any(m.spec.data.notch == "auto" for m in models)
        mains = models[0].spec.mains_hz
        self.default_mains = NO_MAINS if mains is None else f"{mains:g}"

    def close(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)

    @property
    def mode(self) -> str:
        return "side_by_side" if self.side_by_side else "single"

    # ------------------------------------------------------------------------------------- ECG loading

    def _plot(self, ecg: ECG, title: str) -> str:
        from ecgbench.data.plotting import render_twelve_lead

        path = self._workdir / "plots" / f"{ecg.sha256}.png"
        if not path.is_file():
            render_twelve_lead(ecg.signal, ecg.fs, path, title=title, dpi=100)
        return str(path)

    def _loaded(self, session: Session, ecgs: dict[str, ECG], source: dict[str, Any], title: str) -> tuple:
        session.ecgs, session.source = ecgs, source
        session.new_conversation()
        first = ecgs["a"]
        seconds = first.signal.shape[1] / first.fs
        text = f"Loaded {title}: {seconds:g} s at {first.fs:g} Hz, ECG `{first.sha256[:12]}`."
        if self.side_by_side and ecgs["b"].sha256 != first.sha256:
            b = ecgs["b"]
            text += f" Model B reads it at {b.fs:g} Hz, {b.signal.shape[1]} samples (`{b.sha256[:12]}`)."
        return (None, self._plot(first, title), text, *self._chats(session), "", session)

    def _failed(self, session: Session, exc: BaseException) -> tuple:
        # The page shows no ECG now, so no question may go to the one loaded before.
        session.ecgs, session.source = {}, None
        session.new_conversation()
        return (None, None, _error(exc), *self._chats(session), "", session)

    def _keep(self, session: Session, paths: list[Path]) -> list[Path]:
        """Copies of a new upload under their own names (gradio keeps each file in a folder of its own;
        a WFDB header must sit beside its signal files), replacing the session's previous one."""
        folder = self._workdir / "uploads" / session.id
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        kept = []
        for path in paths:
            target = folder / Path(path).name
            if target.exists():
                raise UserError("two uploaded files have the same name; upload one record at a time")
            shutil.copyfile(path, target)
            kept.append(target)
        session.files = kept
        return kept

    def load_upload(
        self, files: Any, fs: Any, units: str, mains: str, segment: Any, session: Session | None
    ) -> tuple:
        session = session or Session()
        try:
            given = [files] if isinstance(files, str | Path) else list(files or [])
            paths = self._keep(session, [Path(p) for p in given]) if given else session.files
            rate = float(fs) if fs not in (None, "") else None
            upload = read_upload(
                paths, fs=rate, units=units or "mV", max_bytes=int(self.max_upload_mb * 1_000_000)
            )
            mains_hz = None if mains in (None, "", NO_MAINS) or not self.notch_auto else float(mains)
            k = int(segment or 0)
            made = {m.slot: process_upload(upload, m.spec, mains_hz) for m in self.models}
            for model in self.models:
                count = len(made[model.slot])
                if not 0 <= k < count:
                    raise UserError(
                        f"the record gives {count} segment(s) of {model.spec.length / model.spec.fs:g} s; "
                        f"segment {k} does not exist (choose 0 to {count - 1})"
                    )
            source = {**upload.source, "segment_index": k, "segments": count, "mains_hz": mains_hz}
            ecgs = {m.slot: ECG(made[m.slot][k], m.spec.fs, source) for m in self.models}
            names = ", ".join(upload.source["files"])
            return self._loaded(session, ecgs, source, f"{names} (segment {k} of {count})")
        except Exception as exc:
            return self._failed(session, exc)

    def load_record(self, label: str, session: Session | None) -> tuple:
        from ecgbench.data.signal import signal_parameters

        session = session or Session()
        try:
            if not self.catalog.stores:
                raise UserError("no prepared store is known: start the demo with --store")
            ecg = self.catalog.read(label)
            prepared = signal_parameters(store_spec(Path(ecg.source["store"])).data)
            other = []
            for model in self.models:
                if (model.spec.fs, model.spec.length) != (ecg.fs, ecg.signal.shape[1]):
                    raise UserError(
                        f"model {model.slot.upper()} reads {model.spec.length} samples at "
                        f"{model.spec.fs:g} Hz; this store holds {ecg.signal.shape[1]} at {ecg.fs:g} Hz: "
                        "upload the record instead"
                    )
                if signal_parameters(model.spec.data) != prepared:
                    other.append(model.slot.upper())
            cleared, plot, text, *rest = self._loaded(
                session, {m.slot: ecg for m in self.models}, ecg.source, label
            )
            if other:
                names = "/".join(other)
                text += f" Note: this store was filtered otherwise than the one model {names} trained on."
            return (cleared, plot, text, *rest)
        except Exception as exc:
            return self._failed(session, exc)

    # ---------------------------------------------------------------------------------------- the chat

    def _chats(self, session: Session) -> list[list[dict[str, str]]]:
        chats = []
        for model in self.models:
            messages = [{"role": t["role"], "content": _shown(t["content"])} for t in session.turns]
            if session.question is not None:
                messages.append({"role": "user", "content": _shown(session.question["content"])})
                answer = session.answers.get(model.slot)
                if answer is not None:
                    messages.append({"role": "assistant", "content": answer or "(empty answer)"})
            chats.append(messages)
        return chats

    def _commit(self, session: Session, answer: str) -> None:
        """Continue the conversation with ``answer`` to the pending question."""
        assert session.question is not None
        session.turns = [*session.turns, session.question, {"role": "assistant", "content": answer}]
        session.question, session.answers, session.answered = None, {}, False

    def _decoding(
        self, max_new_tokens: Any, do_sample: Any, temperature: Any, top_p: Any, top_k: Any, seed: Any
    ) -> Decoding:
        from pydantic import ValidationError

        from ecgbench.settings import InferSettings

        try:
            checked = InferSettings(
                max_new_tokens=int(max_new_tokens),
                do_sample=bool(do_sample),
                temperature=float(temperature),
                top_p=float(top_p),
                top_k=int(top_k),
            )
        except ValidationError as exc:
            err = exc.errors()[0]
            raise UserError(f"decoding setting {err['loc'][0]}: {err['msg']}") from None
        except (TypeError, ValueError):
            raise UserError("decoding settings must be numbers") from None
        if checked.max_new_tokens > MAX_NEW_TOKENS:
            raise UserError(f"decoding setting max_new_tokens: at most {MAX_NEW_TOKENS}")
        return Decoding(
            max_new_tokens=checked.max_new_tokens,
            do_sample=checked.do_sample,
            temperature=checked.temperature,
            top_p=checked.top_p,
            top_k=checked.top_k,
            seed=int(seed or 0),
        )

    def _stream(
        self,
        model: DemoModel,
        turns: list[dict[str, str]],
        ecg: ECG,
        system: str | None,
        decoding: Decoding,
        max_length: int | None,
    ) -> Iterator[tuple[str, bool]]:
        """(text so far, finished) while ``model`` answers; the last text is the model's answer."""
        import torch
        from transformers import TextIteratorStreamer

        elm = model.elm
        prompt = elm.processor.prepare_prompt(turns, [ecg.signal], max_length=max_length, system=system)
        batch = elm.processor.collate([prompt], "left")
        streamer = TextIteratorStreamer(
            elm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=900
        )
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                with model.lock, torch.inference_mode():
                    if decoding.do_sample:
                        torch.manual_seed(decoding.seed)
                    result["answer"] = elm.generate(batch, streamer=streamer, **decoding.generate_kwargs())[0]
            except BaseException as exc:  # reported by the page, not lost in the thread
                result["error"] = exc
                streamer.end()

        thread = threading.Thread(target=run, name=f"demo-generate-{model.slot}", daemon=True)
        thread.start()
        text = ""
        for piece in streamer:
            text += piece
            yield text, False
        thread.join()
        if "error" in result:
            raise result["error"]
        yield result["answer"], True

    def ask(
        self,
        question: str,
        system: str,
        max_new_tokens: Any,
        do_sample: Any,
        temperature: Any,
        top_p: Any,
        top_k: Any,
        seed: Any,
        max_length: Any,
        session: Session | None,
    ) -> Iterator[tuple]:
        """Each model's answer, streamed token by token (then the next model's, side by side)."""
        session = session or Session()
        try:
            if not session.ecgs:
                raise UserError("load an ECG first (upload a file or pick a store record)")
            text = (question or "").strip()
            if not text:
                raise UserError("type a question")
            if session.question is not None:
                if not session.answered:
                    raise UserError("wait for the answer to finish before the next question")
                if self.side_by_side:
                    raise UserError("pick the better answer (A, B or tie) before the next question")
                self._commit(session, session.answers["a"])  # no rating given: go on with the answer
            decoding = self._decoding(max_new_tokens, do_sample, temperature, top_p, top_k, seed)
            limit = int(max_length) if max_length not in (None, "") and int(max_length) > 0 else None
            user = {"role": "user", "content": text if session.turns else f"{ECG_PLACEHOLDER}\n{text}"}
            prompt = [*session.turns, user]
            session.question, session.answers, session.answered = user, {}, False
            session.system = system.strip() if system and system.strip() else None
            session.decoding = {**decoding.record(), "max_length": limit}
        except Exception as exc:
            yield (*self._chats(session), question, _error(exc), session)
            return
        try:
            for model in self.models:
                for partial_text, _ in self._stream(
                    model, prompt, session.ecgs[model.slot], session.system, decoding, limit
                ):
                    session.answers[model.slot] = partial_text
                    yield (*self._chats(session), "", "", session)
            session.answered = True
            hint = "Which answer is better?" if self.side_by_side else "Rate the answer (optional)."
            yield (*self._chats(session), "", hint, session)
        except Exception as exc:
            session.question, session.answers = None, {}  # a failed turn is not part of the conversation
            yield (*self._chats(session), question, _error(exc), session)

    # ------------------------------------------------------------------------------------- feedback

    def _record(self, session: Session, choice: str, corrected: str | None) -> dict[str, Any]:
        assert session.question is not None and session.source is not None
        ecg: dict[str, Any] = {"source": session.source, "a": None, "b": None}
        for model in self.models:
            saved = self.feedback.save_ecg(session.ecgs[model.slot])
            ecg[model.slot] = {**saved, "settings": model.spec.origin}
        return self.feedback.append(
            {
                "session": session.id,
                "mode": self.mode,
                "checkpoints": {
                    "a": self.models[0].checkpoint_id,
                    "b": self.models[1].checkpoint_id if self.side_by_side else None,
                },
                "ecg": ecg,
                "system": session.system,
                "decoding": session.decoding,
                "turns": [*session.turns, session.question],
                "answers": {"a": session.answers["a"], "b": session.answers.get("b")},
                "choice": choice,
                "corrected": corrected,
            }
        )

    def _pending(self, session: Session | None) -> Session:
        if session is None or session.question is None:
            raise UserError("ask a question first; feedback is about the latest answer")
        if not session.answered:
            raise UserError("wait for the answers to finish, then judge them")
        return session

    def prefer(self, choice: str, session: Session | None) -> tuple:
        """Side by side: model A, model B or a tie is better; the conversation continues with the pick."""
        try:
            if not self.side_by_side:
                raise UserError("preferences need two models (start the demo with --checkpoint-b)")
            session = self._pending(session)
            line = self._record(session, choice, None)
            self._commit(session, session.answers["b" if choice == "b" else "a"])
            picked = {"a": "A is better", "b": "B is better", "tie": "a tie"}[choice]
            status = f"Recorded: {picked} (feedback `{line['id'][:8]}` in {self.feedback.path.name})."
        except Exception as exc:
            status = _error(exc)
        return (*self._chats(session or Session()), status, session)

    def rate(self, choice: str, corrected: str, session: Session | None) -> tuple:
        """One model: thumbs up or down on the latest answer, with an optional corrected answer."""
        try:
            if self.side_by_side:
                raise UserError("side by side, pick the better answer instead")
            session = self._pending(session)
            fixed = corrected.strip() if corrected and corrected.strip() else None
            line = self._record(session, choice, fixed)
            self._commit(session, fixed or session.answers["a"])
            word = "thumbs up" if choice == "up" else "thumbs down"
            extra = " with your corrected answer; the conversation goes on from it" if fixed else ""
            status = f"Recorded: {word}{extra} (feedback `{line['id'][:8]}` in {self.feedback.path.name})."
            return (*self._chats(session), "", status, session)
        except Exception as exc:
            return (*self._chats(session or Session()), corrected, _error(exc), session)

    def reset(self, session: Session | None) -> tuple:
        session = session or Session()
        session.new_conversation()
        return (*self._chats(session), "New conversation about the same ECG.", session)

    # ------------------------------------------------------------------------------------------ layout

    def build(self, *, notice: str = "") -> Any:
        """The gradio Blocks of the page."""
        import gradio as gr

        first = self.models[0]
        # gradio keeps uploads and plots in its cache: files older than a day go every hour, and all of
        # them when the server stops, so no clinical data is left behind in a temporary folder.
        with gr.Blocks(title="ecgbench demo", analytics_enabled=False, delete_cache=(3600, 86400)) as blocks:
            state = gr.State(None)
            lines = ["# ecgbench demo"]
            for model in self.models:
                name = f"Model {model.slot.upper()}" if self.side_by_side else "Model"
                lines.append(f"- **{name}**: {model.describe()}")
            lines.append(
                f"- Feedback is appended to `{self.feedback.path}`; judged ECGs are kept in "
                f"`{self.feedback.ecg_dir}`."
            )
            if notice:
                lines.append(f"- {notice}")
            gr.Markdown("\n".join(lines), elem_id="header")
            with gr.Row():
                with gr.Column(scale=2):
                    with gr.Tab("Upload a record"):
                        files = gr.File(
                            label=f"ECG file(s): {UPLOAD_KINDS}",
                            file_count="multiple",
                            elem_id="ecg-files",
                        )
                        with gr.Row():
                            fs = gr.Number(
                                label="sampling rate, Hz (.npy and CSV only)", value=None, elem_id="ecg-fs"
                            )
                            units = gr.Dropdown(
                                list(UNITS),
                                value="mV",
                                label="units (.npy and CSV only)",
                                elem_id="ecg-units",
                            )
                        mains = gr.Dropdown(
                            [("unknown: no notch", NO_MAINS), ("50 Hz", "50"), ("60 Hz", "60")],
                            value=self.default_mains,
                            label="power-line frequency of the recording (its notch filter)",
                            visible=self.notch_auto,
                            elem_id="ecg-mains",
                        )
                        segment = gr.Number(
                            label=f"segment ({first.spec.length / first.spec.fs:g} s each)",
                            value=0,
                            precision=0,
                            minimum=0,
                            elem_id="ecg-segment",
                        )
                        load_upload = gr.Button("Load the upload", elem_id="load-upload")
                    with gr.Tab("Prepared store", visible=bool(self.catalog.stores)):
                        record = gr.Dropdown(
                            self.catalog.choices() if self.catalog.stores else [],
                            label="record (corpus/record_id #segment; type to search)",
                            allow_custom_value=True,
                            elem_id="store-record",
                        )
                        load_record = gr.Button("Use this record", elem_id="load-record")
                    ecg_status = gr.Markdown("Load an ECG to start.", elem_id="ecg-status")
                    plot = gr.Image(
                        label="12-lead ECG as the model reads it",
                        type="filepath",
                        interactive=False,
                        buttons=["download", "fullscreen"],
                        elem_id="ecg-plot",
                    )
                with gr.Column(scale=3):
                    with gr.Row():
                        chats = [
                            gr.Chatbot(
                                label=f"Model {m.slot.upper()}" if self.side_by_side else "Answer",
                                elem_id=f"chat-{m.slot}",
                                feedback_options=None,
                                buttons=["copy", "copy_all"],  # no share button: the page stays local
                                render_markdown=False,  # the answers exactly as the model wrote them
                                height=420,
                            )
                            for m in self.models
                        ]
                    question = gr.Textbox(
                        label="question", placeholder="Ask about this ECG", elem_id="question", lines=2
                    )
                    with gr.Row():
                        ask = gr.Button("Ask", variant="primary", elem_id="ask")
                        reset = gr.Button("New conversation", elem_id="reset")
                    if self.side_by_side:
                        with gr.Row():
                            prefer = {
                                choice: gr.Button(text, elem_id=f"prefer-{choice}")
                                for choice, text in (
                                    ("a", "A is better"),
                                    ("tie", "Tie"),
                                    ("b", "B is better"),
                                )
                            }
                    else:
                        corrected = gr.Textbox(
                            label="corrected answer (optional, sent with your rating)",
                            elem_id="corrected",
                            lines=2,
                        )
                        with gr.Row():
                            rate = {
                                choice: gr.Button(text, elem_id=f"rate-{choice}")
                                for choice, text in (("up", "Good answer"), ("down", "Bad answer"))
                            }
                    feedback_status = gr.Markdown("", elem_id="feedback-status")
                    with gr.Accordion("System prompt and decoding", open=True):
                        trained = first.trained_system
                        system = gr.Textbox(
                            value=trained or "",
                            label="system prompt"
                            + (" (the one the model was trained with)" if trained else " (none in training)"),
                            elem_id="system",
                        )
                        with gr.Row():
                            max_new_tokens = gr.Slider(
                                1,
                                MAX_NEW_TOKENS,
                                value=self.decoding.max_new_tokens,
                                step=1,
                                label="max new tokens",
                                elem_id="max-new-tokens",
                            )
                            max_length = gr.Number(
                                value=first.trained_max_length or 0,
                                precision=0,
                                minimum=0,
                                label="longest prompt, tokens (0 = no limit; ECG runs shrink first)",
                                elem_id="max-length",
                            )
                        with gr.Row():
                            do_sample = gr.Checkbox(
                                value=self.decoding.do_sample,
                                label="sample (off: greedy)",
                                elem_id="do-sample",
                            )
                            seed = gr.Number(
                                value=self.decoding.seed, precision=0, label="seed", elem_id="seed"
                            )
                        with gr.Row():
                            temperature = gr.Slider(
                                0.05, 2.0, value=self.decoding.temperature, step=0.05, label="temperature"
                            )
                            top_p = gr.Slider(0.05, 1.0, value=self.decoding.top_p, step=0.05, label="top p")
                            top_k = gr.Number(
                                value=self.decoding.top_k, precision=0, minimum=0, label="top k (0 = all)"
                            )

            # The file box is emptied after each load (gradio would add the next upload to it); the
            # session keeps the files, so "Load the upload" reads them again with other settings.
            ecg_outputs = [files, plot, ecg_status, *chats, feedback_status, state]
            upload_inputs = [files, fs, units, mains, segment, state]
            files.upload(self.load_upload, upload_inputs, ecg_outputs, api_name="upload")
            load_upload.click(self.load_upload, upload_inputs, ecg_outputs, api_name="load_upload")
            load_record.click(self.load_record, [record, state], ecg_outputs, api_name="load_record")
            gr.on(
                [ask.click, question.submit],
                self.ask,
                [
                    question,
                    system,
                    max_new_tokens,
                    do_sample,
                    temperature,
                    top_p,
                    top_k,
                    seed,
                    max_length,
                    state,
                ],
                [*chats, question, feedback_status, state],
                api_name="ask",
            )
            reset.click(self.reset, [state], [*chats, feedback_status, state], api_name="reset")
            for chat in chats:  # the chat's own clear button starts a new conversation too
                chat.clear(self.reset, [state], [*chats, feedback_status, state], api_visibility="private")
            if self.side_by_side:
                for choice, button in prefer.items():
                    button.click(
                        partial(self.prefer, choice),
                        [state],
                        [*chats, feedback_status, state],
                        api_name=f"prefer_{choice}",
                    )
            else:
                for choice, button in rate.items():
                    button.click(
                        partial(self.rate, choice),
                        [corrected, state],
                        [*chats, corrected, feedback_status, state],
                        api_name=f"rate_{choice}",
                    )
        return blocks


def launch(
    blocks: Any,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    block: bool = True,
    quiet: bool = False,
) -> str:
    """Serve the page on ``host:port`` (a public share link only with ``share``); returns its local URL.
    With ``block`` it serves until Ctrl-C."""
    _, url, _ = blocks.launch(
        server_name=host,
        server_port=port,
        share=share,
        prevent_thread_lock=not block,
        quiet=quiet,
        show_error=False,  # messages go into the page; no tracebacks in the browser
        ssr_mode=False,  # no Node server
        max_file_size=int(max_upload_mb * 1_000_000),  # gradio refuses a larger file at the door
        footer_links=["settings"],
    )
    return url

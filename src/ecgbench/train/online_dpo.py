"""Online DPO (``train dpo --judge SPEC``): rounds of sample, judge, train, on the current policy.

Each round answers questions of the train split (``--conversations-per-round`` drawn afresh, seeded by
(seed, round)) ``--candidates`` times by sampling from the policy as it is at the round's start; the judge
ranks each question's answers (``judge rank``: round robin, both orders) and the best and the worst become a
pair; the round then trains its share of ``--max-steps`` on those pairs in the one optimizer loop, whose
state (AdamW moments, schedule, best checkpoint, patience) runs on across rounds. The validation pairs are
sampled and judged once, from the starting checkpoint, so validation losses of all rounds compare.

The reference stays the starting checkpoint: before the first update the policy is that checkpoint; for a
later round it is loaded again from its files for as long as the round's reference log-probs take (so a
trained projector or encoder cannot leak into it). The evaluation split is never asked: questions come from
the train and val splits only.

Everything a round makes stays in the run folder, in the formats the separate commands write, so a round
can be inspected or reused offline (``train dpo --preferences``)::

    online/val/candidate-<k>/predictions.jsonl    sampled answers (``infer generate`` format)
    online/val/preferences.parquet                judged pairs (``judge rank`` format)
    online/round-<r>/...                          the same for round r, and its reference log-probs
    online/round-<r>/round.json                   questions, pairs, what the judge left out

``--resume`` continues a killed run: a round whose pairs are written trains on them again from its last
checkpoint; a round cut short while sampling resumes its predictions files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecgbench.console import console
from ecgbench.errors import UserError
from ecgbench.files import sha256_file
from ecgbench.settings import DPOSettings
from ecgbench.train import run_dir as rd
from ecgbench.train.dpo import (
    REFERENCE_FILE,
    DPOInputs,
    DPOStart,
    PairDataset,
    PairECGs,
    PreferenceObjective,
    cached_reference,
    ecg_token_estimate,
    load_policy,
    open_start,
    read_pairs,
    report_unusable,
    run_record,
)

ONLINE_DIR = "online"
PREFERENCES_FILE = "preferences.parquet"
ROUND_FILE = "round.json"
ROUND_FORMAT = "ecgbench-online-dpo-round"


def read_round(folder: Path) -> dict[str, Any]:
    from ecgbench.files import read_json_document

    return read_json_document(folder / ROUND_FILE, fmt=ROUND_FORMAT, what="an online DPO round", version=1)


def round_bounds(total: int, rounds: int) -> list[int]:
    """The update at which each round starts, and the last: ``total`` updates shared out as evenly as can
    be (rounds differ by at most one update)."""
    return [total * r // rounds for r in range(rounds + 1)]


def decoding_seed(seed: int, stage: int, candidate: int) -> int:
    """The sampling seed of one candidate of one round (stage 0: the validation pairs)."""
    return int(np.random.SeedSequence([seed, stage, candidate]).generate_state(1)[0])


@dataclass
class Questions:
    """The conversations a stage asks, and the sets their prompts come from."""

    dataset: Any  # ConversationDataset, its order cut to the conversations drawn
    sets: list[Path]


def draw(dataset: Any, count: int | None, seed: int, stage: int) -> Any:
    """``count`` conversations of ``dataset`` drawn by (seed, stage), in their set order (all: as is)."""
    if count is not None and count < len(dataset):
        rng = np.random.default_rng([seed, stage])
        dataset.order = dataset.order[np.sort(rng.choice(len(dataset), size=count, replace=False))]
    return dataset


def sample_and_judge(
    elm: Any,
    questions: Questions,
    folder: Path,
    *,
    judge: Any,
    settings: DPOSettings,
    seed: int,
    stage: int,
    policy_id: str,
    accelerator: Any,
) -> dict[str, Any]:
    """Answer every question ``candidates`` times by sampling, judge the answers, write the pairs to
    ``folder/preferences.parquet`` and return the stage's summary (also written to ``round.json``)."""
    from ecgbench.infer.generate import Decoding, generate_predictions, join_parts, sorted_predictions
    from ecgbench.infer.generate import questions as asked
    from ecgbench.judge.export import write_preferences
    from ecgbench.judge.pairs import load_inputs, rank_pairs

    order = [(questions.dataset.conversation_id(q.index), q.turn) for q in asked(questions.dataset)]
    P, rank = accelerator.num_processes, accelerator.process_index
    files = []
    for k in range(settings.candidates):
        decoding = Decoding(
            max_new_tokens=settings.max_new_tokens,
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=decoding_seed(seed, stage, k),
        )
        target = folder / f"candidate-{k + 1}"
        generate_predictions(
            elm,
            questions.dataset,
            target,
            decoding=decoding,
            batch_size=settings.batch_size,
            max_length=settings.max_length,
            system=settings.system_prompt,
            checkpoint_id=policy_id,
            rank=rank,
            processes=P,
        )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            files.append(join_parts(target, P, order) if P > 1 else sorted_predictions(target, order))
    summary: dict[str, Any] = {}
    if accelerator.is_main_process:
        result = rank_pairs(load_inputs(files, questions.sets), judge, on_disagreement="tie")
        rows = [r for r in result.rows if r["chosen"][0]["content"].strip()]
        if len(rows) < len(result.rows):  # the judge found nothing better than an empty answer
            result.left_out["questions whose best answer is empty"] += len(result.rows) - len(rows)
        summary = {
            "format": ROUND_FORMAT,
            "version": 1,
            "questions": len(order),
            "candidates": settings.candidates,
            "pairs": len(rows),
            "left_out": {reason: n for reason, n in sorted(result.left_out.items()) if n},
            "judge": judge.id,
            "judge_version": judge.version,
            "policy": policy_id,
        }
        if rows:
            write_preferences(rows, folder / PREFERENCES_FILE)
        rd.write_json(folder / ROUND_FILE, summary)
    accelerator.wait_for_everyone()
    summary = summary or read_round(folder)
    if not summary["pairs"]:
        left = ", ".join(f"{n} {why}" for why, n in summary["left_out"].items()) or "nothing judged"
        raise UserError(
            f"{folder}: the judge preferred one sampled answer on no question ({left}); sample more "
            "varied answers (--temperature, --candidates) or ask more questions"
        )
    return summary


def _pairs(folder: Path, start: DPOStart, elm: Any, settings: DPOSettings) -> PairDataset:
    pairs, _ = read_pairs(folder / PREFERENCES_FILE)  # the same answer twice never became a pair
    ecgs = PairECGs(start.records, start.config.signal_length, start.config.fs, folder / PREFERENCES_FILE)
    return PairDataset(pairs, ecgs, elm.processor, settings.max_length, settings.system_prompt)


def _check_online(inputs: DPOInputs, settings: DPOSettings) -> int:
    if inputs.preferences is not None:
        raise UserError("give --preferences (offline DPO) or --judge (online DPO), not both")
    if settings.max_steps is None:
        raise UserError(
            "online DPO needs --max-steps, the updates of all rounds together (a round's pairs are only "
            "known once it is judged, so an epoch has no length in advance)"
        )
    if "epochs" in settings.model_fields_set:
        raise UserError("--epochs is for offline DPO; online DPO trains --max-steps updates over --rounds")
    if settings.max_steps < settings.rounds:
        raise UserError(
            f"--max-steps {settings.max_steps} leaves some of the {settings.rounds} rounds without an update"
        )
    return settings.max_steps


def train_online_dpo(inputs: DPOInputs, settings: DPOSettings, seed: int) -> Any:
    """Run (or resume) online DPO; see the module notes."""
    from ecgbench.data.dataset import ConversationDataset
    from ecgbench.judge.judges import load_judge
    from ecgbench.models.checkpoint import CONFIG_FILE, load_elm, load_trained_parts
    from ecgbench.train.loop import Job, _check_lengths, optimize, start_accelerator, updates_in_an_epoch

    total = _check_online(inputs, settings)
    out = Path(inputs.out)
    start = open_start(inputs, settings, list(inputs.sets or []))
    if start.records is None:
        raise UserError("online DPO asks questions about store records: give --store")
    sft_sets = (start.sft_run or {}).get("inputs", {}).get("sets") or []
    sets = [Path(p) for p in (inputs.sets or sft_sets)]
    if not sets:
        raise UserError("give --sets: the conversation sets whose train-split questions online DPO asks")
    train_questions = Questions(
        ConversationDataset(sets, start.records, split=settings.train_split, splits=start.splits), sets
    )
    every_train_conversation = train_questions.dataset.order.copy()
    val_questions = Questions(
        draw(
            ConversationDataset(sets, start.records, split=settings.val_split, splits=start.splits),
            settings.val_conversations,
            seed,
            0,
        ),
        sets,
    )
    record = run_record(
        start, settings, seed, {"sets": {str(p.resolve()): sha256_file(p) for p in sets}, "preferences": None}
    )
    accelerator = start_accelerator(settings, out, seed)
    main = accelerator.is_main_process
    device = str(accelerator.device)
    judge = load_judge(settings.judge, device=device, batch_size=settings.batch_size) if main else None  # type: ignore[arg-type]
    elm = load_policy(start)
    elm.to(accelerator.device)
    soft = ecg_token_estimate(elm)
    policy_sha = sha256_file(start.source / CONFIG_FILE)[:16]
    bounds = round_bounds(total, settings.rounds)
    step = rd.checkpoints(out)[-1][0] if inputs.resume and rd.checkpoints(out) else 0
    if not inputs.resume and main:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    def reference() -> Any:
        """The starting checkpoint: the policy itself before any update, else read again from its files."""
        if step == 0:
            return elm
        model = load_elm(start.source)
        model.processor.retrieval = start.retrieval
        return model

    def stage(folder: Path, questions: Questions, index: int) -> dict[str, Any]:
        if (folder / PREFERENCES_FILE).is_file() and (folder / ROUND_FILE).is_file():
            return read_round(folder)  # judged before a resume
        if index and step != bounds[index - 1]:
            raise UserError(
                f"{out} has checkpoints of round {index} but not its pairs: the run folder is damaged"
            )
        console.print(
            f"round {index}/{settings.rounds}: " if index else "validation pairs: ",
            f"{settings.candidates} sampled answers to each question of {len(questions.dataset)} "
            "conversations, then the judge",
            sep="",
        )
        return sample_and_judge(
            elm, questions, folder, judge=judge, settings=settings, seed=seed, stage=index,
            policy_id=f"{start.source.resolve()}#{policy_sha}+online-dpo@{step}",
            accelerator=accelerator,
        )  # fmt: skip

    val_dir = out / ONLINE_DIR / "val"
    if step and not (val_dir / PREFERENCES_FILE).is_file():
        raise UserError(f"{out} has checkpoints but no validation pairs: the run folder is damaged")
    if step:  # a resumed run samples its next round from the policy it had then
        load_trained_parts(elm, rd.step_dir(out, step))
    val_summary = stage(val_dir, val_questions, 0)
    val_set = _pairs(val_dir, start, elm, settings)
    _check_lengths(val_set, val_set.lengths(soft), "validation")
    cached_reference(
        val_dir / REFERENCE_FILE, {"val": val_set}, reference, sha256_file(val_dir / PREFERENCES_FILE),
        settings, accelerator,
    )  # fmt: skip
    report_unusable({"validation": val_set})

    summaries: list[dict[str, Any]] = []
    result = None
    for r in range(1, settings.rounds + 1):
        folder = out / ONLINE_DIR / f"round-{r}"
        if step >= bounds[r]:  # trained before a resume
            summaries.append(read_round(folder))
            continue
        train_questions.dataset.order = every_train_conversation  # each round draws from all of them
        draw(train_questions.dataset, settings.conversations_per_round, seed, r)
        summaries.append(stage(folder, train_questions, r))
        train_set = _pairs(folder, start, elm, settings)
        train_lengths = train_set.lengths(soft)
        _check_lengths(train_set, train_lengths, "training")
        cached_reference(
            folder / REFERENCE_FILE, {"train": train_set}, reference, sha256_file(folder / PREFERENCES_FILE),
            settings, accelerator,
        )  # fmt: skip
        report_unusable({"training": train_set})
        updates_per_epoch = updates_in_an_epoch(
            len(train_set), f"round-{r} pairs", settings, accelerator.num_processes
        )
        result = optimize(
            Job(
                out=out,
                resume=step > 0,
                record={**record, "elm_config": elm.config.model_dump(mode="json")},
                data_info={"val": val_summary, "rounds": summaries},
                elm=elm,
                objective=PreferenceObjective(settings),
                train_examples=train_set,
                train_lengths=train_lengths,
                val_examples=val_set,
                settings=settings,
                seed=seed,
                total=total,
                updates_per_epoch=updates_per_epoch,
                tracker_config={
                    "paradigm": "dpo-online",
                    "lr": settings.lr,
                    "beta": settings.beta,
                    "seed": seed,
                },
                first=bounds[r - 1],
                stop=bounds[r],
            ),
            accelerator,
        )
        step = result.steps
        if result.stopped_early:
            break
    if result is None:
        raise UserError(f"{out} finished all {settings.rounds} rounds already")
    return result


__all__ = ["decoding_seed", "round_bounds", "train_online_dpo"]

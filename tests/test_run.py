"""``ecgbench run``: recipes run stage after stage from a cache keyed by their inputs and settings; grids.

The quickstart test runs the packaged recipe once (fewer training steps than shipped) and checks every
artefact, that a second run skips every stage, and the plan after a changed setting; the grid tests run a
small real recipe (the bundled sample prepared, mapped, split, sampled and tokenised per seed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgbench.cli import app

runner = CliRunner()


def _recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(f'[vars]\nout = "{tmp_path}"\n' + body)
    return path


def _plan(output: str) -> dict[str, str]:
    """``--dry-run`` output -> {stage id: "cached" | "runs: why"}."""
    plan = {}
    for line in output.splitlines():
        match = re.match(r"^(runs|cached|skip)\s+(\S+?)(?::\s(.*))?$", line)
        if match:
            verdict, name, why = match.groups()
            plan[name] = verdict + (f": {why}" if why and verdict != "cached" else "")
    return plan


def _summary(stderr: str) -> tuple[int, int]:
    match = re.search(r"done: (\d+) stage\(s\) ran, (\d+) cached", stderr)
    assert match, stderr
    return int(match.group(1)), int(match.group(2))


FAILING = '[[stages]]\nname = "fails"\ncommand = ["config", "show", "--format", "xml"]\n'


def test_stages_run_in_order_and_a_failure_stops_the_run(tmp_path: Path) -> None:
    body = '[[stages]]\nname = "show"\ncommand = "config show --format json"\n' + FAILING
    result = runner.invoke(app, ["run", str(_recipe(tmp_path, body))])
    assert result.exit_code == 2
    assert '"num_merges"' in result.stdout  # the first stage ran
    assert "stage 'fails' failed" in result.stderr


def test_outputs_the_recipe_did_not_make_are_refused_and_kept(tmp_path: Path) -> None:
    (tmp_path / "done.txt").write_text("mine")
    body = FAILING + 'creates = ["{out}/done.txt"]\n'
    result = runner.invoke(app, ["run", str(_recipe(tmp_path, body))])
    assert result.exit_code == 2
    assert "done.txt exists but this recipe did not make it" in result.stderr
    assert (tmp_path / "done.txt").read_text() == "mine"
    forced = runner.invoke(app, ["run", str(_recipe(tmp_path, body)), "--force"])
    assert forced.exit_code == 2 and (tmp_path / "done.txt").read_text() == "mine"


def test_from_and_dry_run(tmp_path: Path) -> None:
    body = FAILING + '[[stages]]\nname = "show"\ncommand = "config show"\n'
    recipe = str(_recipe(tmp_path, body))
    assert runner.invoke(app, ["run", recipe, "--from", "show"]).exit_code == 0
    dry = runner.invoke(app, ["run", recipe, "--dry-run"])
    assert dry.exit_code == 0
    assert _plan(dry.stdout) == {
        "fails": "runs: no 'creates': runs every time",
        "show": "runs: no 'creates': runs every time",
    }
    assert "2 to run, 0 cached" in dry.stdout
    assert _plan(runner.invoke(app, ["run", recipe, "--dry-run", "--from", "show"]).stdout)[
        "fails"
    ].startswith("skip")
    bad = runner.invoke(app, ["run", recipe, "--from", "train"])
    assert bad.exit_code == 2
    assert "--from" in bad.stderr


def test_stage_that_does_not_create_its_output_fails_and_runs_again(tmp_path: Path) -> None:
    body = '[[stages]]\nname = "show"\ncommand = "config show"\ncreates = "{out}/never.txt"\n'
    result = runner.invoke(app, ["run", str(_recipe(tmp_path, body))])
    assert result.exit_code == 2
    assert "did not create" in result.stderr
    record = json.loads((tmp_path / ".stages" / "show.json").read_text())
    assert record["status"] == "running"  # never "done": the next run runs it again
    dry = runner.invoke(app, ["run", str(_recipe(tmp_path, body)), "--dry-run"])
    assert _plan(dry.stdout) == {"show": "runs: did not finish last time"}


def test_bad_recipes(tmp_path: Path) -> None:
    cases = {
        '[[stages]]\nname = "a"\ncommand = "config show {nope}"\n': "unknown variable {nope}",
        '[[stages]]\nname = "a"\ncommand = "config show {cell}"\n': "{cell} names a grid cell",
        '[[stages]]\ncommand = "config show"\n': "needs a name",
        '[[stages]]\nname = "a"\ncommand = "x"\nwhen = 1\n': "unknown key",
        '[[stages]]\nname = "a"\ncommand = "config show"\n[[stages]]\nname = "a"\ncommand = "x"\n': "unique",
        "[[stages\n": "not valid TOML",
        '[[stages]]\nname = "a"\ncommand = "config show"\ncreates = [1]\n': "'creates' must be",
        '[[stages]]\nname = "a"\ncommand = "config show"\ninputs = {a = 1}\n': "'inputs' must be",
        '[[stages]]\nname = "a"\ncommand = "config show"\ngather = "yes"\n': "'gather' must be true or false",
        "[axes]\nseed = []\n[[stages]]\nname = 'a'\ncommand = 'config show {seed}'\n": "'seed' has no values",
        "[axes]\nseed = 3\n[[stages]]\nname = 'a'\ncommand = 'config show'\n": "axis 'seed' must be a list",
        "[axes]\nout = [1]\n[[stages]]\nname = 'a'\ncommand = 'config show'\n": "also a variable name",
        "[axes]\ns = [1, 2]\n[[stages]]\nname = 'a'\ngather = true\ncommand = 'config show'\n"
        "creates = '{out}/{s}.txt'\n": "a gather stage runs once",
        "[axes]\ns = [1, 2]\n[[stages]]\nname = 'a'\ncommand = 'config show {s}'\n"
        "creates = '{out}/same.txt'\n": "creates",
        '[[stages]]\nname = "a"\ncommand = "config show"\ncreates = "{out}/d/x"\n'
        '[[stages]]\nname = "b"\ncommand = "config show"\ncreates = "{out}/d"\n': "of the earlier stage a",
        '[[stages]]\nname = "a"\ncommand = "config show"\ncreates = "{out}"\n': "holds the stage records",
        "": "no [[stages]]",
    }
    for body, message in cases.items():
        result = runner.invoke(app, ["run", str(_recipe(tmp_path, body))])
        assert result.exit_code == 2, body
        assert message in result.stderr, (body, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 or "Traceback" not in result.output, result.stderr
    assert "recipe not found" in runner.invoke(app, ["run", str(tmp_path / "x.toml")]).stderr
    # Valid TOML of the wrong shape (written without the [vars] table that _recipe adds).
    wrong_shapes = {
        'vars = 3\n[[stages]]\nname = "a"\ncommand = "config show"\n': "[vars] must be a table",
        'stages = "config show"\n': "must be [[stages]] tables",
        '[[stages]]\nname = "a"\ncommand = "config show"\ncreates = "x"\n': "define [vars] out",
        '[vars]\na = "{b}"\nb = "{a}"\n[[stages]]\nname = "s"\ncommand = "config show {a}"\n': "to itself",
    }
    for body, message in wrong_shapes.items():
        path = tmp_path / "shape.toml"
        path.write_text(body)
        result = runner.invoke(app, ["run", str(path)])
        assert result.exit_code == 2, body
        assert message in result.stderr, (body, result.stderr)


def test_set_overrides_a_variable(tmp_path: Path) -> None:
    body = '[[stages]]\nname = "show"\ncommand = "config show --format {fmt}"\n'
    path = tmp_path / "r.toml"
    path.write_text('[vars]\nfmt = "xml"\n' + body)
    assert runner.invoke(app, ["run", str(path)]).exit_code == 2
    result = runner.invoke(app, ["run", str(path), "--set", "fmt=json"])
    assert result.exit_code == 0
    assert runner.invoke(app, ["run", str(path), "--set", "fmt"]).exit_code == 2


def test_packaged_recipes_are_found_by_name_and_listed() -> None:
    from ecgbench.run import load_recipe, packaged_recipes

    assert "quickstart" in packaged_recipes()
    listed = runner.invoke(app, ["run", "--list"])
    assert listed.exit_code == 0, listed.output
    names = [line.split("  ")[0] for line in listed.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == list(packaged_recipes())  # one line each, by name
    assert "\nquickstart  Prepare every bundled" in listed.stdout and "ECG-Byte tokenizer" in listed.stdout
    dry = runner.invoke(app, ["run", "quickstart", "--dry-run", "--set", "out=elsewhere"])
    assert dry.exit_code == 0, dry.output
    stages = [s.name for s in load_recipe(packaged_recipes()["quickstart"]).stages]
    assert list(_plan(dry.stdout)) == stages
    assert "ecgbench data prepare sample --out elsewhere/store" in " ".join(dry.stdout.split())


def test_a_file_beats_a_packaged_name_and_unknown_names_list_the_packaged_ones(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").write_text('[[stages]]\nname = "mine"\ncommand = "config show"\n')
    result = runner.invoke(app, ["run", "quickstart", "--dry-run"])
    assert result.exit_code == 0 and "mine" in result.stdout
    missing = runner.invoke(app, ["run", "quickstrat"])
    assert missing.exit_code == 2
    assert "recipe not found: quickstrat" in missing.stderr and "quickstart" in missing.stderr
    bare = runner.invoke(app, ["run"])
    assert bare.exit_code == 2 and "--list" in bare.stderr


# ------------------------------------------------------------------------------------- quickstart

# The shipped recipe with fewer training steps, so the suite stays quick; every stage still runs.
QUICK = ["--set", "steps=10", "--set", "encoder_steps=10", "--set", "max_new_tokens=8"]


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """One run of the packaged quickstart recipe: its run folder and what it printed (stdout, stderr)."""
    out = tmp_path_factory.mktemp("quickstart") / "run"
    result = runner.invoke(app, ["run", "quickstart", "--set", f"out={out}", *QUICK])
    assert result.exit_code == 0, result.output
    return out, result.stdout, result.stderr


def test_quickstart_makes_every_artefact_and_a_second_run_skips_every_stage(
    quickstart: tuple[Path, str, str],
) -> None:
    out, printed, log = quickstart
    expected = [
        "store/manifest.json",
        "sets/labels.parquet",
        "splits/splits.parquet",
        "splits/labels.parquet",
        "stats/stats.json",
        "ecg_ptbxl_1.png",
        "tokenizer_sample.npy",
        "tokenizer.json",
        "token_lengths.png",
        "encoder_st-mem/encoder/model.safetensors",
        "elm_end2end/best/elm_config.json",
        "elm_scratch/best/elm_config.json",
        *(
            f"eval_{m}/{e}/{f}"
            for m in ("end2end", "scratch")
            for e in ("real", "shuffled")
            for f in ("predictions.jsonl", "results.json", "samples.jsonl")
        ),
        "eval_end2end/compare.json",
        "eval_scratch/compare.json",
        "report/report.json",
        "report/metrics.png",
        "report/ecg_reliance.png",
    ]
    assert [p for p in expected if not (out / p).is_file()] == []
    report = json.loads((out / "report" / "report.json").read_text())
    runs = [(r["name"].rsplit("/", 2)[-2], r["ecg_mode"]) for r in report["runs"]]
    assert runs == [(m, e) for m in ("eval_end2end", "eval_scratch") for e in ("real", "shuffled")]
    assert len(report["ecg_reliance"]) == 2  # real against shuffled, for each model
    assert "ECG reliance of" in printed  # the report's tables were printed
    assert printed.rstrip().endswith(f"{out}/report/ecg_reliance.png")  # it ends with where they are
    ran, cached = _summary(log)
    assert (ran, cached) == (20, 0)
    records = {p.name: json.loads(p.read_text()) for p in (out / ".stages").glob("*.json")}
    assert len(records) == 20 and {r["status"] for r in records.values()} == {"done"}

    again = runner.invoke(app, ["run", "quickstart", "--set", f"out={out}", *QUICK])
    assert again.exit_code == 0, again.output
    assert _summary(again.stderr) == (0, 20)
    assert again.stderr.count("cached (same inputs and settings)") == 20
    # Nothing was written again: the records are those of the first run.
    assert {p.name: json.loads(p.read_text()) for p in (out / ".stages").glob("*.json")} == records

    # A changed answer length affects generation and what reads its answers; training stays cached.
    dry = runner.invoke(
        app, ["run", "quickstart", "--set", f"out={out}", *QUICK, "--set", "max_new_tokens=4", "--dry-run"]
    )
    assert dry.exit_code == 0, dry.output
    plan = _plan(dry.stdout)
    rerun = {name for name, verdict in plan.items() if verdict.startswith("runs")}
    assert rerun == {
        "generate-end2end", "generate-scratch", "report",
        *(f"{step}-{m}{mode}" for m in ("end2end", "scratch") for step, mode in
          (("evaluate", "-real"), ("evaluate", "-shuffled"), ("compare", ""))),
    }  # fmt: skip
    assert plan["generate-end2end"] == "runs: setting changed: --max-new-tokens 8 -> 4"
    assert plan["evaluate-end2end-real"] == "runs: input changed: generate-end2end runs again"
    assert plan["train-end2end"] == "cached"


# ------------------------------------------------------------------------------------------ grids

GRID = """
[vars]
out = "{out}"
folds = 5
merges = 50

[axes]
seed = [0, 1]

[[stages]]
name = "prepare"
command = "data prepare sample --out {{out}}/store"
creates = "{{out}}/store"

[[stages]]
name = "map"
command = "data map labels --store {{out}}/store --out {{out}}/sets"
creates = "{{out}}/sets"

[[stages]]
name = "split"
command = '''data split --store {{out}}/store --sets {{out}}/sets/labels.parquet --folds {{folds}}
             --seed {{seed}} --out {{out}}/{{cell}}/splits'''
creates = "{{out}}/{{cell}}/splits"

[[stages]]
name = "sample"
command = '''data sample --store {{out}}/store --splits {{out}}/{{cell}}/splits/splits.parquet --split train
             --sample-size 12 --clusters 3 --seed {{seed}} --out {{out}}/{{cell}}/sample.parquet
             --npy {{out}}/{{cell}}/sample.npy'''
creates = ["{{out}}/{{cell}}/sample.parquet", "{{out}}/{{cell}}/sample.npy"]

[[stages]]
name = "tokenizer"
command = '''tokenizer train --npy {{out}}/{{cell}}/sample.npy --num-merges {{merges}}
             --out {{out}}/{{cell}}/tokenizer.json'''
creates = "{{out}}/{{cell}}/tokenizer.json"

[[stages]]
name = "stats"
gather = true
command = "data stats --store {{out}}/store --sets {{out}}/{{cell}}/splits/labels.parquet --out {{out}}/stats"
creates = "{{out}}/stats/stats.json"
"""


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(GRID.format(out=tmp_path / "run"))
    return path


def test_a_grid_shares_its_common_stages_and_reruns_only_what_a_change_affects(grid: Path) -> None:
    out = grid.parent / "run"
    dry = runner.invoke(app, ["run", str(grid), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "cell 1: seed=0" in dry.stdout and "cell 2: seed=1" in dry.stdout
    plan = _plan(dry.stdout)
    assert list(plan) == [
        "prepare", "map", "split[seed=0]", "split[seed=1]", "sample[seed=0]", "sample[seed=1]",
        "tokenizer[seed=0]", "tokenizer[seed=1]", "stats",
    ]  # fmt: skip
    assert plan["prepare"] == "runs: never ran; shared by 2 cells"
    # The gather stage reads every cell's conversation set, each with its flag.
    assert f"--sets {out}/seed=0/splits/labels.parquet --sets {out}/seed=1/splits/labels.parquet" in " ".join(
        dry.stdout.split()
    )

    first = runner.invoke(app, ["run", str(grid)])
    assert first.exit_code == 0, first.output
    assert _summary(first.stderr) == (9, 0)
    assert first.stderr.count("why: never ran") == 9  # prepare and map ran once for both cells
    assert (out / "seed=0" / "tokenizer.json").is_file() and (out / "seed=1" / "tokenizer.json").is_file()
    stats = json.loads((out / "stats" / "stats.json").read_text())
    assert len(stats["sets"]) == 2, stats.keys()

    # The split's folds feed every later per-cell stage and the gather; prepare and map stay cached.
    changed = runner.invoke(app, ["run", str(grid), "--set", "folds=4"])
    assert changed.exit_code == 0, changed.output
    assert _summary(changed.stderr) == (7, 2)
    assert "why: setting changed: --folds 5 -> 4" in changed.stderr
    assert "skip prepare: cached" in changed.stderr and "skip map: cached" in changed.stderr
    # A new axis value is a new cell: only it (and the gather) runs.
    wider = runner.invoke(app, ["run", str(grid), "--set", "folds=4", "--set", "seed=0,1,2", "--dry-run"])
    assert wider.exit_code == 0, wider.output
    assert sorted(k for k, v in _plan(wider.stdout).items() if v.startswith("runs")) == [
        "sample[seed=2]", "split[seed=2]", "stats", "tokenizer[seed=2]"
    ]  # fmt: skip
    forced = _plan(runner.invoke(app, ["run", str(grid), "--set", "folds=4", "--force", "--dry-run"]).stdout)
    assert len(forced) == 9 and all(v.startswith("runs: forced (--force)") for v in forced.values())

    # A declared input that no stage makes is keyed by its content, not its modification time.
    external = grid.parent / "external.npy"
    external.write_bytes((out / "seed=0" / "sample.npy").read_bytes())
    recipe = _recipe(
        grid.parent / "run",
        f'[[stages]]\nname = "tok"\ninputs = "{external}"\ncommand = "tokenizer train --npy {external} '
        '--num-merges 20 --out {out}/tok.json"\ncreates = "{out}/tok.json"\n',
    )
    assert _summary(runner.invoke(app, ["run", str(recipe)]).stderr) == (1, 0)
    external.write_bytes(external.read_bytes())  # touched: same bytes, new modification time
    assert _plan(runner.invoke(app, ["run", str(recipe), "--dry-run"]).stdout) == {"tok": "cached"}
    external.write_bytes((out / "seed=1" / "sample.npy").read_bytes())
    assert _plan(runner.invoke(app, ["run", str(recipe), "--dry-run"]).stdout) == {
        "tok": f"runs: input changed: {external}"
    }


def test_grid_cells_run_alone_as_cluster_jobs_and_in_parallel(grid: Path) -> None:
    out = grid.parent / "run"
    only = runner.invoke(app, ["run", str(grid), "--only", "seed=1"])
    assert only.exit_code == 0, only.output
    assert _summary(only.stderr) == (5, 0)  # prepare, map and seed=1's three stages
    assert "not run stats: they gather every cell" in " ".join(only.stderr.split())
    assert not (out / "seed=0").exists()
    bad = runner.invoke(app, ["run", str(grid), "--only", "seed=7"])
    assert bad.exit_code == 2 and "no such cell (cells: seed=0, seed=1" in bad.stderr

    # Two cluster jobs after a change to the splits the gather reads: the first job finds seed=1's split
    # out of date, so it leaves the gather to the last job.
    job1 = runner.invoke(app, ["run", str(grid), "--set", "folds=4", "--cell", "1/2"])
    assert job1.exit_code == 0, job1.output
    assert "wait stats: runs once every cell has run" in " ".join(job1.stderr.split())
    assert not (out / "stats").exists()
    job2 = runner.invoke(app, ["run", str(grid), "--set", "folds=4", "--cell", "2/2"])
    assert job2.exit_code == 0, job2.output
    assert "why: setting changed: --folds 5 -> 4" in job2.stderr
    assert (out / "stats" / "stats.json").is_file()  # the last job to finish gathered
    assert "invalid value for --cell" in runner.invoke(app, ["run", str(grid), "--cell", "3/2"]).stderr

    # --jobs: the shared stages here, the cells as two processes, then the gather here.
    parallel = runner.invoke(app, ["run", str(grid), "--set", "folds=4", "--set", "merges=30", "--jobs", "2"])
    assert parallel.exit_code == 0, parallel.output
    assert parallel.stderr.count(": done in") == 2
    for cell in ("seed=0", "seed=1"):
        log = (out / ".stages" / "logs" / f"{cell}.log").read_text()
        assert "setting changed: --num-merges 50 -> 30" in log and "skip prepare: cached" in log
        assert json.loads((out / ".stages" / f"tokenizer[{cell}].json").read_text())["status"] == "done"
    again = runner.invoke(app, ["run", str(grid), "--set", "folds=4", "--set", "merges=30", "--dry-run"])
    assert "0 to run, 9 cached" in again.stdout
    assert (
        "give one of --only, --jobs and --cell"
        in runner.invoke(app, ["run", str(grid), "--jobs", "2", "--only", "seed=0"]).stderr
    )


# ------------------------------------------------------------------------------- axis-value variables

VALUED = """
[vars]
out = "{out}"

[axes]
fold = [1, 2]
[axes.representation.tokens]
paradigm = "end2end"
flags = ["--tokenizer", "{{out}}/fold={{fold}}/tokenizer.json"]
[axes.representation.image]
paradigm = "llava"
flags = ["--representation", "image", "--encoder", "siglip"]
[axes.representation.signal]
paradigm = "scratch"
flags = []

[[stages]]
name = "tokenizer"
command = "tokenizer train --npy x.npy --out {{out}}/fold={{fold}}/tokenizer.json"
creates = "{{out}}/fold={{fold}}/tokenizer.json"

[[stages]]
name = "train"
command = ["train", "{{paradigm}}", "--out", "{{out}}/{{cell}}/elm", "{{flags}}", "--lr", "1e-4"]
creates = "{{out}}/{{cell}}/elm"

[[stages]]
name = "by-paradigm"
command = ["config", "show", "--format", "{{paradigm}}"]
creates = "{{out}}/{{paradigm}}.txt"

[[stages]]
name = "report"
gather = true
command = ["infer", "report", "{{out}}/{{cell}}/elm", "--out", "{{out}}/report"]
"""


def _valued(tmp_path: Path, text: str = VALUED) -> Path:
    path = tmp_path / "valued.toml"
    path.write_text(text.format(out=tmp_path / "run"))
    return path


def test_axis_values_carry_variables_that_splice_and_bring_their_axes(tmp_path: Path) -> None:
    from ecgbench.run import build_plan, load_recipe

    recipe = load_recipe(_valued(tmp_path))
    out = tmp_path / "run"
    assert recipe.axes == {"fold": ["1", "2"], "representation": ["tokens", "image", "signal"]}
    plan = {inst.id: inst for inst in build_plan(recipe)}
    train = plan["train[fold=1,representation=tokens]"]
    assert train.command == [
        "train", "end2end", "--out", f"{out}/fold=1,representation=tokens/elm",
        "--tokenizer", f"{out}/fold=1/tokenizer.json", "--lr", "1e-4",
    ]  # fmt: skip
    signal = plan["train[fold=2,representation=signal]"].command
    assert signal == ["train", "scratch", "--out", f"{out}/fold=2,representation=signal/elm", "--lr", "1e-4"]
    image = plan["train[fold=1,representation=image]"].command
    assert image[-6:-2] == ["--representation", "image", "--encoder", "siglip"]
    # The tokens cell of a fold reads that fold's tokenizer (its flags name {fold}); the others read none.
    assert [i for i in plan if i.startswith("tokenizer")] == ["tokenizer[fold=1]", "tokenizer[fold=2]"]
    ids = list(plan)
    assert [ids[d] for d in train.deps] == ["tokenizer[fold=1]"]
    assert plan["train[fold=1,representation=image]"].deps == []
    # A stage using only {paradigm} uses the representation axis alone: once per value, shared by the folds.
    by_paradigm = [i for i in plan if i.startswith("by-paradigm")]
    assert by_paradigm == [f"by-paradigm[representation={r}]" for r in ("tokens", "image", "signal")]
    assert plan["by-paradigm[representation=image]"].cells == [1, 4]
    assert plan["report"].command.count("infer") == 1 and len(plan["report"].command) == 2 + 6 + 2

    chosen = ["--set", "representation=image,tokens"]
    dry = runner.invoke(app, ["run", str(_valued(tmp_path)), "--dry-run", *chosen])
    assert dry.exit_code == 0, dry.output
    text = " ".join(dry.stdout.split())
    assert "4 cell(s)" in text and "cell 1: fold=1,representation=image" in text
    tokenizer = f"{out}/fold={{fold}}/tokenizer.json"  # {fold}: filled per cell
    assert f"representation=tokens: paradigm=end2end; flags=[--tokenizer, {tokenizer}]" in text
    assert "representation=signal: paradigm=scratch; flags=[]" not in text  # not selected
    assert "shared by 2 cells" in text  # by-paradigm[representation=image]


def test_axis_value_variables_run(tmp_path: Path) -> None:
    body = (
        "[axes.fmt.j]\nflags = ['--format', 'json']\n[axes.fmt.t]\nflags = ['--format', 'toml']\n"
        '[[stages]]\nname = "show"\ncommand = ["config", "show", "{flags}"]\n'
    )
    result = runner.invoke(app, ["run", str(_recipe(tmp_path, body)), "--only", "fmt=j"])
    assert result.exit_code == 0, result.output
    assert '"num_merges"' in result.stdout


def test_bad_axis_value_variables(tmp_path: Path) -> None:
    base = "[[stages]]\nname = 's'\ncommand = ['config', 'show', '{p}']\n"
    cases = {
        "[axes.r.a]\np = 'x'\nq = 'y'\n[axes.r.b]\np = 'z'\n" + base: "axis 'r', value 'b' lacks ['q']",
        "[axes.r.a]\np = 'x'\n[axes.r.b]\np = 'z'\nq = 'y'\n" + base: "has ['q'], which 'a' does not",
        "[axes.r.a]\np = '{nope}'\n" + base: "axis r value a (p): unknown variable {nope}",
        "[axes.r.a]\np = {x = 1}\n" + base: "must be a table of NAME = string, number or list",
        "[axes.r.a]\nout = 'x'\n" + base: "variable 'out' of axis 'r' is also a [vars] name",
        "[axes.r.a]\np = ['x']\n" + base.replace("'{p}'", "'a{p}'"): "{p} is a list",
        "[axes.r.a]\np = 'x'\n[axes.s.b]\np = 'y'\n" + base: "'p' of axis 's' is also a variable of axis 'r'",
    }
    for body, message in cases.items():
        result = runner.invoke(app, ["run", str(_recipe(tmp_path, body)), "--dry-run"])
        assert result.exit_code == 2, body
        assert message in " ".join(result.stderr.split()), (body, result.stderr)
        assert "Traceback" not in result.output
    good = "[axes.r.a]\np = 'x'\n[axes.r.b]\np = 'y'\n" + base
    wrong_value = runner.invoke(app, ["run", str(_recipe(tmp_path, good)), "--dry-run", "--set", "r=a,c"])
    assert wrong_value.exit_code == 2 and "axis 'r' has no value 'c' (its values: a, b)" in wrong_value.stderr
    per_value = runner.invoke(app, ["run", str(_recipe(tmp_path, good)), "--dry-run", "--set", "p=z"])
    assert per_value.exit_code == 2 and "'p' is a variable of each value of axis 'r'" in per_value.stderr


def test_a_missing_input_stops_the_run_before_any_stage(tmp_path: Path) -> None:
    body = (
        f'[vars]\ncorpus = "{tmp_path}/absent"\n'
        '[[stages]]\nname = "first"\ncommand = "config show"\ncreates = "{out}/never.txt"\n'
        '[[stages]]\nname = "later"\ninputs = "{corpus}/db.csv"\ncommand = "config show"\n'
    )
    path = tmp_path / "r.toml"
    path.write_text(body.replace("[vars]\n", f'[vars]\nout = "{tmp_path}/run"\n', 1))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    message = f"stage later: input not found: {tmp_path}/absent/db.csv (give it with --set corpus=PATH)"
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "run" / ".stages").exists()  # the first stage did not run


def test_a_stage_only_for_some_axis_values(tmp_path: Path) -> None:
    from ecgbench.run import build_plan, load_recipe

    def with_only(value: str) -> str:
        line = f"only = {value}\n".replace("{", "{{").replace("}", "}}")
        return VALUED.replace('name = "tokenizer"\n', 'name = "tokenizer"\n' + line)

    recipe = _valued(tmp_path, with_only("{representation = ['tokens']}"))
    plan = {inst.id: inst for inst in build_plan(load_recipe(recipe))}
    tokenizers = [i for i in plan if i.startswith("tokenizer")]
    assert tokenizers == [f"tokenizer[fold={f},representation=tokens]" for f in (1, 2)]
    assert plan["tokenizer[fold=2,representation=tokens]"].cells == [3]
    ids = list(plan)
    deps = plan["train[fold=1,representation=tokens]"].deps
    assert [ids[d] for d in deps] == ["tokenizer[fold=1,representation=tokens]"]
    # Choosing other values leaves the stage out.
    narrow = build_plan(load_recipe(recipe, {"representation": "image"}))
    assert not [i for i in narrow if i.spec.name == "tokenizer"]
    for value, message in {
        "{seed = 1}": "'only' names 'seed', which is no axis",
        "{representation = 'video'}": "'only' gives axis 'representation' the value 'video'",
        "'tokens'": "'only' must be a table",
        "{representation = ['tokens', 'signal']}": "creates",  # one path for two cells
    }.items():
        result = runner.invoke(app, ["run", str(_valued(tmp_path, with_only(value))), "--dry-run"])
        assert result.exit_code == 2 and message in result.stderr, (value, result.stderr)

"""``ecgbench run``: recipes run stage after stage and resume where they stopped."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ecgbench.cli import app

runner = CliRunner()


def _recipe(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(f'[vars]\nout = "{tmp_path}"\n' + body)
    return path


FAILING = '[[stages]]\nname = "fails"\ncommand = ["config", "show", "--format", "xml"]\n'


def test_stages_run_in_order_and_a_failure_stops_the_run(tmp_path: Path) -> None:
    body = '[[stages]]\nname = "show"\ncommand = "config show --format json"\n' + FAILING
    result = runner.invoke(app, ["run", str(_recipe(tmp_path, body))])
    assert result.exit_code == 2
    assert '"num_merges"' in result.stdout  # the first stage ran
    assert "stage 'fails' failed" in result.stderr


def test_finished_stage_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "done.txt").write_text("x")
    body = FAILING + 'creates = ["{out}/done.txt"]\n'
    result = runner.invoke(app, ["run", str(_recipe(tmp_path, body))])
    assert result.exit_code == 0, result.output
    assert "outputs exist" in result.stderr
    forced = runner.invoke(app, ["run", str(_recipe(tmp_path, body)), "--force"])
    assert forced.exit_code == 2


def test_from_and_dry_run(tmp_path: Path) -> None:
    body = FAILING + '[[stages]]\nname = "show"\ncommand = "config show"\n'
    recipe = str(_recipe(tmp_path, body))
    assert runner.invoke(app, ["run", recipe, "--from", "show"]).exit_code == 0
    assert runner.invoke(app, ["run", recipe, "--dry-run"]).exit_code == 0
    bad = runner.invoke(app, ["run", recipe, "--from", "train"])
    assert bad.exit_code == 2
    assert "--from" in bad.stderr


def test_stage_that_does_not_create_its_output_fails(tmp_path: Path) -> None:
    body = '[[stages]]\nname = "show"\ncommand = "config show"\ncreates = "{out}/never.txt"\n'
    result = runner.invoke(app, ["run", str(_recipe(tmp_path, body))])
    assert result.exit_code == 2
    assert "did not create" in result.stderr


def test_bad_recipes(tmp_path: Path) -> None:
    cases = {
        '[[stages]]\nname = "a"\ncommand = "config show {nope}"\n': "unknown variable {nope}",
        '[[stages]]\ncommand = "config show"\n': "needs a name",
        '[[stages]]\nname = "a"\ncommand = "x"\nwhen = 1\n': "unknown key",
        '[[stages]]\nname = "a"\ncommand = "config show"\n[[stages]]\nname = "a"\ncommand = "x"\n': "unique",
        "[[stages\n": "not valid TOML",
        '[[stages]]\nname = "a"\ncommand = "config show"\ncreates = [1]\n': "'creates' must be",
        "": "no [[stages]]",
    }
    for body, message in cases.items():
        result = runner.invoke(app, ["run", str(_recipe(tmp_path, body))])
        assert result.exit_code == 2, body
        assert message in result.stderr, (body, result.stderr)
    assert "recipe not found" in runner.invoke(app, ["run", str(tmp_path / "x.toml")]).stderr
    # Valid TOML of the wrong shape (written without the [vars] table that _recipe adds).
    wrong_shapes = {
        'vars = 3\n[[stages]]\nname = "a"\ncommand = "config show"\n': "[vars] must be a table",
        'stages = "config show"\n': "must be [[stages]] tables",
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
    assert listed.stdout.startswith("quickstart ") and "ECG-Byte tokenizer" in listed.stdout
    dry = runner.invoke(app, ["run", "quickstart", "--dry-run", "--set", "out=elsewhere"])
    assert dry.exit_code == 0, dry.output
    stages = [s.name for s in load_recipe(packaged_recipes()["quickstart"])]
    for name in stages:
        assert name in dry.stderr
    assert "ecgbench data prepare sample --out elsewhere/store" in " ".join(dry.stderr.split())


def test_a_file_beats_a_packaged_name_and_unknown_names_list_the_packaged_ones(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").write_text('[[stages]]\nname = "mine"\ncommand = "config show"\n')
    result = runner.invoke(app, ["run", "quickstart", "--dry-run"])
    assert result.exit_code == 0 and "mine" in result.stderr
    missing = runner.invoke(app, ["run", "quickstrat"])
    assert missing.exit_code == 2
    assert "recipe not found: quickstrat" in missing.stderr and "quickstart" in missing.stderr
    bare = runner.invoke(app, ["run"])
    assert bare.exit_code == 2 and "--list" in bare.stderr

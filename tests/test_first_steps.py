"""A newcomer's first commands: defaults that follow the model's recipe, a --help that shows them, quiet logs
unless -v, commands that say what they wrote, install hints that name the smallest fix, one word per meaning."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import typer
from PIL import Image
from tests.clitools import assert_one_line_error, cli_inline
from typer.testing import CliRunner

from realfake.cli import app
from realfake.config import RunConfig
from realfake.errors import RealfakeError
from realfake.models import apply_recipe
from realfake.models.fast import RECIPE
from realfake.verbosity import configure, detail

COMMAND = typer.main.get_command(app)
EVERYDAY = ["--data", "--model", "--epochs", "--protocol", "--limit", "--out", "--device", "--seed", "--config",
            "--resume"]


def _commands(group: click.Group = COMMAND, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        if isinstance(cmd, click.Group):
            found.update(_commands(cmd, f"{prefix}{name} "))
        else:
            found[prefix + name] = cmd
    return found


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.stdout


def _captured_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> RunConfig:
    """The RunConfig `realfake train ARGS` hands to training (training itself replaced: no run is trained)."""
    import realfake.training

    seen: list[RunConfig] = []

    def fake_train(cfg: RunConfig) -> Path:
        seen.append(cfg)
        return tmp_path

    monkeypatch.setattr(realfake.training, "train", fake_train)
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    [cfg] = seen
    return cfg


# 1. defaults follow the model's recipe


@pytest.mark.parametrize(("args", "epochs"), [
    (["--model", "fast"], 3),
    (["--model", "fast", "--epochs", "10"], 10),  # given, even equal to the global default, it wins
    ([], 10),  # seed-resnet50: the notebook's 10
])
def test_epochs_follow_the_model_recipe_unless_given(monkeypatch, tmp_path, args, epochs):
    cfg = _captured_config(monkeypatch, tmp_path, *args)
    recipe = RECIPE if cfg.model == "fast" else {}
    resolved = apply_recipe(cfg, recipe)  # what training.train does once it has built the model
    assert resolved.epochs == epochs
    assert f"epochs: {epochs}\n" in resolved.to_yaml()  # and config.yaml records the value used


def test_no_training_option_has_a_cli_default_of_its_own(monkeypatch, tmp_path):
    """Every option left out reaches RunConfig unset, so the recipe (or config.yaml) can fill it."""
    cfg = _captured_config(monkeypatch, tmp_path, "--model", "fast")
    assert cfg.model_fields_set == {"model"}


@pytest.mark.parametrize("field", ["epochs", "batch_size", "lr", "augment", "tta", "threshold_policy"])
def test_help_states_each_recipe_default_as_the_code_has_it(field):
    option = next(p for p in COMMAND.commands["train"].params if p.name == field)  # type: ignore[attr-defined]
    fmt = "{:g}".format if field == "lr" else str
    seed_default = RunConfig.model_fields[field].default
    assert f"[default: the model's recipe: {fmt(RECIPE[field])} for fast, {fmt(seed_default)} for seed-resnet50]" \
        in option.help.replace("\\[", "[")


# 2. --help shows defaults


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_of_every_command_shows_its_default(name):
    cmd = _commands()[name]
    silent = []
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.hidden or p.name == "help" or p.required:
            continue
        if p.is_flag and not p.secondary_opts and not p.default:
            continue  # a plain switch, off unless given
        shown_by_typer = p.default is not None and p.show_default is not False
        if not shown_by_typer and "[default:" not in (p.help or "").replace("\\[", "["):
            silent.append(p.opts[0])
    assert not silent, f"realfake {name}: no default in --help for {silent}"


def test_help_text_in_brackets_reaches_the_screen():
    """typer reads help as Rich markup, where `[default: ...]` and `realfake[ray]` were tags that vanished."""
    assert "[default: the model's recipe: 3 for fast, 10 for seed-resnet50]" in _help("train")
    assert "pip install 'realfake[ray]'" in _help("predict")


# 7. smaller surfaces


def test_train_help_shows_the_everyday_options_first_and_the_rest_as_expert():
    params = [p for p in COMMAND.commands["train"].params if p.name != "help"]  # type: ignore[attr-defined]
    first = [p.opts[0] for p in params if getattr(p, "rich_help_panel", None) is None]
    assert first == EVERYDAY
    assert all(p.rich_help_panel.startswith("Expert") for p in params if p.opts[0] not in EVERYDAY)
    text = _help("train")
    assert text.index("--resume") < text.index("Expert") < text.index("--lr")


def test_workers_is_decode_workers_in_predict_and_server_workers_in_serve():
    options = {name: {o for p in cmd.params if not getattr(p, "hidden", False) for o in p.opts}
               for name, cmd in _commands().items()}
    assert "--decode-workers" in options["predict"] and "--server-workers" in options["serve"]
    assert not [name for name, opts in options.items() if "--workers" in opts]  # the old name shows nowhere


def test_the_old_workers_name_still_works_with_a_note(trained_run, tmp_path):
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "a.png")
    proc = cli_inline("predict", trained_run, tmp_path / "a.png", "--workers", 1, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "note: --workers is now --decode-workers" in proc.stderr
    assert json.loads(proc.stdout)["path"].endswith("a.png")
    both = cli_inline("predict", trained_run, tmp_path / "a.png", "--workers", 1, "--decode-workers", 2)
    assert_one_line_error(both, "give --decode-workers alone (--workers is its old name)")
    serve_both = cli_inline("serve", trained_run, "--workers", 2, "--server-workers", 3)
    assert_one_line_error(serve_both, "give --server-workers alone (--workers is its old name)")


# 3. quiet by default, details with -v


def test_details_show_only_with_verbose(monkeypatch, tmp_path):
    import realfake.training

    def fake_train(cfg: RunConfig) -> Path:
        detail("training threads: 1 of 2 (others busy)")
        print("test: accuracy 0.9", file=sys.stderr)
        return tmp_path

    monkeypatch.setattr(realfake.training, "train", fake_train)
    try:
        quiet = CliRunner().invoke(app, ["train"])
        loud = CliRunner().invoke(app, ["-v", "train"])
    finally:
        configure(False)
    assert quiet.exit_code == loud.exit_code == 0, quiet.output + loud.output
    assert "test: accuracy 0.9" in quiet.stderr and "training threads" not in quiet.stderr
    assert "test: accuracy 0.9" in loud.stderr and "training threads: 1 of 2" in loud.stderr


# 4. --out says what it wrote


def test_predict_out_ends_with_what_it_wrote(trained_run, tmp_path):
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "c.png").write_bytes(b"not an image")
    out = tmp_path / "rows.csv"
    proc = cli_inline("predict", trained_run, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png",
                      "--out", out, "--device", "cpu", "--decode-workers", 1)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"wrote 3 rows to {out} (2 images read, 1 unreadable)"
    assert len(out.read_text().splitlines()) == 1 + 3 and proc.stdout == ""


def test_report_says_what_it_wrote_and_gives_scripts_the_path(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    proc = cli_inline("report", run)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"wrote the report: {run / 'report.html'}"
    assert proc.stdout.strip() == str(run / "report.html")  # stdout is not a terminal here


# 5. missing packages name the smallest install


def test_parquet_without_pyarrow_asks_for_pyarrow_alone(monkeypatch, tmp_path):
    from realfake.predict import _pyarrow

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(RealfakeError) as e:
        _pyarrow()
    assert "pip install 'pyarrow>=14'" in str(e.value) and "realfake[ray]" not in str(e.value)
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'parquet = ["pyarrow>=14"]' in pyproject  # the extra the message names


# 6. make demo


def test_make_demo_prints_the_report_once_then_the_next_three_commands():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "realfake train --out runs/demo >/dev/null" in recipe  # the report's path: train's stderr line alone
    commands = [line for line in recipe.splitlines() if "@echo \"  $(BIN)/realfake " in line]
    assert [c.split("realfake ")[1].split()[0] for c in commands] == ["predict", "serve", "evaluate"]
    assert all("runs/demo" in c for c in commands) and "source $(BIN)/activate" in recipe

"""The docs site builds (strictly: a broken link or a missing page fails), its generated reference pages cover
the code, and the README stays short, holds the generated results table, and shows only command lines the CLI
accepts."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from tests.clitools import command_lines, parse_command_line

from realfake.cli import app
from realfake.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_LINES = 200


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install '.[docs]')")
    pytest.importorskip("material", reason="the docs extra is not installed (pip install '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _all_commands(group, prefix: str) -> list[tuple[str, object]]:
    """Every command of a click group, walked through its `commands` mapping (not the hook's list_commands)."""
    out = []
    for name, cmd in group.commands.items():
        out.append((f"{prefix} {name}", cmd))
        if hasattr(cmd, "commands"):
            out.extend(_all_commands(cmd, f"{prefix} {name}"))
    return out


def test_site_builds_strictly_with_every_page_in_the_nav(site):
    for page in ("index", "install/index", "guide/trust/index", "reference/cli/index", "reference/config/index",
                 "design/index", "performance/index"):
        assert (site / f"{page}.html").is_file(), page
    html = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in html and "fonts.gstatic.com" not in html  # theme.font: false


def test_cli_reference_lists_every_command_and_option(site):
    page = (site / "reference" / "cli" / "index.html").read_text()
    commands = _all_commands(typer.main.get_command(app), "realfake")
    assert {"realfake train", "realfake predict", "realfake zoo sample"} <= {name for name, _ in commands}
    for name, cmd in commands:
        assert f"<code>{name}</code>" in page, f"{name} is missing from the CLI reference"
        for param in cmd.params:
            for opt in (*param.opts, *param.secondary_opts):
                if opt.startswith("-"):
                    assert f"<code>{opt}</code>" in page, f"{name} {opt} is missing from the CLI reference"


def test_config_reference_lists_every_run_config_field(site):
    page = (site / "reference" / "config" / "index.html").read_text()
    assert RunConfig.model_fields
    for name, field in RunConfig.model_fields.items():
        assert f"<code>{name}</code>" in page, f"RunConfig.{name} is missing from the config reference"
        if field.description:
            first = re.sub(r"[<>&'\"`].*", "", field.description)[:30]
            assert first in page, f"RunConfig.{name}'s description is missing"


def test_reference_pages_follow_the_code():
    hooks = _hooks()
    cli = hooks.cli_reference()
    assert "## `realfake train`" in cli and "- `--data` (str)" in cli
    assert "`realfake predict [OPTIONS] RUN_DIR PATHS...`" in cli  # arguments named in the usage line
    config = hooks.config_reference()
    assert "- **`epochs`** (`int`, default `10`, `>= 1`)" in config


def test_readme_is_at_most_200_lines():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail to docs/"


def test_command_lines_are_found_with_comments_and_continuations():
    md = ("```bash\nrealfake train --out x   # a comment\n"
          "torchrun --nproc-per-node 2 -m realfake \\\n  predict r a.png\npip install x\n```\n"
          "realfake outside a block\n")
    assert command_lines(md) == [["train", "--out", "x"], ["predict", "r", "a.png"]]


def test_a_renamed_option_breaks_the_command_check():
    with pytest.raises(Exception, match="No such option"):
        parse_command_line(["train", "--data", "x.zip", "--epoch", "3"])
    with pytest.raises(Exception, match="valid integer"):
        parse_command_line(["train", "--epochs", "three"])
    with pytest.raises(ValueError, match="no command"):
        parse_command_line(["trian", "--data", "x.zip"])


@pytest.mark.parametrize("doc", ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))])
def test_documented_command_lines_parse(doc):
    lines = command_lines((REPO / doc).read_text())
    if doc == "README.md":
        assert len(lines) >= 6, "the README's six commands"
    for words in lines:
        try:
            parse_command_line(words)
        except Exception as e:  # the CLI's own usage error, with the line that caused it
            pytest.fail(f"{doc}: `realfake {shlex.join(words)}` does not parse: {e}")

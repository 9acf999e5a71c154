"""The results layout: every committed result indexed, every moved file found, new results named by suite,
machine, date and commit (benchmarks.common.result_path)."""

import re
from datetime import date

import pytest

from benchmarks import common

RESULTS = common.RESULTS


def test_the_index_lists_every_result_and_only_those():
    index = (RESULTS / "INDEX.md").read_text()
    listed = set(re.findall(r"\]\(([^)]+\.json)\)", index))
    on_disk = {p.relative_to(RESULTS).as_posix() for p in RESULTS.glob("**/*.json")}
    assert listed == on_disk
    assert all("/" in p for p in on_disk), "a result outside a suite's folder"


def test_every_moved_file_is_where_moves_says():
    repo = common.REPO
    moves = [line.split(" -> ") for line in (RESULTS / "MOVES.txt").read_text().splitlines()
             if " -> " in line and not line.startswith("#")]
    assert moves
    for old, new in moves:
        assert (repo / new).is_file(), new
        assert not (repo / old).exists(), old


def test_result_path_names_suite_machine_date_commit_and_never_overwrites(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "git_commit", lambda: "abc1234")
    monkeypatch.setenv("REALFAKE_BENCH_MACHINE", "Xeon AMX")
    today = f"{date.today():%Y-%m-%d}"
    first = common.result_path("serve", tmp_path)
    assert first == tmp_path / "serve" / f"xeon-amx-{today}-abc1234.json"
    first.parent.mkdir()
    first.write_text("{}")
    assert common.result_path("serve", tmp_path).name == f"xeon-amx-{today}-abc1234-2.json"
    assert common.result_path("serve", tmp_path, machine="h100", tag="loop").name == f"h100-{today}-abc1234-loop.json"


def test_git_commit_outside_a_checkout_is_nocommit(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(common.subprocess, "run", no_git)
    assert common.git_commit() == "nocommit"


@pytest.mark.parametrize("suite", ["bench", "generalization", "time-to-accuracy", "serve"])
def test_the_suites_that_back_the_readme_have_results(suite):
    assert list((RESULTS / suite).glob("*.json")), suite

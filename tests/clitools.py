"""Running the real `realfake` command from tests, and checking its one-line errors."""

import re
import shlex
import subprocess
import sys
import traceback

import pytest


def cli(*args, check=True, timeout=900):
    """Run `python -m realfake ARGS` in a child process; fail the test with its stderr if it fails and check."""
    proc = subprocess.run([sys.executable, "-m", "realfake", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"realfake {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def cli_inline(*args):
    """`realfake ARGS` run in this process through click's test runner, as subprocess.run would return it.

    For commands that fail early: starting a child Python and importing torch costs seconds a command on 2
    cores, and the one-line error comes from the same `friendly` wrapper either way (tests/test_cli.py keeps a
    real child process for the entry point itself). An exception that escaped the wrapper is returned as exit
    code 99 with its traceback on stderr, so that assert_one_line_error fails on it.
    """
    from typer.testing import CliRunner

    from realfake.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    stderr, code = result.stderr, result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
        code = 99
    return subprocess.CompletedProcess(list(args), code, result.stdout, stderr)


def assert_one_line_error(proc, text):
    """A user error: exit code 1, no traceback, and `text` in what was printed."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert text in proc.stderr, proc.stderr


def parse_command_line(words):
    """Parse (never run) `realfake WORDS...` as the CLI would, returning the resolved command's parameters.

    A renamed or misspelt command or option, a missing argument or a value of the wrong type raises the CLI's
    own usage error, so a command line written in the docs or a deploy file breaks a test when the CLI changes.
    """
    import typer

    from realfake.cli import app

    command, words, path = typer.main.get_command(app), list(words), ["realfake"]
    while hasattr(command, "list_commands"):  # a group (`realfake`, `realfake zoo`): resolve the sub-command
        if not words:
            raise ValueError(f"{' '.join(path)} needs a command")
        name = words.pop(0)
        sub = command.get_command(typer.Context(command, info_name=" ".join(path)), name)
        if sub is None:
            raise ValueError(f"{' '.join(path)} has no command {name!r}")
        command = sub
        path.append(name)
    with command.make_context(" ".join(path), words) as ctx:
        return ctx.params


def command_lines(markdown: str) -> list[list[str]]:
    """The words after `realfake` of each command line in the Markdown's fenced code blocks (comments dropped,
    backslash continuations joined)."""
    out = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if not (line.lstrip().startswith("realfake ") or " -m realfake " in line):
                continue  # prose in a block (a folder tree, a layout) is not shell
            words = shlex.split(line, comments=True)
            if "-m" in words and words[words.index("-m") + 1 :][:1] == ["realfake"]:  # torchrun ... -m realfake
                words = words[words.index("-m") + 1 :]
            if words[:1] == ["realfake"]:
                out.append(words[1:])
    return out

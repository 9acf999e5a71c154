"""The scheduler examples under deploy/: valid syntax, and a `realfake train` command line realfake accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from tests.clitools import parse_command_line

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _train_args_parse(args: list[str]) -> None:
    """Parse (never run) the options after `realfake train`, as the CLI would: a typo fails here."""
    assert parse_command_line(["train", *args])["model"] == "fast"


def test_kubeflow_pytorchjob_runs_realfake_under_torchrun():
    job = yaml.safe_load((DEPLOY / "kubeflow-pytorchjob.yaml").read_text())
    assert job["apiVersion"].startswith("kubeflow.org/") and job["kind"] == "PyTorchJob"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert set(specs) == {"Master", "Worker"}
    commands = [s["template"]["spec"]["containers"][0]["command"] for s in specs.values()]
    assert commands[0] == commands[1]  # every pod runs the same program; torchrun tells them apart
    cmd = commands[0]
    assert cmd[0] == "torchrun" and cmd[cmd.index("-m") + 1 : cmd.index("-m") + 3] == ["realfake", "train"]
    _train_args_parse(cmd[cmd.index("train") + 1 :])


def test_slurm_script_is_valid_bash_and_launches_torchrun():
    script = DEPLOY / "slurm-train.sbatch"
    text = script.read_text()
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(script)], check=True)
    assert "#SBATCH --nodes" in text and "srun" in text
    joined = text.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if "torchrun" in ln and "-m realfake train" in ln)
    words = shlex.split(line)
    assert "--rdzv-endpoint" in words and "--nnodes" in words
    args = [w.replace("$DATA", "data.zip").replace("$OUT", "runs/x") for w in words[words.index("train") + 1 :]]
    _train_args_parse(args)


def test_parsing_refuses_a_misspelt_option():
    with pytest.raises(Exception, match="No such option"):
        _train_args_parse(["--model", "fast", "--epoch", "3"])

"""benchmarks.conv_backward at a tiny size: both frameworks time every case, and the JSON and table hold them."""

import json
import math

import pytest

from benchmarks import conv_backward

pytestmark = pytest.mark.slow  # a benchmark's smoke run, not the product's behaviour


def test_every_case_is_timed_in_both_frameworks(tmp_path, capsys):
    path = conv_backward.main(["--batch", "2", "--repeat", "1", "--out-dir", str(tmp_path)])
    assert path.parent == tmp_path / "conv-backward"
    r = json.loads(path.read_text())
    assert r["complete"] is True
    cases = [conv_backward.BACKBONE, *conv_backward.LAYERS]
    frameworks = ["torch"]
    try:
        import tensorflow  # noqa: F401  # the bench extra, installed by `make test-slow`
        frameworks.append("tensorflow")
    except ImportError:
        assert r["tensorflow"] == {} and r["tensorflow_error"]
    for fw in frameworks:
        assert sorted(r[fw]) == sorted(cases), fw
        for case in cases:
            t = r[fw][case]
            assert math.isfinite(t["forward_ms"]) and t["forward_ms"] > 0
            assert math.isfinite(t["forward_backward_ms"]) and t["forward_backward_ms"] > 0
    out = capsys.readouterr().out
    assert all(f"| {case} |" in out for case in cases) and str(path) in out

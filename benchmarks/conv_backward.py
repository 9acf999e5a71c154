"""Why the Keras reference can train pathologically slowly: forward against forward + backward of ResNet50's
convolutions at 32x32 input, TensorFlow beside PyTorch, same shapes, same machine, one run.

At 32x32 ResNet50's last stages work on 2x2 and 1x1 maps. On some CPUs TensorFlow's kernels for the gradient
to a convolution's input at those shapes are far slower than its forward ones (measured on an AVX2-only AMD
EPYC, 2026-11-28: forward + backward of the whole backbone 32x its forward, of the last stage's convolutions
over 100x), while PyTorch's stay within the usual 2-4x (14x for one shape). Then `make bench`'s training ratios
measure TensorFlow's kernels on that CPU, not the notebook's pipeline; this benchmark shows
whether that is so on the machine at hand:

    python -m benchmarks.conv_backward            # writes benchmarks/results/conv-backward/MACHINE-DATE-COMMIT.json

TensorFlow runs in a child process (as benchmarks/run.py runs the reference), so the two never share threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, isa_line, machine_info, result_path, write_final

# name -> (in channels, out channels, kernel, stride, input side): the distinct convolutions of ResNet50's stages
# at 32x32 input (conv2 at 8x8 ... conv5 at 1x1), and "backbone" for the whole of it.
LAYERS: dict[str, tuple[int, int, int, int, int]] = {
    "conv2 3x3 64->64 @8x8": (64, 64, 3, 1, 8),
    "conv3 3x3 128->128 @4x4": (128, 128, 3, 1, 4),
    "conv4 3x3 256->256 @2x2": (256, 256, 3, 1, 2),
    "conv5 projection 1x1/2 1024->2048 @2x2": (1024, 2048, 1, 2, 2),
    "conv5 3x3 512->512 @1x1": (512, 512, 3, 1, 1),
    "conv5 1x1 512->2048 @1x1": (512, 2048, 1, 1, 1),
}
BACKBONE = "ResNet50 backbone @32x32"


def _time(fn: Callable[[], Any], repeat: int) -> float:
    """Milliseconds per call, after one warm-up call."""
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat * 1000


def _torch_case(m: Any, x: Any, repeat: int) -> dict[str, float]:
    """Forward alone, and forward + backward to the weights and to the input (as every layer but a net's first)."""
    import torch

    def fwd() -> None:
        with torch.no_grad():
            m(x)

    def fwd_bwd() -> None:
        m.zero_grad(set_to_none=True)
        x.grad = None
        m(x).float().mean().backward()

    return {"forward_ms": _time(fwd, repeat), "forward_backward_ms": _time(fwd_bwd, repeat)}


def torch_times(batch: int, repeat: int) -> dict[str, dict[str, float]]:
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    out: dict[str, dict[str, float]] = {}
    cases: dict[str, tuple[nn.Module, tuple[int, ...]]] = {
        BACKBONE: (torchvision.models.resnet50(weights=None), (batch, 3, 32, 32)),
    }
    for name, (c_in, c_out, k, s, side) in LAYERS.items():
        cases[name] = (nn.Conv2d(c_in, c_out, k, stride=s, padding=k // 2), (batch, c_in, side, side))
    for name, (m, shape) in cases.items():
        m.train()
        out[name] = _torch_case(m, torch.rand(shape, requires_grad=True), repeat)
    return out


def _tf_case(m: Any, x: Any, repeat: int) -> dict[str, float]:
    """As _torch_case, in TensorFlow (graph functions, as Keras' fit runs them)."""
    import tensorflow as tf

    m(x)  # builds the layer's weights

    @tf.function
    def fwd() -> Any:
        return m(x, training=True)

    @tf.function
    def fwd_bwd() -> Any:
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_mean(m(x, training=True))
        return tape.gradient(loss, [x, *m.trainable_variables])

    return {"forward_ms": _time(fwd, repeat), "forward_backward_ms": _time(fwd_bwd, repeat)}


def tf_times(batch: int, repeat: int) -> dict[str, dict[str, float]]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(0)
    out: dict[str, dict[str, float]] = {}
    cases: dict[str, tuple[Any, tuple[int, ...]]] = {
        BACKBONE: (keras.applications.ResNet50(include_top=False, weights=None, input_shape=(32, 32, 3)),
                   (batch, 32, 32, 3)),
    }
    for name, (c_in, c_out, k, s, side) in LAYERS.items():
        cases[name] = (layers.Conv2D(c_out, k, strides=s, padding="same"), (batch, side, side, c_in))
    for name, (m, shape) in cases.items():
        out[name] = _tf_case(m, tf.random.uniform(shape), repeat)
    return out


def table(results: dict[str, Any]) -> str:
    lines = ["| convolution | TF fwd ms | TF fwd+bwd ms | TF bwd/fwd | torch fwd ms | torch fwd+bwd ms | torch bwd/fwd "
             "| TF/torch fwd+bwd |", "|" + "---|" * 8]
    tf, pt = results["tensorflow"], results["torch"]
    for name in [BACKBONE, *LAYERS]:
        a, b = tf.get(name), pt[name]
        cells = [name]
        cells += ["n/a"] * 3 if a is None else [f"{a['forward_ms']:.1f}", f"{a['forward_backward_ms']:.1f}",
                                                 f"{a['forward_backward_ms'] / a['forward_ms']:.1f}x"]
        cells += [f"{b['forward_ms']:.1f}", f"{b['forward_backward_ms']:.1f}",
                  f"{b['forward_backward_ms'] / b['forward_ms']:.1f}x"]
        cells.append("n/a" if a is None else f"{a['forward_backward_ms'] / b['forward_backward_ms']:.1f}x")
        lines.append("| " + " | ".join(cells) + " |")
    m = results["machine"]
    lines.append(f"\nbatch {results['args']['batch']}, mean of {results['args']['repeat']} calls after a warm-up; "
                 f"machine: {m['cpu']} ({isa_line(m)}), {m['cores']} cores, "
                 f"load {m['load_average_start'][0]:.1f}; TensorFlow {results.get('tensorflow_version', 'n/a')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m benchmarks.conv_backward", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128, help="images per call (the notebook's batch)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per case, after one warm-up")
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="results folder (the JSON goes in its conv-backward/)")
    p.add_argument("--framework", choices=["both", "tf"], default="both", help=argparse.SUPPRESS)  # tf: the child
    a = p.parse_args(argv)
    if a.batch < 1 or a.repeat < 1:
        p.error("--batch and --repeat must be at least 1")
    if a.framework == "tf":
        import tensorflow as tf

        print(json.dumps({"version": tf.__version__, "times": tf_times(a.batch, a.repeat)}))
        sys.exit(0)
    started = datetime.now(timezone.utc)
    results: dict[str, Any] = {"date": started.isoformat(timespec="seconds"), "args": {"batch": a.batch,
                               "repeat": a.repeat}, "machine": machine_info()}
    child = subprocess.run(
        [sys.executable, "-m", "benchmarks.conv_backward", "--framework", "tf", "--batch", str(a.batch),
         "--repeat", str(a.repeat)], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    if child.returncode != 0:
        lines = (child.stderr.strip() or "no output").splitlines()
        results["tensorflow"], results["tensorflow_error"] = {}, lines[-1]
    else:
        got = json.loads(child.stdout.strip().splitlines()[-1])
        results["tensorflow"], results["tensorflow_version"] = got["times"], got["version"]
    results["torch"] = torch_times(a.batch, a.repeat)
    path = result_path("conv-backward", a.out_dir)
    return write_final(path, results, started, table(results))


if __name__ == "__main__":
    main()

"""seed-resnet50's training step with and without realfake's kernels: `python -m benchmarks.small_maps --out F`.

What it answers: how much of the step's speed comes from running convolutions on tiny maps as matrix products
(`realfake._kernels.small_maps`) and from the fused Adam, in fp32 and under bf16 autocast, on this machine. Each
setting is a bare training step (forward, BCE loss, backward, Adam) on random images at batch `--batch`, timed in
turn with the others (`--rounds`, best kept); and, layer by layer, the convolution against its product on the
shapes ResNet50 has at 32x32. Run it alone: the figures are ratios taken side by side in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import machine_info, result_path, write_final

# (in, out, kernel, stride, padding, map side): ResNet50 at 32x32 input, last two stages
LAYERS = [
    (512, 2048, 1, 1, 0, 1), (2048, 512, 1, 1, 0, 1), (512, 512, 3, 1, 1, 1),
    (1024, 2048, 1, 2, 0, 2), (512, 512, 3, 2, 1, 2), (256, 256, 3, 1, 1, 2), (256, 1024, 1, 1, 0, 2),
]
SETTINGS = [("conv", False), ("conv", True), ("small_maps", False), ("small_maps", True)]  # (kernels, fused Adam)


def _seconds(fn: Any, steps: int) -> float:
    fn()  # warm-up: oneDNN picks and caches its kernels on the first call of a shape
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / steps


def step_rates(batch: int = 128, steps: int = 3, rounds: int = 2) -> list[dict[str, Any]]:
    """Images/s of a bare seed-resnet50 training step for each (kernels, fused Adam, precision)."""
    from realfake._kernels.small_maps import small_map_kernels
    from realfake.models import build

    torch.manual_seed(0)
    model = build("seed-resnet50", "none").model.train().to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch) > 0.5).float()
    best: dict[tuple[str, bool, str], float] = {}
    for _ in range(rounds):
        for kernels, fused in SETTINGS:
            opt = torch.optim.Adam(model.parameters(), 1e-4, fused=fused)
            swap = small_map_kernels(model) if kernels == "small_maps" else contextlib.nullcontext()
            with swap:
                for precision in ("fp32", "bf16"):
                    def one_step(precision: str = precision, opt: torch.optim.Optimizer = opt) -> None:
                        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                            z = model(x)
                        loss = nn.functional.binary_cross_entropy_with_logits(z.float(), y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()

                    rate = batch / _seconds(one_step, steps)
                    key = (kernels, fused, precision)
                    best[key] = max(best.get(key, 0.0), rate)
    return [{"kernels": k, "fused_adam": f, "precision": p, "images_per_s": round(r, 1)}
            for (k, f, p), r in best.items()]


def layer_times(batch: int = 128, steps: int = 5) -> list[dict[str, Any]]:
    """Forward + backward ms of each LAYERS shape as a convolution and as realfake's product."""
    from realfake._kernels.small_maps import SmallMapConv2d

    rows = []
    for c_in, c_out, k, s, p, side in LAYERS:
        conv = nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=False)
        x = torch.randn(batch, c_in, side, side).contiguous(memory_format=torch.channels_last).requires_grad_()
        row: dict[str, Any] = {"shape": f"{c_in}->{c_out} {k}x{k} stride {s} on {side}x{side}"}
        for precision in ("fp32", "bf16"):
            for cls in (nn.Conv2d, SmallMapConv2d):
                conv.__class__ = cls

                def fwd_bwd(precision: str = precision, conv: nn.Module = conv, x: torch.Tensor = x) -> None:
                    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                        out = conv(x)
                    out.float().sum().backward()

                name = "conv" if cls is nn.Conv2d else "small_maps"
                row[f"{name}_{precision}_ms"] = round(1e3 * _seconds(fwd_bwd, steps), 2)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m benchmarks.small_maps", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting and round")
    p.add_argument("--rounds", type=int, default=2, help="rounds over the settings (the best counts)")
    p.add_argument("--out", type=Path, default=None,
                   help="the JSON file to write (default: results/small-maps/MACHINE-DATE-COMMIT.json)")
    args = p.parse_args(argv)
    args.out = args.out or result_path("small-maps")
    started = datetime.now(timezone.utc)
    steps = step_rates(args.batch, args.steps, args.rounds)
    base = {r["precision"]: r["images_per_s"] for r in steps if r["kernels"] == "conv" and not r["fused_adam"]}
    for r in steps:
        r["vs_conv_loop_adam_same_precision"] = round(r["images_per_s"] / base[r["precision"]], 2)
        r["vs_conv_loop_adam_fp32"] = round(r["images_per_s"] / base["fp32"], 2)
    results = {"date": started.isoformat(timespec="seconds"), "machine": machine_info(), "batch": args.batch,
               "training_step": steps, "layers_fwd_bwd": layer_times(args.batch, args.steps + 2)}
    for r in steps:
        print(f"{r['kernels']:>10} fused Adam {r['fused_adam']!s:>5} {r['precision']}: {r['images_per_s']:7.1f} img/s "
              f"({r['vs_conv_loop_adam_fp32']:.2f}x the convolutions + loop Adam in fp32)")
    return write_final(args.out, results, started)


if __name__ == "__main__":
    main()

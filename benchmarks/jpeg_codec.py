"""JPEG per image, Pillow against the paths realfake uses: `python -m benchmarks.jpeg_codec`.

- decoding a file (`realfake.data.images.decode_bytes`: a plain 32x32 JPEG through torchvision, else Pillow)
  against Pillow's path alone, the two timed in turn `--rounds` times (best round each);
- the training augmentation's round trip (realfake.data.batches.jpeg_roundtrip, torchvision's libjpeg calls)
  against Pillow's, and whether threads would help.

Prints one line per measurement and checks the outputs are bit-identical.
"""

from __future__ import annotations

import argparse
import io
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import DEFAULT_DATA


def main(argv: list[str] | None = None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from realfake.data import batches

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=4096, help="images (the zip's first JPEGs)")
    ap.add_argument("--threads", default="1,2,4,8,16", help="thread counts to share one call's images over")
    ap.add_argument("--rounds", type=int, default=5, help="decoding: rounds of each path, in turn")
    args = ap.parse_args(argv)
    with zipfile.ZipFile(args.data) as z:
        names = [n for n in z.namelist() if n.lower().endswith((".jpg", ".jpeg"))][: args.n]
        files = [z.read(n) for n in names]
    imgs = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files])
    decode_files(files, args.rounds)
    q = np.random.default_rng(0).integers(30, 96, len(imgs))  # the robust augmentation's quality range
    batches.jpeg_roundtrip(imgs[:64], q[:64])  # warm-up: imports, codec choice
    t = time.perf_counter()
    ref = np.stack([batches._pillow_roundtrip(torch.from_numpy(imgs[i]), int(q[i])) for i in range(len(imgs))])
    print(f"pillow: {(time.perf_counter() - t) / len(imgs) * 1e6:.1f} us/image")
    for th in (int(x) for x in args.threads.split(",")):
        chunks = np.array_split(np.arange(len(imgs)), th)
        with ThreadPoolExecutor(th) as pool:
            t = time.perf_counter()
            parts = list(pool.map(lambda c: batches.jpeg_roundtrip(imgs[c], q[c]), chunks))
            s = time.perf_counter() - t
        same = bool((np.concatenate(parts) == ref).all())
        print(f"realfake ({batches._jpeg_codec().__name__}), {th} thread(s): {s / len(imgs) * 1e6:.1f} us/image, "
              f"identical to pillow: {same}")


def decode_files(files: list[bytes], rounds: int) -> None:
    """Per-file decoding, realfake's `decode_bytes` against Pillow's path, timed in turn (best round of each)."""
    from realfake.data import images

    images.prepare_jpeg_decoding(images.FAST_JPEG_MIN_IMAGES)  # as a job that large would: the steady state
    paths = {"pillow": lambda d: images._decode_with_pillow(d, 32), "realfake": images.decode_bytes}
    best = dict.fromkeys(paths, float("inf"))
    for _ in range(rounds):
        for name, decode in paths.items():
            t = time.perf_counter()
            out = [decode(f) for f in files]
            best[name] = min(best[name], time.perf_counter() - t)
            if name == "pillow":
                ref = out
    same = all(np.array_equal(a, b) for a, b in zip(out, ref, strict=True))
    fast = sum(images._small_jpeg(f, 32) is not None for f in files)
    per = {k: v / len(files) * 1e6 for k, v in best.items()}
    print(f"decode: pillow {per['pillow']:.1f} us/file, realfake {per['realfake']:.1f} us/file "
          f"({per['pillow'] / per['realfake']:.2f}x; {fast} of {len(files)} through torchvision), identical: {same}")


if __name__ == "__main__":
    main()

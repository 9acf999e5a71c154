"""The training augmentation's JPEG round trip, per image: Pillow against the path realfake uses
(realfake.data.batches.jpeg_roundtrip, torchvision's libjpeg calls), and whether threads would help:
`python -m benchmarks.jpeg_codec`. Prints one line per measurement and checks the outputs are bit-identical.
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

from benchmarks.run import DEFAULT_DATA


def main(argv: list[str] | None = None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from realfake.data import batches

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=4096, help="images (the zip's first JPEGs)")
    ap.add_argument("--threads", default="1,2,4,8,16", help="thread counts to share one call's images over")
    args = ap.parse_args(argv)
    with zipfile.ZipFile(args.data) as z:
        names = [n for n in z.namelist() if n.lower().endswith((".jpg", ".jpeg"))][: args.n]
        imgs = np.stack([np.asarray(Image.open(io.BytesIO(z.read(n))).convert("RGB")) for n in names])
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


if __name__ == "__main__":
    main()

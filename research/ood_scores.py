"""PROTOTYPE, not product code: which out-of-distribution score flags the held-out generator's fakes that the
classifier calls REAL?

The `fast` model lets about half of ganC's fakes (a generator family it never saw) through as confident REALs.
This compares scores that could say "I don't know" instead, each thresholded so that 5% of the REAL
validation images (or all validation images, for the feature scores of the first table) are flagged:
- Mahalanobis distance (class-conditional, and one Gaussian for both classes) on pooled features of the stem,
  stage 1 (16x16), stage 2 (8x8) and the last stage (4x4, max+mean pooled as the head sees it), and sums of
  per-layer scores normalised by their validation medians;
- kNN: cosine distance to the k-th nearest training feature (all training images, k=10, last stage), and to
  REAL training images only (k = 1, 10, 50 on the last stage, stage 2 and stage 1);
- logit typicality: the logit itself against the REAL validation logits' 90th / 95th percentile, the idea
  that became the product's score (`realfake.calibration.Typicality`, per class and two-sided there).

Printed per score: the share of stand-in test REAL images flagged (in-distribution cost), of stand-in test
FAKE, of ganC fakes flagged, and of ganC fakes still confidently REAL (called REAL at the balanced threshold
and not flagged).

Run (from the repository root; trains `fast` first, a few minutes on 2 CPU cores, unless STATE holds weights):

    python -m research.ood_scores [LIMIT=30000] [STATE=path/to/weights.pt]

STATE, when given, caches the trained weights there (loaded if the file exists, else written after training).

Measured (the 30,000-image fast model of gen_sim.py's setting: stand-in subset, `--protocol official`,
3 epochs, threshold balanced on validation; ganC 2,000 fakes, of which 47.2% called REAL; 5% of REAL
validation images flagged by construction):
- Mahalanobis, any layer or combination: 0-0.5% of ganC fakes flagged, 47% stayed confidently REAL
  (while flagging 8-11% of REAL test images);
- kNN to all training features (last stage, k=10): 25% flagged, 27% confidently REAL;
- kNN to REAL training features on the pooled last stage, k=50: 81% flagged, 17% confidently REAL;
- logit typicality (REAL validation 95th percentile): 94.6% flagged, 5.4% confidently REAL, with 5.3% of
  REAL test images flagged.
Hence the product's score. Merged from two scratch scripts (the first table, then the REAL-only kNN and
logit rows); not re-run since it was copied here (imports checked against the current library).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import realfake.fit as fitmod
from realfake.calibration import calibrate
from realfake.config import RunConfig
from realfake.data.cache import Dataset, load_dataset
from realfake.data.splits import make_split
from realfake.data.tensors import eval_batches, to_device_uint8
from realfake.models import apply_recipe, build

DATA = Path(os.environ.get("REALFAKE_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


class Maha:
    """Mahalanobis distance to the nearest class mean (or to one mean), shared shrunk covariance."""

    def __init__(self, x: np.ndarray, y: np.ndarray, classes: bool = True) -> None:
        self.mu = [x[y == c].mean(0) for c in (0, 1)] if classes else [x.mean(0)]
        r = np.concatenate([x[y == c] - self.mu[c] for c in (0, 1)]) if classes else x - self.mu[0]
        cov = r.T @ r / len(r)
        cov = cov + 1e-3 * np.eye(x.shape[1]) * np.trace(cov) / x.shape[1]
        self.prec = np.linalg.inv(cov)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.min([np.einsum("ij,jk,ik->i", x - mu, self.prec, x - mu) for mu in self.mu], 0)


def knn(x_train: np.ndarray, k: int = 10) -> Callable[[np.ndarray], np.ndarray]:
    """Minus the cosine similarity to the k-th nearest training feature (higher = more atypical)."""
    n = x_train / np.linalg.norm(x_train, axis=1, keepdims=True)

    def score(x: np.ndarray) -> np.ndarray:
        q = x / np.linalg.norm(x, axis=1, keepdims=True)
        return -np.sort(q @ n.T, 1)[:, -k]

    return score


def trained_model(limit: int, state: Path | None) -> tuple[torch.nn.Module, dict[str, np.ndarray], Dataset]:
    cfg = RunConfig(model="fast", data=str(DATA / "standin-cifake.zip"), protocol="official", limit=limit, epochs=3,
                    device="cpu")
    ds = load_dataset(cfg.data, cfg.limit, cfg.seed, None, False)
    split = make_split(ds.labels, ds.splits, "official", cfg.seed)
    torch.manual_seed(cfg.seed)
    b = build("fast", "none")
    cfg = apply_recipe(cfg, b.recipe)
    m = b.model
    if state is not None and state.exists():
        m.load_state_dict(torch.load(state))
    else:
        t0 = time.time()
        with tempfile.TemporaryDirectory() as tmp:
            fitmod.fit(m, ds.images, ds.labels, split, cfg, Path(tmp), torch.device("cpu"), progress=False)
        print("train_s", time.time() - t0, flush=True)
        if state is not None:
            torch.save(m.state_dict(), state)
    return m.eval(), split, ds


def main(argv: list[str]) -> None:
    limit = int(argv[0]) if argv else 30000
    state = Path(argv[1]) if len(argv) > 1 else None
    torch.set_num_threads(2)
    m, split, ds = trained_model(limit, state)
    dev = torch.device("cpu")
    layers = {"stem": m.stem, "s1": m.stages[1], "s2": m.stages[3], "s3": m.stages[4]}

    @torch.inference_mode()
    def feats(x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Logits (flip TTA, as the fast recipe predicts) and pooled features of each layer."""
        out: dict[str, list[torch.Tensor]] = {k: [] for k in layers}
        zs = []
        cur: dict[str, torch.Tensor] = {}
        hooks = [
            layer.register_forward_hook(lambda mod, i, o, k=k: cur.__setitem__(k, o)) for k, layer in layers.items()
        ]
        imgs = to_device_uint8(np.asarray(x), dev)
        for xb in eval_batches(imgs, 1024):
            z = (m(xb) + m(xb.flip(3))) / 2
            m(xb)  # the hooks keep the unflipped image's features
            zs.append(z)
            for k in layers:
                o = cur[k].float()
                pooled = [o.amax((2, 3)), o.mean((2, 3))] if k == "s3" else [o.mean((2, 3)), o.std((2, 3))]
                out[k].append(torch.cat(pooled, 1))
        for h in hooks:
            h.remove()
        return torch.cat(zs).numpy().astype(np.float64), {k: torch.cat(v).numpy().astype(np.float64)
                                                          for k, v in out.items()}

    tr, va, te = split["train"][:20000], split["val"], split["test"]
    _, ftr = feats(ds.images[tr])
    ytr = ds.labels[tr]
    zva, fva = feats(ds.images[va])
    yva = ds.labels[va]
    zte, fte = feats(ds.images[te])
    yte = ds.labels[te]
    g = load_dataset(DATA / "ganC-fake.zip", None, 0, None, False)
    zg, fg = feats(g.images[:2000])
    cal = calibrate(zva, yva, "balanced", None, "flip")
    realte = yte == 0
    pg, pte = cal.p_fake(zg), cal.p_fake(zte)
    said_real_g = ~cal.is_fake(pg)
    print("ganC caught at threshold", 1 - said_real_g.mean(), "home acc", (cal.is_fake(pte) == (yte == 1)).mean())

    # Table 1: feature scores, 95th percentile of all validation images.
    scores: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for k in layers:
        scores[f"maha_{k}"] = Maha(ftr[k], ytr)
        scores[f"maha1_{k}"] = Maha(ftr[k], ytr, classes=False)
    scores["knn_s3"] = knn(ftr["s3"])
    rows = []
    for name, fn in scores.items():
        k = name.split("_")[1]
        sva, ste, sg = fn(fva[k]), fn(fte[k]), fn(fg[k])
        thr = np.quantile(sva, 0.95)
        rows.append((name, thr, (ste[realte] > thr).mean(), (ste[~realte] > thr).mean(), (sg > thr).mean(),
                     (said_real_g & (sg <= thr)).mean()))

    def combo(keys: list[str]) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        """Sum of per-layer Mahalanobis scores, each divided by its validation median."""
        ms = {k: Maha(ftr[k], ytr) for k in keys}
        sd = {k: np.median(ms[k](fva[k])) for k in keys}
        return lambda f: sum(ms[k](f[k]) / sd[k] for k in keys)

    for keys in (["stem", "s1"], ["stem", "s1", "s2", "s3"], ["s1", "s2"]):
        fn = combo(keys)
        sva, ste, sg = fn(fva), fn(fte), fn(fg)
        thr = np.quantile(sva, 0.95)
        rows.append(("combo_" + "+".join(keys), thr, (ste[realte] > thr).mean(), (ste[~realte] > thr).mean(),
                     (sg > thr).mean(), (said_real_g & (sg <= thr)).mean()))
    print("score, thr, REALtest flagged, FAKEtest flagged, ganC flagged, ganC confidently REAL")
    for r in rows:
        print(f"{r[0]:28s} {r[1]:10.2f} {r[2]:.3f} {r[3]:.3f} {r[4]:.3f} {r[5]:.3f}")

    # Table 2: thresholds from the REAL validation images only.
    rv = yva == 0

    def row(name: str, sva: np.ndarray, ste: np.ndarray, sg: np.ndarray, q: float = 0.95) -> None:
        thr = np.quantile(sva[rv], q)
        print(f"{name:28s} REALtest flagged {(ste[realte] > thr).mean():.3f}  FAKEtest flagged "
              f"{(ste[~realte] > thr).mean():.3f}  ganC flagged {(sg > thr).mean():.3f}  ganC confidently REAL "
              f"{(said_real_g & (sg <= thr)).mean():.3f}")

    row("logit-typ (REAL val q95)", zva, zte, zg)
    row("logit-typ (REAL val q90)", zva, zte, zg, q=0.90)
    for layer in ("s3", "s2", "s1"):
        for k in (1, 10, 50):
            f = knn(ftr[layer][ytr == 0][:10000], k)
            row(f"knnREAL_{layer}_k{k}", f(fva[layer]), f(fte[layer]), f(fg[layer]))


if __name__ == "__main__":
    main(sys.argv[1:])

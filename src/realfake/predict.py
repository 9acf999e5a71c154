"""Batch prediction over many files: decoding runs in worker processes while the model works on the
previous batch, and results stream out in input order, one per input, unreadable ones included; and the
rows `realfake predict` prints (JSON lines or CSV), and the Grad-CAM overlays `--explain` writes.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import re
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path, PurePosixPath
from typing import TextIO

import numpy as np
from tqdm import tqdm

from realfake.atomic import atomic_write_bytes
from realfake.data.images import BadImage, read_and_decode
from realfake.data.inputs import InputReader, InputRef, expand_inputs
from realfake.detector import Detector, Explanation, Prediction
from realfake.errors import RealfakeError

Decoded = list[tuple[np.ndarray | None, str | None]]


def decode_refs(refs: list[InputRef]) -> Decoded:
    """Decode a batch of inputs; a failure is a reason string in place of the image."""
    out: Decoded = []
    with InputReader() as reader:
        for ref in refs:
            try:
                out.append((read_and_decode(ref, reader.read), None))
            except BadImage as e:
                out.append((None, str(e)))
    return out


def _batched(refs: Iterable[InputRef], size: int) -> Iterator[list[InputRef]]:
    batch: list[InputRef] = []
    for r in refs:
        batch.append(r)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_paths(
    detector: Detector,
    paths: Iterable[str | os.PathLike[str]],
    *,
    batch_size: int = 256,
    threshold: float | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Iterator[Prediction]:
    """Predictions for every image under `paths` (files, folders, globs, zips), streamed in order."""
    refs = list(expand_inputs(paths))
    batches = list(_batched(refs, batch_size))
    workers = min(workers or os.cpu_count() or 1, len(batches))
    bar = tqdm(total=len(refs), unit="img", file=sys.stderr, disable=not progress or len(batches) < 2)
    pool: ProcessPoolExecutor | None = None
    if workers > 1:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
    try:
        pending: deque[tuple[list[InputRef], Future[Decoded] | Decoded]] = deque()
        queue = iter(batches)

        def submit() -> None:
            batch = next(queue, None)
            if batch is not None:
                pending.append((batch, pool.submit(decode_refs, batch) if pool else decode_refs(batch)))

        for _ in range(workers + 1):  # keep the workers busy while the model runs
            submit()
        while pending:
            batch, job = pending.popleft()
            decoded = job.result() if isinstance(job, Future) else job
            submit()
            yield from _predict_decoded(detector, batch, decoded, threshold)
            bar.update(len(batch))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _predict_decoded(
    detector: Detector, refs: list[InputRef], decoded: Decoded, threshold: float | None
) -> list[Prediction]:
    arrays, errors = zip(*decoded, strict=True) if decoded else ((), ())
    return detector.predictions([r.name for r in refs], arrays, errors, threshold)


def explain_paths(
    detector: Detector,
    paths: Iterable[str | os.PathLike[str]],
    out_dir: str | Path,
    *,
    batch_size: int = 256,
    threshold: float | None = None,
) -> Iterator[tuple[Prediction, Path | None]]:
    """Like predict_paths, plus a Grad-CAM overlay PNG written to out_dir for each readable image."""
    if not detector.can_explain:
        raise RealfakeError("explanations need the PyTorch run, not an ONNX file")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RealfakeError(f"--explain {out} is a file; give a folder")
    taken: set[str] = set()
    for batch in _batched(expand_inputs(paths), batch_size):
        arrays, errors = zip(*decode_refs(batch), strict=True)
        for ex in detector.explanations([r.name for r in batch], arrays, errors, threshold):
            yield ex.prediction, (save_overlay(ex, out, taken) if ex.ok else None)


def save_overlay(explanation: Explanation, out_dir: str | Path, taken: set[str] | None = None, size: int = 256) -> Path:
    """Write `<out_dir>/<stem>.cam.png` for one explanation; `taken` keeps stems unique across calls."""
    source = explanation.prediction.source
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", PurePosixPath(source.replace("\\", "/").split("::")[-1]).stem) or "image"
    name, n = stem, 1
    while taken is not None and name in taken:
        n += 1
        name = f"{stem}-{n}"
    if taken is not None:
        taken.add(name)
    out = Path(out_dir) / f"{name}.cam.png"
    atomic_write_bytes(out, explanation.overlay_png(size))
    return out


FORMATS = ("jsonl", "csv")
CSV_FIELDS = ["path", "p_fake", "label", "threshold", "ood", "error"]


def write_rows(
    results: Iterable[Prediction | tuple[Prediction, Path | None]], fmt: str, out: TextIO, with_heatmap: bool = False
) -> tuple[int, int]:
    """Write one row per result as it arrives (JSON lines or CSV, flushed), so a long run streams; returns
    (inputs seen, inputs read)."""
    if fmt not in FORMATS:
        raise RealfakeError(f"--format must be jsonl or csv; got {fmt!r}")
    seen = read = 0
    writer = None
    for r in results:
        pred, heatmap = r if isinstance(r, tuple) else (r, None)
        row = {"path": pred.source, **{k: v for k, v in pred.to_dict().items() if k != "source"}}
        if heatmap is not None:
            row["heatmap"] = str(heatmap)
        seen += 1
        read += pred.error is None
        if fmt == "jsonl":
            out.write(json.dumps(row) + "\n")
        else:
            if writer is None:
                fields = CSV_FIELDS + (["heatmap"] if with_heatmap else [])
                writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
                writer.writeheader()
            writer.writerow(row)
        out.flush()
    return seen, read

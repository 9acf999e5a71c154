"""Batch prediction over many files: decoding runs in worker processes while the model works on the
previous batch, and results stream out in input order, one per input, unreadable ones included.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from realfake.data.images import BadImage, decode_bytes
from realfake.data.inputs import InputReader, InputRef, expand_inputs
from realfake.detector import Detector, Prediction

Decoded = list[tuple[np.ndarray | None, str | None]]


def decode_refs(refs: list[InputRef]) -> Decoded:
    """Decode a batch of inputs; a failure is a reason string in place of the image."""
    out: Decoded = []
    with InputReader() as reader:
        for ref in refs:
            try:
                out.append((decode_bytes(reader.read(ref)), None))
            except BadImage as e:
                out.append((None, str(e)))
            except (OSError, KeyError, ValueError) as e:  # missing file, bad zip member, permissions
                out.append((None, f"unreadable file ({e.__class__.__name__}: {e})".replace("\n", " ")))
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
    from realfake.explain import save_overlay

    taken: set[str] = set()
    with InputReader() as reader:
        for batch in _batched(expand_inputs(paths), batch_size):
            data: list[bytes | None] = []
            errors: dict[int, str] = {}
            for i, ref in enumerate(batch):
                try:
                    data.append(reader.read(ref))
                except (OSError, KeyError, ValueError) as e:
                    data.append(None)
                    errors[i] = f"unreadable file ({e.__class__.__name__}: {e})".replace("\n", " ")
            readable = [i for i, d in enumerate(data) if d is not None]
            explained = dict(zip(readable, detector.explain_many([data[i] for i in readable], threshold), strict=True))
            t = detector.threshold if threshold is None else threshold
            for i, ref in enumerate(batch):
                if i in errors:
                    yield Prediction(ref.name, None, None, t, error=errors[i]), None
                    continue
                ex = explained[i]
                ex.prediction.source = ref.name
                yield ex.prediction, (save_overlay(ex, out_dir, taken) if ex.ok else None)

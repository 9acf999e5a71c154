"""Batch prediction over many files, and the rows `realfake predict` prints (JSON lines or CSV), and the
Grad-CAM overlays `--explain` writes.

A pipeline, so that from files to rows runs at nearly the model's own speed: worker processes read and
decode the next batches (`read_and_decode_region`, the one decoder) while the model works on this one; each
worker hands back one stacked uint8 array, not a pickle per image, and beside it one small int32 array of what
each image shows of its input (`Region`: size and judged square, for the rows); calibration, OOD score and labels
are whole-array operations (`Detector.verdicts`); and a writer thread formats and writes the rows of the previous
batch while the model runs (its matrix products release the GIL). Results stream out in input order, one per input,
unreadable ones included (as an error row).

Nearly all the main thread's time goes to the model (`benchmarks/predict_files.py`,
docs/performance.md#prediction-from-files); what remains between this and the bare model is the model sharing the cores
with decoding (see `realfake.tuning.quiet_waiting_threads`). Since prediction's model copy is fused
(realfake.models.fused) decoding is a larger share, so a plain 32x32 JPEG decodes through torchvision's libjpeg operator
(realfake.data.images; set up by `prepare_jpeg_decoding` before the workers fork), at well under half Pillow's CPU an
image (docs/performance.md, Speed).

The workers live no longer than this process (`decoding_pool`), however it ends: a `predict` killed with SIGKILL
used to leave them blocked on their pipe for ever (docs/performance.md#memory), holding the `--out` temporary's lock.
"""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

import contextlib
import csv
import ctypes
import io
import json
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import queue
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any, TextIO

import numpy as np
from tqdm import tqdm

from realfake.atomic import atomic_file, atomic_write_bytes, check_writable
from realfake.contract import IMAGE_SIZE
from realfake.data.images import Region, decode_all, prepare_jpeg_decoding
from realfake.data.inputs import InputReader, InputRef, expand_inputs
from realfake.detector import OPTIONAL_FIELDS, ROW_FIELDS, Detector, Explanation, Prediction, PredictionBatch
from realfake.errors import RealfakeError

Decoded = list[tuple[np.ndarray | None, str | None]]
# What a worker hands back for a chunk of inputs: the readable images stacked in order, each input's error (None
# where it was read), and the readable images' regions (`Region`s as rows of an (n_read, 6) int32 array).
Chunk = tuple[np.ndarray, list[str | None], np.ndarray]
REGION_FIELDS = len(Region._fields)


def decode_each(
    refs: Sequence[Any], read: Callable[[Any], bytes] | None = None
) -> tuple[list[np.ndarray | None], list[str | None], list[Region | None]]:
    """Decode a batch of inputs: each one's array, error and region (None where it has none). `read` turns each
    input into bytes (default: an `InputReader` for InputRefs; the Ray engine passes one that also reads URIs)."""
    with InputReader() as reader:
        return decode_all(refs, read or reader.read)


def decode_refs(refs: Sequence[Any], read: Callable[[Any], bytes] | None = None) -> Decoded:
    """Decode a batch of inputs; a failure is a reason string in place of the image (see `decode_each`)."""
    arrays, errors, _ = decode_each(refs, read)
    return list(zip(arrays, errors, strict=True))


def decode_chunk(refs: Sequence[Any], read: Callable[[Any], bytes] | None = None) -> Chunk:
    """`decode_each` packed for the trip back from a worker process: two arrays, not one pickle per image."""
    arrays, errors, regions = decode_each(refs, read)
    good = [a for a in arrays if a is not None]
    images = np.stack(good) if good else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    seen = np.array([r for r in regions if r is not None], dtype=np.int32).reshape(-1, REGION_FIELDS)
    return images, errors, seen


def _joined(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    return (np.concatenate([c[0] for c in chunks]), [e for c in chunks for e in c[1]],
            np.concatenate([c[2] for c in chunks]))


def _batched(refs: Iterable[InputRef], size: int) -> Iterator[list[InputRef]]:
    batch: list[InputRef] = []
    for r in refs:
        batch.append(r)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Stages:
    """Seconds spent per stage of the pipeline, for the benchmark's account of where the time goes; with no
    dict to fill, timing costs nothing."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self.into = into

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.into is None:
            yield
            return
        t = time.perf_counter()
        try:
            yield
        finally:
            self.into[stage] = self.into.get(stage, 0.0) + time.perf_counter() - t


# --- the decoding workers, tied to this process's life -------------------------------------------------------

# File descriptors a forked decoding worker closes as it starts: the locked temporary of an `--out` being written
# (write_file), whose lock must go when this process dies, so that the next write sweeps the temporary.
_NOT_FOR_WORKERS: set[int] = set()
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_CHECK_S = 1.0  # how often a worker's watchdog looks at its parent's pid, besides waiting on its sentinel


def decoding_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` decoding processes that die with this one, however it dies, so that a killed `predict` leaves
    no process behind (see `_worker_started`); forked where the system can, so they inherit the JPEG decoder.

    On Linux the kernel kills a worker when the *thread* that forked it ends: the pool forks its workers in the
    thread of its first `submit`, which for `predict_batches` is the thread that iterates it and shuts it down.
    """
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_started,
                               initargs=(os.getpid(),))


def _worker_started(parent_pid: int) -> None:
    """A decoding worker's first act: let go of what is the parent's alone, and end when the parent ends.

    Two ties, since neither is enough alone: a parent-death signal (Linux), at once and even if this worker is
    stuck in C code; and a watchdog thread (any system), in case the signal is missing or came too late.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked with the parent's handler (stop_cleanly_on_sigterm)
    for fd in list(_NOT_FOR_WORKERS):
        with contextlib.suppress(OSError):
            os.close(fd)  # the lock stays with the parent's own descriptor
    _kill_me_with_parent()
    if os.getppid() != parent_pid:  # the parent died before the signal was asked for: it will never come
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="realfake-parent-watch", daemon=True).start()


def _kill_me_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent ends (prctl PR_SET_PDEATHSIG); elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0))
    except (OSError, AttributeError):  # no libc to call: the watchdog still ends this worker
        pass


def _watch_parent(parent_pid: int) -> None:
    """End this worker once its parent is gone: its sentinel (a pipe the parent holds; a process handle on
    Windows) becomes ready at once, and a changed parent pid is seen within PARENT_CHECK_S, for the pipe may
    stay open in a worker forked later, until that one ends."""
    parent = mp.parent_process()
    while os.getppid() == parent_pid:
        if parent is None:
            time.sleep(PARENT_CHECK_S)
        elif mp.connection.wait([parent.sentinel], timeout=PARENT_CHECK_S):
            break
    os._exit(1)


@contextmanager
def kept_from_workers(fd: int) -> Iterator[None]:
    """Decoding workers forked while the block runs close `fd`: a lock it holds then goes with this process."""
    _NOT_FOR_WORKERS.add(fd)
    try:
        yield
    finally:
        _NOT_FOR_WORKERS.discard(fd)


@contextmanager
def stop_cleanly_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM raises SystemExit(143) in the main thread, so that finally blocks run (the
    decoding pool shut down, an `--out` temporary removed): Python's default for SIGTERM ends the process at
    once, with none of them. A second SIGTERM ends it at once. Where SIGTERM is already handled or ignored (or
    off the main thread, where no handler can be set) nothing changes."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def default_workers() -> int:
    """Decoding processes when the caller names none: one per core. While the model is the slower stage the
    pool idles (a chunk is only submitted when the model takes one), so spare workers cost no CPU."""
    return os.cpu_count() or 1


def predict_batches(
    detector: Detector,
    paths: Iterable[str | os.PathLike[str]],
    *,
    batch_size: int = 256,
    threshold: float | None = None,
    workers: int | None = None,
    progress: bool = True,
    stages: dict[str, float] | None = None,
) -> Iterator[PredictionBatch]:
    """Verdicts for every image under `paths` (files, folders, globs, zips), a batch at a time, in input order.

    `workers` decoding processes (default: one per core; 0 decodes in this process, one batch at a time, with
    nothing overlapped) decode ahead of the model. `stages`, if given, accumulates the seconds this thread
    spends per stage (listing, waiting for decoding, model, verdicts).
    """
    clock = Stages(stages)
    with clock("list"):
        refs = list(expand_inputs(paths))
    with clock("prepare the JPEG decoder"):
        prepare_jpeg_decoding(len(refs))  # before the workers fork: they inherit it, or Pillow's path
    batches = [refs[i:i + batch_size] for i in range(0, len(refs), batch_size)]
    workers = default_workers() if workers is None else workers
    workers = min(workers, len(batches)) if len(batches) > 1 else 0  # one batch: nothing to overlap it with
    bar = tqdm(total=len(refs), unit="img", file=sys.stderr, disable=not progress or len(batches) < 2)
    pool: ProcessPoolExecutor | None = None
    try:
        with clock("start workers"):
            if workers:
                pool = decoding_pool(workers)
        pending: deque[tuple[list[InputRef], list[Future[Chunk]]]] = deque()
        queue_ = iter(batches)

        def submit(pieces: int = 1) -> None:
            batch = next(queue_, None)
            if batch is not None:
                step = -(-len(batch) // pieces)
                pieces_ = [batch[i:i + step] for i in range(0, len(batch), step)]
                pending.append((batch, [pool.submit(decode_chunk, p) for p in pieces_] if pool else []))

        submit(max(1, workers))  # the first batch in one piece per worker: the model starts sooner
        for _ in range(2 * workers - 1):  # every worker busy, and a decoded batch waiting for the model
            submit()
        first = True
        while pending:
            batch, jobs = pending.popleft()
            with clock("decode" if not jobs else "wait for the first batch" if first else "wait for decoding"):
                images, errors, regions = _joined([j.result() for j in jobs]) if jobs else decode_chunk(batch)
            first = False
            submit()
            if pool is not None and not pending:  # nothing left to decode: let the workers exit meanwhile
                pool.shutdown(wait=False)
            with clock("model"):
                logits = detector.predict_logits(images) if len(images) else np.zeros(0)
            with clock("verdicts"):
                result = detector.verdicts([r.name for r in batch], logits, errors, threshold, regions)
            yield result
            bar.update(len(batch))
    finally:
        bar.close()
        if pool is not None:
            with clock("stop workers"):
                pool.shutdown(cancel_futures=True)


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
    for batch in predict_batches(detector, paths, batch_size=batch_size, threshold=threshold, workers=workers,
                                 progress=progress):
        yield from batch.predictions()


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
        arrays, errors, regions = decode_each(batch)
        for ex in detector.explanations([r.name for r in batch], arrays, errors, threshold, regions):
            yield ex.prediction, (save_overlay(ex, out, taken) if ex.ok else None)


def save_overlay(explanation: Explanation, out_dir: str | Path, taken: set[str] | None = None, size: int = 256) -> Path:
    """Write `<out_dir>/<stem>.cam.png` for one explanation; `taken` keeps stems unique across calls.

    The file is the overlay with a strip beneath it stating the verdict and the run's Grad-CAM scale
    (explain.annotated_png): a heatmap file read on its own must say what it shows and how strongly.
    """
    from realfake.explain import annotated_png

    source = explanation.prediction.source
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", PurePosixPath(source.replace("\\", "/").split("::")[-1]).stem) or "image"
    name, n = stem, 1
    while taken is not None and name in taken:
        n += 1
        name = f"{stem}-{n}"
    if taken is not None:
        taken.add(name)
    out = Path(out_dir) / f"{name}.cam.png"
    atomic_write_bytes(out, annotated_png(explanation, size))
    return out


FORMATS = ("jsonl", "csv")
CSV_FIELDS = list(ROW_FIELDS)
Result = Prediction | tuple[Prediction, Path | None] | PredictionBatch
_json_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # json.dumps(str)'s own encoder


def _json_num(x: float) -> str:
    """json.dumps(x) for a float, without its call overhead (NaN and infinities are rare: let json say them)."""
    return float.__repr__(x) if math.isfinite(x) else json.dumps(x)


class RowFormatter:
    """The text of the rows for each result: a PredictionBatch is formatted straight from its arrays, byte for
    byte what its Predictions would give (tests/test_predict.py checks), at a few microseconds a row."""

    def __init__(self, fmt: str, with_heatmap: bool = False) -> None:
        if fmt not in FORMATS:
            raise RealfakeError(f"--format must be jsonl or csv; got {fmt!r}")
        self.fmt = fmt
        self.fields = CSV_FIELDS + (["heatmap"] if with_heatmap else [])
        self.header_written = False

    def text(self, result: Result) -> str:
        if isinstance(result, PredictionBatch):
            return self._jsonl_batch(result) if self.fmt == "jsonl" else self._csv(self._csv_batch(result))
        pred, heatmap = result if isinstance(result, tuple) else (result, None)
        row = {"path": pred.source, **{k: v for k, v in pred.to_dict().items() if k != "source"}}
        if heatmap is not None:
            row["heatmap"] = str(heatmap)
        if self.fmt == "jsonl":
            return json.dumps(row) + "\n"
        return self._csv([[_csv_cell(row.get(k, "")) for k in self.fields]])

    def _csv(self, rows: list[list[object]]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        if not self.header_written:
            w.writerow(self.fields)
            self.header_written = True
        w.writerows(rows)
        return buf.getvalue()

    @staticmethod
    def _jsonl_batch(b: PredictionBatch) -> str:
        """JSON lines straight from the batch's columns, byte for byte json.dumps of each Prediction's row."""
        c = b.columns()
        cols = [(f'"{k}": ', c[k], k in OPTIONAL_FIELDS) for k in ROW_FIELDS]
        lines = []
        for i in range(len(b)):
            parts = [key + _json_value(col[i]) for key, col, optional in cols if not (optional and col[i] is None)]
            lines.append("{" + ", ".join(parts) + "}\n")
        return "".join(lines)

    @staticmethod
    def _csv_batch(b: PredictionBatch) -> list[list[object]]:
        c = b.columns()
        c["crop"] = [_csv_cell(box) for box in c["crop"]]
        return [list(row) for row in zip(*(c[k] for k in ROW_FIELDS), strict=True)]


def _csv_cell(v: object) -> object:
    """A CSV cell: the crop box as one "left,top,right,bottom" string (a spreadsheet splits it on commas at will),
    None as empty, anything else as csv writes it."""
    if isinstance(v, list):
        return ",".join(map(str, v))
    return v


def _json_value(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, str):
        return _json_str(v)
    if isinstance(v, float):
        return _json_num(v)
    if isinstance(v, list):  # the crop box, as json.dumps writes a list of ints
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)  # an int (width, height)


_DONE = object()


class _WriterThread:
    """Formats and writes results in a thread of its own, a few results behind the producer, so the rows of
    one batch are written while the model works on the next. The first write error (a closed pipe, a full
    disk) is raised in the producer's thread."""

    def __init__(self, out: TextIO, rows: RowFormatter, clock: Stages) -> None:
        self.out, self.rows, self.clock = out, rows, clock
        self.queue: queue.Queue[object] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="realfake-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not _DONE:
            if self.error is None:  # after an error, drain without writing, so the producer never blocks
                try:
                    with self.clock("format and write (writer thread)"):
                        self.out.write(self.rows.text(item))  # type: ignore[arg-type]
                        self.out.flush()
                except BaseException as e:  # noqa: BLE001 - handed to the producer's thread, raised there
                    self.error = e

    def put(self, item: Result) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def close(self) -> None:
        self.queue.put(_DONE)
        self.thread.join()


@contextmanager
def _closed_after(results: Iterable[Any]) -> Iterator[Iterable[Any]]:
    """`results`, closed when the block ends if it can be (a generator): its own finally (the decoding pool's
    shutdown) then runs now, on an error or SIGTERM included, not whenever it is collected."""
    try:
        yield results
    finally:
        close = getattr(results, "close", None)
        if close is not None:
            close()


def write_rows(
    results: Iterable[Result], fmt: str, out: TextIO, with_heatmap: bool = False,
    stages: dict[str, float] | None = None,
) -> tuple[int, int]:
    """Write one row per input as results arrive (JSON lines or CSV), flushed after each result (a batch or a
    single Prediction), so a long run streams; returns (inputs seen, inputs read).

    Formatting and writing run in a writer thread, overlapping whatever produces `results` (the model, for
    `predict_batches`). `stages`, if given, accumulates the seconds spent waiting for the writer, and the
    writer thread's own. `results` is closed at the end (a generator's decoding pool shut down), also on an error.
    """
    rows = RowFormatter(fmt, with_heatmap)
    clock = Stages(stages)
    seen = read = 0
    writer = _WriterThread(out, rows, clock)
    try:
        with _closed_after(results):
            for r in results:
                if isinstance(r, PredictionBatch):
                    seen, read = seen + len(r), read + r.n_read
                else:
                    pred = r[0] if isinstance(r, tuple) else r
                    seen, read = seen + 1, read + (pred.error is None)
                with clock("wait for writer"):
                    writer.put(r)
    finally:
        with clock("wait for writer"):
            writer.close()
    if writer.error is not None:
        raise writer.error
    return seen, read


# --- rows to a file (`--out`): JSON lines, CSV or Parquet, written atomically ---------------------------------

OUT_SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".csv": "csv"}


def out_format(path: str | Path) -> str:
    """The format a `--out` file is written in, from its name."""
    fmt = OUT_SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise RealfakeError(f"--out {path}: name a .parquet, .jsonl or .csv file")
    return fmt


def check_out(out: str | Path, run: str | Path | None = None) -> str:
    """Refuse now, before any decoding, an `--out` that would fail or do harm only after all the work; returns
    its format. Refused: a name without a known suffix; anything in the run folder `run` (its predictions.csv
    replaced would break `realfake report`), through symlinked folders too; an existing folder (the final
    rename would fail); a place that cannot be written (`check_writable`).

    The final name is not followed: the write replaces it (a symlink there included), never what it points to.
    """
    fmt = out_format(out)
    path = Path(out)
    if run is not None and Path(run).is_dir():
        home, where = Path(run).resolve(), path.parent.resolve() / path.name
        if where == home or home in where.parents:
            raise RealfakeError(f"--out {out} is in the run folder {run}, whose own files it could replace: "
                                "write it somewhere else")
    if path.is_dir():
        raise RealfakeError(f"--out {out} is a folder: name a file in it, e.g. {path / ('predictions.' + fmt)}")
    check_writable(path)
    return fmt


INSTALL_PYARROW = "pip install 'pyarrow>=14' (the realfake[parquet] extra)"


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401 - imported for write_file's ParquetWriter
    except ImportError:
        raise RealfakeError(f"writing Parquet needs pyarrow: {INSTALL_PYARROW}") from None
    return pyarrow


def parquet_schema() -> Any:
    """The Parquet rows: the CSV's columns (CSV_FIELDS), typed; p_fake, label, ood, width, height and crop null
    where `error` says why the input was not read, ood null throughout for a run without an OOD score.

    `crop` is one list<int32> column ([left, top, right, bottom]) rather than four int columns, so that every
    format has the same columns under the same names (JSON a list, CSV one "l,t,r,b" cell) and a box stays one
    value; `crop[0]` or pyarrow.compute.list_element take a side apart where needed.
    """
    pa = _pyarrow()
    types = {"path": pa.string(), "p_fake": pa.float64(), "logit": pa.float64(), "label": pa.string(),
             "reason": pa.string(), "threshold": pa.float64(), "ood": pa.float64(), "width": pa.int32(),
             "height": pa.int32(), "crop": pa.list_(pa.int32()), "note": pa.string(), "error": pa.string()}
    return pa.schema([(k, types[k]) for k in CSV_FIELDS])


def parquet_batch(b: PredictionBatch, schema: Any) -> Any:
    """A PredictionBatch as a pyarrow RecordBatch, from the same columns (and rounding) as the JSON and CSV rows."""
    pa = _pyarrow()
    columns = b.columns()
    return pa.record_batch([pa.array(columns[f.name], f.type) for f in schema], schema=schema)


def write_file(batches: Iterable[PredictionBatch], out: str | Path) -> tuple[int, int]:
    """Write one row per input to `out`, in the format its name says (.parquet, .jsonl, .csv), streaming batch
    by batch into a temporary that replaces `out` only when every row is written: an interrupted run leaves no
    half file. The JSON lines and CSV are byte for byte what `write_rows` prints. Returns (inputs seen, read).

    `batches` is closed before the temporary is removed (a generator's decoding pool shut down first), and
    decoding workers forked meanwhile do not hold the temporary open: its lock goes when this process dies.
    """
    fmt = check_out(out)
    schema = parquet_schema() if fmt == "parquet" else None  # pyarrow missing: say so before any work
    with atomic_file(out) as f, kept_from_workers(f.fileno()), _closed_after(batches):
        if schema is not None:
            return _write_parquet(batches, f, schema)
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")  # no newline translation: rows as printed
        try:
            return write_rows(batches, fmt, text)
        finally:
            text.flush()
            text.detach()  # the binary file is closed by atomic_file, after its rename


def _write_parquet(batches: Iterable[PredictionBatch], f: IO[bytes], schema: Any) -> tuple[int, int]:
    import pyarrow.parquet as pq

    seen = read = 0
    with pq.ParquetWriter(f, schema) as writer:
        for b in batches:
            writer.write_batch(parquet_batch(b, schema))
            seen, read = seen + len(b), read + b.n_read
    return seen, read

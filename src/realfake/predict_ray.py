"""Batch prediction on a Ray cluster (`realfake predict RUN SOURCES --engine ray --out FILE`): the same rows as
the local `predict`, from many machines' cores or GPUs.

The work is local predict's pipeline spread out with Ray Data, and its rows are the same, value for value:
- listing happens here, in the driver, with local predict's own rules (`expand_inputs`, so both engines list
  the same images, zip members and error rows included); URIs (s3://, gs://, hdfs://, file://, whatever
  pyarrow opens) are listed with pyarrow's file systems under the same image-name rule;
- the list is cut into local predict's batches, and each batch is one row of a Ray dataset: reading and
  decoding run as Ray tasks on any node, with the one decoder (`decode_chunk` -> `read_and_decode`), so a
  bad file is an error row with the reason local predict gives, never a failed job;
- a pool of actors, each of which loads the Detector once, turns each batch's images into logits; with a
  model call on exactly local predict's batch the logits are the same numbers (a batch of another size can
  move a float's last bit, and so a rounded p_fake's last digit);
- the driver turns logits into verdicts (`Detector.verdicts`, the one calibration) and writes the rows with
  `write_file`, in input order.

Why not `ray.data.read_binary_files`: one unreadable or vanished file fails its whole read task (the job),
and it reads files of any size whole; here every input is read with the same cap and reasons as locally.

A cluster's nodes must see the run folder (or .onnx file) and local image paths at the same paths (shared
storage), and have realfake installed; URIs need only be reachable from each node.
"""

from __future__ import annotations

__side__ = "predicting"  # see tests/test_layers.py

import logging
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from realfake import tuning
from realfake.contract import IMAGE_SIZE
from realfake.data.images import BadImage, read_capped
from realfake.data.inputs import InputReader, InputRef, _is_image_name, expand_inputs
from realfake.detector import Detector, PredictionBatch
from realfake.errors import RealfakeError
from realfake.predict import INSTALL_PYARROW, REGION_FIELDS, decode_chunk

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
MISSING_RAY = "Ray Data is not installed: pip install 'ray[data]>=2.10' (the realfake[ray] extra)"


def require_ray() -> Any:
    """The `ray` module with Ray Data, or a one-line RealfakeError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra brings Ray Data; a bare `ray` install lacks it
    except ImportError:
        raise RealfakeError(MISSING_RAY) from None
    return ray


# --- what the sources name ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UriRef:
    """One file on a file system pyarrow opens: `name` is the user's URI of it, `fs_path` its path in the file
    system that `root` (the URI the user gave) opens."""

    name: str
    root: str
    fs_path: str
    refused: str | None = None


Ref = InputRef | UriRef


def list_sources(sources: Sequence[str | os.PathLike[str]]) -> list[Ref]:
    """Every input the sources name, in order: local paths exactly as local predict lists them, URIs through
    pyarrow (a folder recursively, image names only, sorted; a missing file stays, to be reported)."""
    refs: list[Ref] = []
    for s in sources:
        refs.extend(_uri_refs(str(s)) if URI.match(str(s)) else expand_inputs([s]))
    return refs


def _uri_refs(uri: str) -> list[UriRef]:
    try:
        import pyarrow.fs as pafs
    except ImportError:
        raise RealfakeError(f"reading {uri} needs pyarrow: {INSTALL_PYARROW}") from None
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(root)
        if info.type != pafs.FileType.Directory:
            zipped = "zip archives are opened from local paths only" if uri.lower().endswith(".zip") else None
            return [UriRef(uri, uri, root, zipped)]
        listed = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError, NotImplementedError) as e:  # pyarrow's errors derive from these
        raise RealfakeError(f"cannot list {uri}: {e}".replace("\n", " ")) from None
    base = root.rstrip("/")
    rels = []
    for f in listed:
        rel = f.path[len(base):].lstrip("/")
        if f.type == pafs.FileType.File and _is_image_name(rel) and not any(p.startswith(".") for p in rel.split("/")):
            rels.append(rel)
    rels.sort()
    return [UriRef(f"{uri.rstrip('/')}/{rel}", uri, f"{base}/{rel}") for rel in rels]


class _Reader:
    """Reads local inputs as local predict does, and URIs through pyarrow (one file system per root URI), all
    with the same size cap."""

    def __init__(self) -> None:
        self.local = InputReader()
        self.fs: dict[str, Any] = {}

    def read(self, ref: Ref) -> bytes:
        if isinstance(ref, InputRef):
            return self.local.read(ref)
        if ref.refused:
            raise BadImage(ref.refused)
        fs = self.fs.get(ref.root)
        if fs is None:
            import pyarrow.fs as pafs

            fs = self.fs[ref.root] = pafs.FileSystem.from_uri(ref.root)[0]
        with fs.open_input_file(ref.fs_path) as f:
            return read_capped(f, f.size())

    def close(self) -> None:
        self.local.close()


# --- the stages, as Ray runs them (one dataset row = one batch) --------------------------------------------


def _batch_row(k: int, refs: list[Ref]) -> dict[str, Any]:
    """A batch as plain columns ("" for None: a column of nulls only has no type to join the others'). Local
    paths travel absolute (a worker's working folder is not the client's); rows keep the names as given."""
    local = [isinstance(r, InputRef) for r in refs]
    return {
        "batch": k,
        "names": [r.name for r in refs],
        "paths": [os.path.abspath(r.path) if isinstance(r, InputRef) else r.fs_path for r in refs],
        "members": [(r.member or "") if isinstance(r, InputRef) else "" for r in refs],
        "roots": ["" if is_local else r.root for r, is_local in zip(refs, local, strict=True)],  # type: ignore[union-attr]
        "refused": [r.refused or "" for r in refs],
    }


def _refs_of(row: dict[str, Any]) -> list[Ref]:
    return [
        InputRef(path, member or None, refused or None) if not root else UriRef(name, root, path, refused or None)
        for name, path, member, root, refused in zip(row["names"], row["paths"], row["members"], row["roots"],
                                                     row["refused"], strict=True)
    ]


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """A Ray task: read and decode one batch, as local predict's workers do (`decode_chunk`)."""
    reader = _Reader()
    try:
        images, errors, regions = decode_chunk(_refs_of(row), reader.read)
    finally:
        reader.close()
    return {"batch": row["batch"], "names": list(row["names"]), "errors": [e or "" for e in errors],
            "images": images.tobytes(), "regions": regions.astype(np.int32).tobytes()}


class LogitsActor:
    """A Ray actor: loads the Detector once, then gives the raw logits of each batch's readable images."""

    def __init__(self, model: str, device: str, backend: str, precision: str | None, tune: bool = False) -> None:
        if tune:  # the driver opted in (realfake.tuning), and this process is the actor's own
            tuning.apply(passive_wait=True)  # before torch loads, as in the local command
        self.detector = Detector.load(model, device=device, backend=backend, precision=precision)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        images = np.frombuffer(row["images"], dtype=np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 3).copy()
        logits = self.detector.predict_logits(images) if len(images) else np.zeros(0)
        return {"batch": row["batch"], "names": list(row["names"]), "errors": list(row["errors"]),
                "logits": np.asarray(logits, dtype=np.float64).tobytes(), "regions": row["regions"]}


# --- the driver ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How many actors, with what each holds.

    With GPUs: one actor per GPU, each holding a GPU and a CPU; decoding runs in separate CPU tasks beside them
    (their resources differ, so Ray keeps the stages apart), and must have a CPU of its own. Without: one actor
    per CPU, and Ray fuses decoding into the actors (same resources): each reads, decodes and predicts its
    batch in turn, on a model running one thread, so every CPU works and none waits on another.
    """

    actors: int
    gpus_per_actor: int

    @staticmethod
    def for_cluster(resources: dict[str, float], actors: int | None) -> Plan:
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        n = actors or (min(gpus, cpus - 1) if gpus else cpus) or 1
        if gpus:
            if n > gpus or n >= cpus:
                raise RealfakeError(f"--actors {n}: the cluster has {gpus} GPU(s) and {cpus} CPU(s); each actor "
                                    "takes a GPU and a CPU, and decoding needs a CPU more")
        elif n > cpus:
            raise RealfakeError(f"--actors {n}: the cluster has {cpus} CPU(s), one per actor")
        return Plan(n, 1 if gpus else 0)


def connect(address: str | None) -> bool:
    """Join the Ray cluster at `address` (auto, HOST:PORT, ray://HOST:10001; None: $RAY_ADDRESS, else a new local
    instance). True if this call started the connection (and so must shut it down); an existing one is used."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    local = {"include_dashboard": False} if address is None else {}
    try:
        ray.init(address=address, logging_level=logging.WARNING, **local)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        where = f"at {address}" if address else "(a local instance)"
        raise RealfakeError(f"could not connect to the Ray cluster {where}: {_first_line(e)}") from None
    return True


def _first_line(e: BaseException) -> str:
    """The line of a (possibly remote, multi-line) error that says what went wrong: its last non-empty one,
    where a Ray task error ends with the original exception."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1].removeprefix(f"{RealfakeError.__module__}.RealfakeError: ") if lines else e.__class__.__name__


def ray_batches(
    model: str | Path,
    sources: Sequence[str | os.PathLike[str]],
    *,
    address: str | None = None,
    actors: int | None = None,
    batch_size: int = 256,
    threshold: float | None = None,
    device: str = "auto",
    backend: str = "auto",
    precision: str | None = None,
    progress: bool = True,
) -> Iterator[PredictionBatch]:
    """Verdicts for every image the sources name, a batch at a time in input order, computed on a Ray cluster:
    what `predict_batches` gives for the same local inputs. Write them with `realfake.predict.write_file`.

    `model` is a run folder or .onnx file at the same path on every node; `actors` model replicas (see
    `Plan.for_cluster`) each load it once. A Ray this call connected is shut down when the batches end.
    """
    ray = require_ray()
    # The driver's own Detector gives the calibration, and stops a damaged run in one line rather than in every
    # actor; it loads (torch's import, seconds) while Ray connects or starts.
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(Detector.load, model, device="cpu", backend=backend, precision=precision)
        refs = list_sources(sources)
        started = connect(address)
        try:
            detector = loading.result()
        except BaseException:
            if started:
                ray.shutdown()
            raise
    try:
        plan = Plan.for_cluster(ray.cluster_resources(), actors)
        yield from _run(ray, detector, refs, plan, str(Path(model).resolve()), batch_size=batch_size,
                        threshold=threshold, device=device, backend=backend, precision=precision, progress=progress)
    finally:
        if started:
            ray.shutdown()


def _run(ray: Any, detector: Detector, refs: list[Ref], plan: Plan, model: str, *, batch_size: int,
         threshold: float | None, device: str, backend: str, precision: str | None,
         progress: bool) -> Iterator[PredictionBatch]:
    if not refs:
        return
    batches = [refs[i:i + batch_size] for i in range(0, len(refs), batch_size)]
    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order = True  # rows in input order, as local predict writes them
    ctx.enable_progress_bars = progress
    try:
        ds = ray.data.from_items([_batch_row(k, b) for k, b in enumerate(batches)], override_num_blocks=len(batches))
        ds = ds.map(decode_row, num_cpus=1)
        ds = ds.map(LogitsActor, fn_constructor_args=(model, device, backend, precision, tuning.enabled()),
                    compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=1, num_gpus=plan.gpus_per_actor)
        for k, row in enumerate(ds.iter_rows()):
            if row["batch"] != k:  # pragma: no cover - preserve_order is Ray's promise; a broken one is loud
                raise RealfakeError(f"Ray returned batch {row['batch']} where batch {k} was due")
            errors = [e or None for e in row["errors"]]
            logits = np.frombuffer(row["logits"], dtype=np.float64)
            regions = np.frombuffer(row["regions"], dtype=np.int32).reshape(-1, REGION_FIELDS)
            yield detector.verdicts(list(row["names"]), logits, errors, threshold, regions)
    except ray.exceptions.RayError as e:
        raise RealfakeError(f"the Ray job failed: {_first_line(e)}") from None
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved

"""The `realfake` command: one short function per command, each a thin call into the library."""

from __future__ import annotations

__side__ = "face"  # see tests/test_layers.py

import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.markup import escape

from realfake import tuning
from realfake.errors import RealfakeError, one_line
from realfake.rundir import RunDir
from realfake.verbosity import configure

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Tell AI-generated images from real photographs: train, evaluate, predict, report.",
)
F = TypeVar("F", bound=Callable[..., Any])
PRECISION_HELP = ("auto | fp32 | bf16: what the PyTorch model computes in; ONNX models always run in fp32 "
                  "[default: the run's setting, normally auto: bf16 where the CPU has AMX / AVX-512 BF16, else fp32]")
SLEEPING_THREADS = ("predict", "serve")  # see _global
CIFAKE_HANDLE = "birdy654/cifake-real-and-ai-generated-synthetic-images"
EXPERT = "Expert: training recipe"
DECISIONS = "Expert: decisions"
RAY = "Ray engine (--engine ray)"
LIMITS = "Limits and batching"


def _option(default: Any, *names: str, help: str = "", **kwargs: Any) -> Any:  # noqa: A002 - typer's name
    """typer.Option with its help text shown as written: typer reads help as Rich markup, where `[default: 10]`
    and `realfake[ray]` are tags that vanish from --help."""
    return typer.Option(default, *names, help=escape(help), **kwargs)


def _argument(default: Any, *, help: str = "", **kwargs: Any) -> Any:  # noqa: A002 - typer's name
    """typer.Argument with its help shown as written (see _option)."""
    return typer.Argument(default, help=escape(help), **kwargs)


def _recipe(fast: Any, seed: Any) -> str:
    """The default of a training option the model's recipe decides (realfake.models.Built.recipe); fast's
    values are checked against models/fast.py RECIPE by tests/test_first_steps.py."""
    return f"[default: the model's recipe: {fast} for fast, {seed} for seed-resnet50]"


@app.callback()  # no docstring: the app's help stays the one given to typer.Typer above
def _global(
    ctx: typer.Context,
    verbose: bool = _option(
        False, "--verbose", "-v", help="also print how the work runs: thread counts, precision and the CPU or GPU "
        "feature behind it, data placement, calibration details (before the command: realfake -v train ...)"
    ),
) -> None:
    configure(verbose)
    # The command opts its process in to realfake's process-wide tricks (realfake.tuning; REALFAKE_TUNING=0
    # refuses them), which library use leaves off. `predict` and `serve` also let their OpenMP threads sleep
    # rather than spin while they wait (before torch loads): decoding workers and request handling need those
    # cores. Training keeps libgomp's spinning threads and shares a busy machine by thread count instead
    # (realfake.device.ThreadGovernor).
    tuning.apply(passive_wait=ctx.invoked_subcommand in SLEEPING_THREADS)


def _for_scripts(path: Path) -> None:
    """The bare path of what a command wrote, on stdout, when stdout is not a terminal: scripts capture it
    (`RUN=$(realfake adapt ...)`), and a person at a terminal has read it once already, on stderr."""
    if not sys.stdout.isatty():
        typer.echo(str(path))


def _wrote(path: Path, what: str) -> None:
    """A writing command's last line: what it wrote and where (stderr), and the path for scripts (stdout)."""
    typer.echo(f"wrote {what}: {path}", err=True)
    _for_scripts(path)


def _renamed(value: Any, old_value: Any, old: str, new: str, default: Any = None) -> Any:
    """An option's value given under its new name or its old one (kept working, hidden from --help, with a
    one-line note); both at once is refused."""
    if old_value is None:
        return value
    if value != default:
        raise RealfakeError(f"give {new} alone ({old} is its old name)")
    typer.echo(f"note: {old} is now {new}; the old name will go in a later version", err=True)
    return old_value


def friendly(fn: F) -> F:
    """User errors become one line on stderr and exit code 1 (2 for bad usage), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RealfakeError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@friendly
def train(
    data: str | None = _option(
        None, help="CIFAKE zip or folder, or any folder with REAL/ and FAKE/ [default: the bundled 2,000-image demo "
        "sample]"
    ),
    model: str | None = _option(
        None, help="seed-resnet50 (the notebook's ResNet50) or fast (small, trains in minutes on a CPU) "
        "[default: seed-resnet50]"
    ),
    epochs: int | None = _option(None, help="maximum epochs " + _recipe(3, 10)),
    protocol: str | None = _option(
        None, help="seed (70/20/10 split), official (CIFAKE's test/) or holdout:SOURCE (never trained on) "
        "[default: seed]"
    ),
    limit: int | None = _option(None, help="train on a stratified subset of this many images [default: all]"),
    out: Path | None = _option(None, help="run directory [default: runs/<model>-<time>]"),
    device: str | None = _option(None, help="auto | cpu | cuda | cuda:N | mps [default: auto]"),
    seed: int | None = _option(None, help="seed for split, subset and training [default: 42]"),
    config: Path | None = _option(None, help="YAML file of options; flags given here win [default: none]"),
    resume: Path | None = _option(
        None, help="continue this run from its last checkpoint (--epochs may raise its maximum) [default: a new run]"
    ),
    weights: str | None = _option(
        None, help="auto | imagenet | none | path to weights [default: auto]", rich_help_panel=EXPERT
    ),
    patience: int | None = _option(None, help="early-stopping patience [default: 3]", rich_help_panel=EXPERT),
    batch_size: int | None = _option(
        None, help="training batch size (global under torchrun) " + _recipe(128, 128), rich_help_panel=EXPERT
    ),
    lr: float | None = _option(None, help="learning rate " + _recipe(0.002, 0.001), rich_help_panel=EXPERT),
    augment: str | None = _option(
        None, help="flips | robust (flips + random JPEG and blur) | simulate (robust + simulated up-sampling"
        " artefacts as extra FAKEs) " + _recipe("robust", "flips"), rich_help_panel=EXPERT
    ),
    tta: str | None = _option(
        None, help="none | flip (average with the mirror image) " + _recipe("flip", "none"), rich_help_panel=EXPERT
    ),
    precision: str | None = _option(
        None, help="auto (bf16 where the CPU has AMX / AVX-512 BF16 or the GPU has bf16, else fp32) | fp32 | bf16 "
        "(any CPU; slow without native bf16) [default: auto]", rich_help_panel=EXPERT
    ),
    data_placement: str | None = _option(
        None, help="auto | device (training images held on the device) | stream (read from the memory-mapped cache "
        "batch by batch, prefetched) [default: auto: device when they fit half the free memory]",
        rich_help_panel=EXPERT,
    ),
    sync_batchnorm: bool | None = _option(
        None, "--sync-batchnorm/--no-sync-batchnorm",
        help="under torchrun, BatchNorm statistics over the whole global batch (GPUs only) "
        "[default: no-sync-batchnorm]", rich_help_panel=EXPERT,
    ),
    extra_fakes: str | None = _option(
        None, help="folder or zip of FAKE images only (e.g. `realfake zoo sample` output) mixed into the training "
        "split; validation and the home test split stay --data's own. `zoo`: images sampled (and cached) from the "
        "generator zoo shipped in the package; a folder of trained generators: sampled from those [default: none]",
        rich_help_panel=EXPERT
    ),
    extra_fakes_share: float | None = _option(
        None, help="share of the training FAKE images taken by --extra-fakes (as many of the data's own training "
        "fakes left out, so the classes stay balanced) [default: 0.5]", rich_help_panel=EXPERT
    ),
    threshold_policy: str | None = _option(
        None, help="threshold chosen on validation: balanced | fpr:RATE (e.g. fpr:0.01) | real:RATE "
             "(the lower of balanced and fpr:RATE) | fixed:P " + _recipe("real:0.005", "balanced"),
        rich_help_panel=DECISIONS,
    ),
    uncertain: str | None = _option(
        None, help="LOW:HIGH band of calibrated p_fake labelled 'uncertain' [default: none]",
        rich_help_panel=DECISIONS,
    ),
    ood_level: float | None = _option(
        None, help="label 'uncertain' an image less typical of its class than this share of validation images "
        "[default: 0.96; config ood_level: null turns it off]", rich_help_panel=DECISIONS,
    ),
) -> None:
    """Train a detector; writes a run directory with weights, metrics, plots and report.html (its path last).

    Options left out take the model's recipe, else the seed notebook's choices. On several processes:
    `torchrun --nproc-per-node N -m realfake train ...` (DDP; --batch-size stays global).
    """
    from realfake.config import RunConfig
    from realfake.training import resume as resume_run
    from realfake.training import train as train_run

    try:
        if resume is not None:
            run_dir = resume_run(resume, epochs=epochs)
        else:
            cfg = RunConfig.from_sources(
                config, data=data, protocol=protocol, model=model, weights=weights, epochs=epochs,
                patience=patience, batch_size=batch_size, lr=lr, seed=seed, device=device, precision=precision,
                limit=limit,
                out=str(out) if out else None, threshold_policy=threshold_policy, uncertain=uncertain,
                ood_level=ood_level, augment=augment, tta=tta, data_placement=data_placement,
                sync_batchnorm=sync_batchnorm, extra_fakes=extra_fakes, extra_fakes_share=extra_fakes_share,
            )
            run_dir = train_run(cfg)
    except KeyboardInterrupt:
        target = resume or out or "runs/<run>"
        typer.echo(f"\ninterrupted; continue with: realfake train --resume {target}", err=True)
        raise typer.Exit(130) from None
    _for_scripts(run_dir / RunDir.REPORT)  # training's log said "report: PATH" on stderr


@app.command()
@friendly
def evaluate(
    run_dir: Path = _argument(..., help="a trained run directory"),
    data: str | None = _option(
        None, help="evaluate on every image of this data set instead [default: the run's own test split]"
    ),
    device: str = _option("auto", help="auto | cpu | cuda | mps"),
    precision: str | None = _option(None, help=PRECISION_HELP),
) -> None:
    """Re-evaluate a run on its test split (or on another data set); prints the metrics as JSON."""
    from realfake.evaluation import evaluate as evaluate_run

    metrics = evaluate_run(run_dir, data, device=device, precision=precision)
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
@friendly
def adapt(
    run_dir: Path = _argument(..., help="the trained run to adapt (only read, never changed)"),
    data: str = _option(..., help="labelled images of the new generator: REAL/ and FAKE/ folders, a zip, a CSV"),
    out: Path | None = _option(None, help="the new run folder [default: RUN-adapted-<data name>, beside RUN]"),
    finetune_head: bool = _option(
        False, help="also fine-tune the model's head on part of the set (the rest calibrates)"
    ),
    epochs: int = _option(5, min=1, help="fine-tuning epochs (with --finetune-head)"),
    lr: float = _option(1e-3, help="fine-tuning learning rate (with --finetune-head)"),
    calibration_share: float = _option(
        0.5, help="with --finetune-head: share of each class kept for calibration, the rest fine-tunes"
    ),
    threshold_policy: str | None = _option(
        None, help="balanced | fpr:RATE | real:RATE | fixed:P [default: the parent run's policy]"
    ),
    seed: int = _option(0, help="seed of the fine-tune/calibration split and of fine-tuning"),
    overwrite: bool = _option(False, help="replace --out if it already exists"),
    device: str = _option("auto", help="auto | cpu | cuda | mps"),
) -> None:
    """Re-fit a run's calibration (temperature, threshold, OOD score) on a small labelled set of a new
    generator, optionally fine-tuning its head; writes a new run folder and prints its path."""
    from realfake.adapt import AdaptOptions
    from realfake.adapt import adapt as adapt_run

    child = adapt_run(run_dir, data, out, AdaptOptions(
        finetune_head=finetune_head, epochs=epochs, lr=lr, calibration_share=calibration_share,
        threshold_policy=threshold_policy, seed=seed, overwrite=overwrite, device=device,
    ))
    n = RunDir(child).info()["adapted_on"]["n_images"]
    _wrote(child, f"the adapted run, fitted on {n:,} images of {data}")


@app.command()
@friendly
def robustness(
    run_dir: Path = _argument(..., help="a trained run directory"),
    data: str | None = _option(
        None, help="sweep every image of this data set instead [default: the run's own test split]"
    ),
    seed: int = _option(0, help="seed of the noise degradations"),
    device: str = _option("auto", help="auto | cpu | cuda | mps"),
) -> None:
    """Evaluate under JPEG, blur, resampling and noise (all / REAL only / FAKE only); writes robustness.json."""
    from realfake.robustness import run_robustness, table_text

    result = run_robustness(run_dir, data, device=device, seed=seed)
    typer.echo(table_text(result))


def _sigterm_stops_cleanly(fn: F) -> F:
    """SIGTERM ends the command through its finally blocks (decoding workers stopped, no --out temporary left),
    not at once as Python's default does (realfake.predict.stop_cleanly_on_sigterm)."""
    from realfake.predict import stop_cleanly_on_sigterm

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with stop_cleanly_on_sigterm():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@app.command()
@friendly
@_sigterm_stops_cleanly
def predict(
    run_dir: Path = _argument(..., help="a trained run directory, or a .onnx file from `realfake export`"),
    paths: list[str] = _argument(..., help="image files, folders (recursive), globs (quoted) and zips"),
    threshold: float | None = _option(None, help="override the run's decision threshold [default: the run's]"),
    output_format: str = _option("jsonl", "--format", help="jsonl (one JSON object per line) or csv"),
    batch_size: int = _option(256, min=1, help="images per model call"),
    decode_workers: int | None = _option(None, min=1, help="processes decoding the images [default: all cores]"),
    old_workers: int | None = _option(None, "--workers", min=1, hidden=True, help="old name of --decode-workers"),
    device: str = _option("auto", help="auto | cpu | cuda | mps"),
    backend: str | None = _option(
        None, help="torch, or onnxruntime (uses RUN/model.onnx) [default: torch for a run, onnxruntime for a .onnx "
        "file]"
    ),
    explain: Path | None = _option(
        None, help="write a Grad-CAM overlay OUTDIR/<stem>.cam.png per image (evidence for FAKE) [default: none]",
        metavar="OUTDIR"
    ),
    precision: str | None = _option(None, help=PRECISION_HELP),
    out: Path | None = _option(
        None, help="write the rows to FILE instead of printing them: .parquet, .jsonl or .csv (the name says which), "
        "replaced only once every row is written [default: print them]", metavar="FILE"
    ),
    engine: str = _option(
        "local", help="local (this machine) or ray (a Ray cluster; needs --out and pip install 'realfake[ray]')",
        rich_help_panel=RAY,
    ),
    address: str | None = _option(
        None, help="the cluster, auto | HOST:6379 | ray://HOST:10001 [default: $RAY_ADDRESS, else a local Ray "
        "started for this command]", rich_help_panel=RAY,
    ),
    actors: int | None = _option(
        None, min=1, help="model replicas, each loads the model once [default: one per GPU, else one per CPU of the "
        "cluster]", rich_help_panel=RAY,
    ),
) -> None:
    """One result per image, streamed: path, p_fake, label (or error). Exits 1 if no image could be read."""
    from realfake.detector import Detector
    from realfake.predict import (
        check_out,
        explain_paths,
        predict_batches,
        write_file,
        write_rows,
    )

    workers = _renamed(decode_workers, old_workers, "--workers", "--decode-workers")
    if threshold is not None and not 0 < threshold < 1:
        raise RealfakeError("--threshold must be between 0 and 1")
    if backend not in (None, "torch", "onnxruntime"):
        raise RealfakeError(f"--backend must be torch or onnxruntime; got {backend!r}")
    if engine not in ("local", "ray"):
        raise RealfakeError(f"--engine must be local or ray; got {engine!r}")
    if out is not None:
        check_out(out, run_dir)  # before any work: not the run's own files, not a folder, a writable place
        if explain is not None:
            raise RealfakeError("--explain prints its rows: leave out --out")
    if engine == "ray":
        if out is None:
            raise RealfakeError("--engine ray writes its rows to a file: add --out results.parquet (or .jsonl, .csv)")
        if explain is not None or workers is not None:
            raise RealfakeError("--explain and --decode-workers are for --engine local")
        from realfake.predict_ray import ray_batches

        batches = ray_batches(run_dir, paths, address=address, actors=actors, batch_size=batch_size,
                              threshold=threshold, device=device, backend=backend or "auto", precision=precision)
        seen, read = write_file(batches, out)
    else:
        if address is not None or actors is not None:
            raise RealfakeError("--address and --actors are for --engine ray")
        det = Detector.load(run_dir, device=device, backend=backend or "auto", precision=precision)
        if explain is not None:
            results: Any = explain_paths(det, paths, explain, batch_size=batch_size, threshold=threshold)
        else:
            results = predict_batches(det, paths, batch_size=batch_size, threshold=threshold, workers=workers)
        if out is not None:
            seen, read = write_file(results, out)
        else:
            seen, read = write_rows(results, output_format, sys.stdout, with_heatmap=explain is not None)
    if read == 0:
        raise RealfakeError(f"no readable image among {seen} input(s)")
    if out is not None:
        rows = "row" if seen == 1 else "rows"
        typer.echo(f"wrote {seen:,} {rows} to {out} ({read:,} images read, {seen - read:,} unreadable)", err=True)


@app.command()
@friendly
def report(run_dir: Path = _argument(..., help="a trained run directory")) -> None:
    """Re-draw the plots and report.html of a run."""
    from realfake.report import build

    _wrote(build(run_dir), "the report")


@app.command()
@friendly
def serve(
    run_dir: Path = _argument(..., help="a trained run directory (or an exported .onnx file)"),
    host: str = _option("127.0.0.1", help="interface to bind; 0.0.0.0 exposes the server to the network"),
    port: int = _option(8000, help="TCP port"),
    max_upload_mb: float = _option(10.0, help="largest request body accepted, in MB", rich_help_panel=LIMITS),
    max_images: int = _option(32, help="most images accepted in one request", rich_help_panel=LIMITS),
    max_decode_mb: float = _option(
        200.0, help="most MB a request's images may take once decoded, together", rich_help_panel=LIMITS
    ),
    body_timeout: float = _option(
        10.0, help="seconds a client has to send its whole request body (then 408)", rich_help_panel=LIMITS
    ),
    token: str | None = _option(
        None, envvar="REALFAKE_TOKEN", show_envvar=True,
        help="require 'Authorization: Bearer TOKEN' on /v1/* (prefer the environment variable: a command line is "
             "visible to other users of the machine) [default: none: no token asked]",
    ),
    batch_wait_ms: float = _option(5.0, help="how long a request waits for others to share its forward pass; "
                                                  "0 turns micro-batching off", rich_help_panel=LIMITS),
    max_batch: int = _option(64, help="most images in one shared forward pass", rich_help_panel=LIMITS),
    heavy_queue: int = _option(
        8, help="decode-heavy uploads (over 16 MiB once decoded) that may wait for the one heavy-decode thread; one "
                "more is refused at once with 503 and Retry-After (0..20: each waiting one holds a request thread)",
        rich_help_panel=LIMITS,
    ),
    server_workers: int = _option(1, help="server processes, each with its own model and an equal share of the "
                                          "cores (more requests/s on a multi-core machine; N x the memory)"),
    old_workers: int | None = _option(None, "--workers", hidden=True, help="old name of --server-workers"),
    device: str = _option("auto", help="auto | cpu | cuda | mps"),
    precision: str | None = _option(None, help=PRECISION_HELP),
) -> None:
    """Serve the detector over HTTP: a web page at /, the REST API at /v1, its docs at /docs."""
    workers = _renamed(server_workers, old_workers, "--workers", "--server-workers", default=1)
    import uvicorn

    from realfake.serve import create_app

    if workers < 1:
        raise RealfakeError("--server-workers must be at least 1")
    if not all(math.isfinite(v) for v in (max_upload_mb, max_decode_mb)):
        raise RealfakeError("--max-upload-mb and --max-decode-mb must be finite numbers")
    settings = dict(
        max_upload_bytes=int(max_upload_mb * 1_000_000), max_images=max_images, device=device,
        max_decode_bytes=int(max_decode_mb * 1_000_000), body_timeout_s=body_timeout, token=token or None,
        batch_wait_ms=batch_wait_ms, max_batch=max_batch, precision=precision, heavy_queue=heavy_queue,
    )
    api = create_app(run_dir, **settings)  # also with workers: a damaged run stops here, in one line
    if not token and not _is_loopback(host):
        typer.echo(f"warning: {host} is reachable from other machines and no --token (or REALFAKE_TOKEN) is set: "
                   "anyone who can reach this port can use the model", err=True)
    guarded = "; /v1/* needs the token" if token else ""
    typer.echo(f"serving {run_dir} at http://{host}:{port}/  (API docs: /docs{guarded}; Ctrl-C stops)", err=True)
    if workers == 1:
        uvicorn.run(api, host=host, port=port)
        return
    import json
    import os

    from realfake.serve.app import SETTINGS_ENV

    del api  # each worker loads its own
    os.environ[SETTINGS_ENV] = json.dumps({"run": str(run_dir), "workers": workers, **settings})
    uvicorn.run("realfake.serve.app:app_from_env", factory=True, workers=workers, host=host, port=port)


def _is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (a name other than localhost counts as reachable)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command()
@friendly
def export(
    run_dir: Path = _argument(..., help="a trained run directory"),
    fmt: str = _option("onnx", "--format", help="onnx (the only format so far)"),
    out: Path | None = _option(None, help="file to write [default: RUN/model.onnx, RUN/model.int8.onnx with "
                                               "--quantize int8]"),
    quantize: str | None = _option(
        None, help="int8: a statically quantised file, calibrated on the run's training images [default: none: fp32]"
    ),
    calibration_data: str | None = _option(
        None, help="with --quantize: calibrate on these images (folder, zip or CSV; its train/ part if it has one) "
                   "[default: the run's training data]"
    ),
    calibration_images: int | None = _option(
        None, help="with --quantize: how many images to calibrate on [default: 512]"
    ),
) -> None:
    """Export the detector as one ONNX file (uint8 [N,32,32,3] images in, p_fake out); prints its path."""
    from realfake.export import FORMATS, export_onnx

    if fmt not in FORMATS:
        raise RealfakeError(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if quantize is None and (calibration_data is not None or calibration_images is not None):
        raise RealfakeError("--calibration-data and --calibration-images need --quantize int8")
    counted = {} if calibration_images is None else {"calibration_images": calibration_images}
    path = export_onnx(run_dir, out, quantize=quantize, calibration_data=calibration_data, progress=True, **counted)
    kind = "int8 ONNX model" if quantize else "ONNX model"
    _wrote(path, f"the {kind}, one file of {path.stat().st_size / 1e6:.1f} MB")


@app.command()
@friendly
def download() -> None:
    """Fetch CIFAKE from Kaggle with kagglehub (needs internet; prints where it landed)."""
    try:
        import kagglehub
    except ImportError:
        raise RealfakeError("kagglehub is not installed: pip install kagglehub") from None
    try:
        path = kagglehub.dataset_download(CIFAKE_HANDLE)
    except Exception as e:  # noqa: BLE001 - network, auth and API errors all mean the same to the user
        reason = f"{e.__class__.__name__}: {one_line(e, 200)}"
        raise RealfakeError(
            f"could not download CIFAKE ({reason}). Check the internet connection, or download archive.zip "
            f"from https://www.kaggle.com/datasets/{CIFAKE_HANDLE} and pass it as --data"
        ) from None
    typer.echo(str(path))
    typer.echo(f"next: realfake train --data {path} --protocol official", err=True)


zoo_app = typer.Typer(no_args_is_help=True, help="Small image generators trained on REAL images only, sampled per "
                      "family into FAKE/<family>/: fakes from generators a detector never saw.")
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("train")
@friendly
def zoo_train(
    real: str = _option(..., help="data in any layout `train --data` reads; only its REAL images are read "
                             "(with CIFAKE's layout, train/REAL)"),
    family: str = _option(..., help="gan-transposed | gan-nearest | gan-bilinear | gan-subpixel | vae | ddpm"),
    out: Path = _option(..., help="folder for generator.safetensors and train-log.json"),
    seed: int = _option(0, help="seed of initialisation, batches and noise"),
    steps: int = _option(2000, min=1, help="optimiser steps"),
    batch_size: int = _option(64, min=1, help="images per step"),
    limit: int | None = _option(
        None, min=1, help="train on a seeded random subset of this many REAL images [default: all]"
    ),
    device: str = _option("cpu", help="cpu | auto | cuda | cuda:N | mps (byte-identical reruns on the CPU)"),
) -> None:
    """Train one generator family on REAL images; prints the weights file."""
    from realfake.zoo.train import train_from_data

    path = train_from_data(real, family, out, seed=seed, steps=steps, batch_size=batch_size, limit=limit,
                           device=device, progress=True)
    _wrote(path, f"the {family} generator's weights after {steps:,} steps")


@zoo_app.command("sample")
@friendly
def zoo_sample(
    weights: Path = _argument(..., help="a `zoo train` folder (or its generator.safetensors)"),
    n: int = _option(..., min=1, help="how many images"),
    out: Path = _option(..., help="a folder or a .zip; images go to FAKE/<family>/NNNNNN.jpg (JPEG q75), "
                             "other families already sampled there are kept"),
    seed: int = _option(0, help="seed of the noise"),
    device: str = _option("cpu", help="cpu | auto | cuda | cuda:N | mps"),
) -> None:
    """Draw fakes from a trained zoo generator; prints OUT."""
    from realfake.zoo.sample import write_samples

    _wrote(write_samples(weights, n, out, seed=seed, device=device), f"{n:,} sampled images")


@zoo_app.command("pack")
@friendly
def zoo_pack(
    weights: list[Path] = _argument(..., help="`zoo train` folders (or their generator.safetensors)"),
    out: Path = _option(..., help="folder for <family>.safetensors (fp16), e.g. src/realfake/assets/zoo"),
) -> None:
    """Write trained generators as fp16 <family>.safetensors, the packaged zoo's form; prints each file."""
    from realfake.zoo.weights import pack_generator, read_info

    families = [read_info(w).family for w in weights]  # every header is checked before anything is written
    twice = sorted({f for f in families if families.count(f) > 1})
    if twice:
        raise RealfakeError(f"two generators of family {twice[0]!r} given; pack one per family")
    for w in weights:
        _wrote(pack_generator(w, out), f"the {read_info(w).family} generator in fp16")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The `realfake` command: one short function per command, each a thin call into the library."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from realfake import tuning
from realfake.errors import RealfakeError, one_line
from realfake.rundir import RunDir

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Tell AI-generated images from real photographs: train, evaluate, predict, report.",
)
F = TypeVar("F", bound=Callable[..., Any])
SLEEPING_THREADS = ("predict", "serve")  # see _startup
PRECISION_HELP = ("auto | fp32 | bf16: what the PyTorch model computes in [default: the run's setting, normally "
                  "auto: bf16 where the CPU has AMX / AVX-512 BF16, else fp32]; ONNX models always run in fp32")
CIFAKE_HANDLE = "birdy654/cifake-real-and-ai-generated-synthetic-images"


@app.callback()
def _startup(ctx: typer.Context) -> None:
    # The command opts its process in to realfake's process-wide tricks (realfake.tuning; REALFAKE_TUNING=0
    # refuses them), which library use leaves off. `predict` and `serve` also let their OpenMP threads sleep
    # rather than spin while they wait (before torch loads): decoding workers and request handling need those
    # cores. Training keeps libgomp's spinning threads, 1.2-1.5x faster alone on a 2-core Xeon, and shares a busy
    # machine by thread count instead (realfake.device.ThreadGovernor).
    tuning.apply(passive_wait=ctx.invoked_subcommand in SLEEPING_THREADS)


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
    data: str | None = typer.Option(None, help="CIFAKE zip or folder, or any folder with REAL/ and FAKE/"),
    protocol: str | None = typer.Option(
        None, help="seed (70/20/10 split), official (CIFAKE's test/) or holdout:SOURCE (never trained on)"
    ),
    model: str | None = typer.Option(None, help="seed-resnet50 (the notebook's model, default) or fast"),
    weights: str | None = typer.Option(None, help="auto | imagenet | none | path to weights"),
    epochs: int | None = typer.Option(None, help="maximum epochs [default: 10]"),
    patience: int | None = typer.Option(None, help="early-stopping patience [default: 3]"),
    batch_size: int | None = typer.Option(None, help="training batch size [default: 128, or the model's recipe]"),
    lr: float | None = typer.Option(None, help="learning rate [default: 1e-3, or the model's recipe]"),
    seed: int | None = typer.Option(None, help="seed for split, subset and training [default: 42]"),
    device: str | None = typer.Option(None, help="auto | cpu | cuda | cuda:N | mps"),
    precision: str | None = typer.Option(
        None, help="auto (bf16 where the CPU has AMX / AVX-512 BF16 or the GPU has bf16, else fp32) | fp32 | bf16 "
        "(any CPU; slow without native bf16) [default: auto]"
    ),
    limit: int | None = typer.Option(None, help="train on a stratified subset of this many images"),
    out: Path | None = typer.Option(None, help="run directory [default: runs/<model>-<time>]"),
    config: Path | None = typer.Option(None, help="YAML file of options; flags given here win"),
    resume: Path | None = typer.Option(None, help="continue this run from its last checkpoint"),
    threshold_policy: str | None = typer.Option(
        None, help="threshold chosen on validation: balanced | fpr:RATE (e.g. fpr:0.01) | real:RATE "
             "(the lower of balanced and fpr:RATE) | fixed:P "
             "[default: balanced, or the model's recipe: real:0.005 for fast]"
    ),
    uncertain: str | None = typer.Option(None, help="LOW:HIGH band of calibrated p_fake labelled 'uncertain'"),
    ood_level: float | None = typer.Option(
        None, help="label 'uncertain' an image less typical of its class than this share of validation images "
        "[default: 0.96; config ood_level: null turns it off]"
    ),
    augment: str | None = typer.Option(
        None, help="flips | robust (flips + random JPEG and blur) | simulate (robust + simulated up-sampling"
        " artefacts as extra FAKEs)"
        " [default: flips, or the model's recipe: robust for fast]"
    ),
    tta: str | None = typer.Option(
        None, help="none | flip (average with the mirror image) [default: none, or the model's recipe]"
    ),
    data_placement: str | None = typer.Option(
        None, help="auto | device (training images held on the device) | stream (read from the memory-mapped cache "
        "batch by batch, prefetched) [default: auto: device when they fit half the free memory]"
    ),
    sync_batchnorm: bool | None = typer.Option(
        None, "--sync-batchnorm/--no-sync-batchnorm",
        help="under torchrun, BatchNorm statistics over the whole global batch (GPUs only)",
    ),
    extra_fakes: str | None = typer.Option(
        None, help="folder or zip of FAKE images only (e.g. `realfake zoo sample` output) mixed into the training "
        "split; validation and the home test split stay --data's own. `zoo`: images sampled (and cached) from the "
        "generator zoo shipped in the package; a folder of trained generators: sampled from those"
    ),
    extra_fakes_share: float | None = typer.Option(
        None, help="share of the training FAKE images taken by --extra-fakes (as many of the data's own training "
        "fakes left out, so the classes stay balanced) [default: 0.5]"
    ),
) -> None:
    """Train a detector; writes a run directory with weights, metrics, plots and report.html.

    On several processes: `torchrun --nproc-per-node N -m realfake train ...` (DDP; --batch-size stays global).
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
    typer.echo(str(run_dir / RunDir.REPORT))


@app.command()
@friendly
def evaluate(
    run_dir: Path = typer.Argument(..., help="a trained run directory"),
    data: str | None = typer.Option(None, help="evaluate on every image of this data set instead"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
    precision: str | None = typer.Option(None, help=PRECISION_HELP),
) -> None:
    """Re-evaluate a run on its test split (or on another data set); prints the metrics as JSON."""
    from realfake.evaluation import evaluate as evaluate_run

    metrics = evaluate_run(run_dir, data, device=device, precision=precision)
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
@friendly
def adapt(
    run_dir: Path = typer.Argument(..., help="the trained run to adapt (only read, never changed)"),
    data: str = typer.Option(..., help="labelled images of the new generator: REAL/ and FAKE/ folders, a zip, a CSV"),
    out: Path | None = typer.Option(None, help="the new run folder [default: RUN-adapted-<data name>, beside RUN]"),
    finetune_head: bool = typer.Option(
        False, help="also fine-tune the model's head on part of the set (the rest calibrates)"
    ),
    epochs: int = typer.Option(5, min=1, help="fine-tuning epochs (with --finetune-head)"),
    lr: float = typer.Option(1e-3, help="fine-tuning learning rate (with --finetune-head)"),
    calibration_share: float = typer.Option(
        0.5, help="with --finetune-head: share of each class kept for calibration, the rest fine-tunes"
    ),
    threshold_policy: str | None = typer.Option(
        None, help="balanced | fpr:RATE | real:RATE | fixed:P [default: the parent run's policy]"
    ),
    seed: int = typer.Option(0, help="seed of the fine-tune/calibration split and of fine-tuning"),
    overwrite: bool = typer.Option(False, help="replace --out if it already exists"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
) -> None:
    """Re-fit a run's calibration (temperature, threshold, OOD score) on a small labelled set of a new
    generator, optionally fine-tuning its head; writes a new run folder and prints its path."""
    from realfake.adapt import AdaptOptions
    from realfake.adapt import adapt as adapt_run

    child = adapt_run(run_dir, data, out, AdaptOptions(
        finetune_head=finetune_head, epochs=epochs, lr=lr, calibration_share=calibration_share,
        threshold_policy=threshold_policy, seed=seed, overwrite=overwrite, device=device,
    ))
    typer.echo(str(child))


@app.command()
@friendly
def robustness(
    run_dir: Path = typer.Argument(..., help="a trained run directory"),
    data: str | None = typer.Option(None, help="sweep every image of this data set instead of the test split"),
    seed: int = typer.Option(0, help="seed of the noise degradations"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
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
    run_dir: Path = typer.Argument(..., help="a trained run directory, or a .onnx file from `realfake export`"),
    paths: list[str] = typer.Argument(..., help="image files, folders (recursive), globs (quoted) and zips"),
    threshold: float | None = typer.Option(None, help="override the run's decision threshold"),
    output_format: str = typer.Option("jsonl", "--format", help="jsonl (one JSON object per line) or csv"),
    batch_size: int = typer.Option(256, min=1, help="images per model call"),
    workers: int | None = typer.Option(None, min=1, help="decoding processes [default: all cores]"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
    backend: str | None = typer.Option(
        None, help="torch, or onnxruntime (uses RUN/model.onnx); default: torch for a run, onnxruntime for a .onnx file"
    ),
    explain: Path | None = typer.Option(
        None, help="write a Grad-CAM overlay OUTDIR/<stem>.cam.png per image (evidence for FAKE)", metavar="OUTDIR"
    ),
    precision: str | None = typer.Option(None, help=PRECISION_HELP),
    out: Path | None = typer.Option(
        None, help="write the rows to FILE instead of printing them: .parquet, .jsonl or .csv (the name says which), "
        "replaced only once every row is written", metavar="FILE"
    ),
    engine: str = typer.Option(
        "local", help="local (this machine) or ray (a Ray cluster; needs --out and pip install 'realfake[ray]')"
    ),
    address: str | None = typer.Option(
        None, help="--engine ray: the cluster, auto | HOST:6379 | ray://HOST:10001 [default: $RAY_ADDRESS, else a "
        "local Ray started for this command]"
    ),
    actors: int | None = typer.Option(
        None, min=1, help="--engine ray: model replicas, each loads the model once [default: one per GPU, else one "
        "per CPU of the cluster]"
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
            raise RealfakeError("--explain and --workers are for --engine local")
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


@app.command()
@friendly
def report(run_dir: Path = typer.Argument(..., help="a trained run directory")) -> None:
    """Re-draw the plots and report.html of a run."""
    from realfake.report import build

    typer.echo(str(build(run_dir)))


@app.command()
@friendly
def serve(
    run_dir: Path = typer.Argument(..., help="a trained run directory (or an exported .onnx file)"),
    host: str = typer.Option("127.0.0.1", help="interface to bind; 0.0.0.0 exposes the server to the network"),
    port: int = typer.Option(8000, help="TCP port"),
    max_upload_mb: float = typer.Option(10.0, help="largest request body accepted, in MB"),
    max_images: int = typer.Option(32, help="most images accepted in one request"),
    max_decode_mb: float = typer.Option(200.0, help="most MB a request's images may take once decoded, together"),
    body_timeout: float = typer.Option(10.0, help="seconds a client has to send its whole request body (then 408)"),
    token: str | None = typer.Option(
        None, envvar="REALFAKE_TOKEN", show_envvar=True,
        help="require 'Authorization: Bearer TOKEN' on /v1/* (prefer the environment variable: a command line is "
             "visible to other users of the machine)",
    ),
    batch_wait_ms: float = typer.Option(5.0, help="how long a request waits for others to share its forward pass; "
                                                  "0 turns micro-batching off"),
    max_batch: int = typer.Option(64, help="most images in one shared forward pass"),
    heavy_queue: int = typer.Option(
        8, help="decode-heavy uploads (over 16 MiB once decoded) that may wait for the one heavy-decode thread; one "
                "more is refused at once with 503 and Retry-After (0..20: each waiting one holds a request thread)"
    ),
    workers: int = typer.Option(1, help="server processes, each with its own model and an equal share of the "
                                       "cores (more requests/s on a multi-core machine; N x the memory)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
    precision: str | None = typer.Option(None, help=PRECISION_HELP),
) -> None:
    """Serve the detector over HTTP: a web page at /, the REST API at /v1, its docs at /docs."""
    import uvicorn

    from realfake.serve import create_app

    if max_upload_mb <= 0 or max_images < 1 or max_decode_mb <= 0 or body_timeout <= 0:
        raise RealfakeError("--max-upload-mb, --max-decode-mb and --body-timeout must be above 0, --max-images 1+")
    if batch_wait_ms < 0 or max_batch < 1 or workers < 1:
        raise RealfakeError("--batch-wait-ms must be at least 0, --max-batch and --workers at least 1")
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
    run_dir: Path = typer.Argument(..., help="a trained run directory"),
    fmt: str = typer.Option("onnx", "--format", help="onnx (the only format so far)"),
    out: Path | None = typer.Option(None, help="file to write (default: RUN/model.onnx, RUN/model.int8.onnx with "
                                               "--quantize int8)"),
    quantize: str | None = typer.Option(
        None, help="int8: a statically quantised file, calibrated on the run's training images"
    ),
    calibration_data: str | None = typer.Option(
        None, help="with --quantize: calibrate on these images (folder, zip or CSV; its train/ part if it has one) "
                   "instead of the run's training data"
    ),
    calibration_images: int | None = typer.Option(
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
    typer.echo(str(export_onnx(run_dir, out, quantize=quantize, calibration_data=calibration_data, progress=True,
                               **counted)))


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
    real: str = typer.Option(..., help="data in any layout `train --data` reads; only its REAL images are read "
                             "(with CIFAKE's layout, train/REAL)"),
    family: str = typer.Option(..., help="gan-transposed | gan-nearest | gan-bilinear | gan-subpixel | vae | ddpm"),
    out: Path = typer.Option(..., help="folder for generator.safetensors and train-log.json"),
    seed: int = typer.Option(0, help="seed of initialisation, batches and noise"),
    steps: int = typer.Option(2000, min=1, help="optimiser steps"),
    batch_size: int = typer.Option(64, min=1, help="images per step"),
    limit: int | None = typer.Option(None, min=1, help="train on a seeded random subset of this many REAL images"),
    device: str = typer.Option("cpu", help="cpu | auto | cuda | cuda:N | mps (byte-identical reruns on the CPU)"),
) -> None:
    """Train one generator family on REAL images; prints the weights file."""
    from realfake.zoo.train import train_from_data

    typer.echo(str(train_from_data(real, family, out, seed=seed, steps=steps, batch_size=batch_size, limit=limit,
                                   device=device, progress=True)))


@zoo_app.command("sample")
@friendly
def zoo_sample(
    weights: Path = typer.Argument(..., help="a `zoo train` folder (or its generator.safetensors)"),
    n: int = typer.Option(..., min=1, help="how many images"),
    out: Path = typer.Option(..., help="a folder or a .zip; images go to FAKE/<family>/NNNNNN.jpg (JPEG q75), "
                             "other families already sampled there are kept"),
    seed: int = typer.Option(0, help="seed of the noise"),
    device: str = typer.Option("cpu", help="cpu | auto | cuda | cuda:N | mps"),
) -> None:
    """Draw fakes from a trained zoo generator; prints OUT."""
    from realfake.zoo.sample import write_samples

    typer.echo(str(write_samples(weights, n, out, seed=seed, device=device)))


@zoo_app.command("pack")
@friendly
def zoo_pack(
    weights: list[Path] = typer.Argument(..., help="`zoo train` folders (or their generator.safetensors)"),
    out: Path = typer.Option(..., help="folder for <family>.safetensors (fp16), e.g. src/realfake/assets/zoo"),
) -> None:
    """Write trained generators as fp16 <family>.safetensors, the packaged zoo's form; prints each file."""
    from realfake.zoo.weights import pack_generator, read_info

    families = [read_info(w).family for w in weights]  # every header is checked before anything is written
    twice = sorted({f for f in families if families.count(f) > 1})
    if twice:
        raise RealfakeError(f"two generators of family {twice[0]!r} given; pack one per family")
    for w in weights:
        typer.echo(str(pack_generator(w, out)))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

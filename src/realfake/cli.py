"""The `realfake` command: one short function per command, each a thin call into the library."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import typer

from realfake.errors import RealfakeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Tell AI-generated images from real photographs: train, evaluate, predict, report.",
)
F = TypeVar("F", bound=Callable[..., Any])
CIFAKE_HANDLE = "birdy654/cifake-real-and-ai-generated-synthetic-images"


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
    protocol: str | None = typer.Option(None, help="seed (70/20/10 split) or official (CIFAKE's test/)"),
    model: str | None = typer.Option(None, help="model name, e.g. seed-resnet50"),
    weights: str | None = typer.Option(None, help="auto | imagenet | none | path to weights"),
    epochs: int | None = typer.Option(None, help="maximum epochs [default: 10]"),
    patience: int | None = typer.Option(None, help="early-stopping patience [default: 3]"),
    batch_size: int | None = typer.Option(None, help="training batch size [default: 128]"),
    lr: float | None = typer.Option(None, help="Adam learning rate [default: 1e-3]"),
    seed: int | None = typer.Option(None, help="seed for split, subset and training [default: 42]"),
    device: str | None = typer.Option(None, help="auto | cpu | cuda | cuda:N | mps"),
    limit: int | None = typer.Option(None, help="train on a stratified subset of this many images"),
    out: Path | None = typer.Option(None, help="run directory [default: runs/<model>-<time>]"),
    config: Path | None = typer.Option(None, help="YAML file of options; flags given here win"),
    resume: Path | None = typer.Option(None, help="continue this run from its last checkpoint"),
) -> None:
    """Train a detector; writes a run directory with weights, metrics, plots and report.html."""
    from realfake import run
    from realfake.config import RunConfig

    try:
        if resume is not None:
            run_dir = run.resume(resume, epochs=epochs)
        else:
            cfg = RunConfig.from_sources(
                config, data=data, protocol=protocol, model=model, weights=weights, epochs=epochs,
                patience=patience, batch_size=batch_size, lr=lr, seed=seed, device=device, limit=limit,
                out=str(out) if out else None,
            )
            run_dir = run.train(cfg)
    except KeyboardInterrupt:
        target = resume or out or "runs/<run>"
        typer.echo(f"\ninterrupted; continue with: realfake train --resume {target}", err=True)
        raise typer.Exit(130) from None
    typer.echo(str(run_dir / "report.html"))


@app.command()
@friendly
def evaluate(
    run_dir: Path = typer.Argument(..., help="a trained run directory"),
    data: str | None = typer.Option(None, help="evaluate on every image of this data set instead"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
) -> None:
    """Re-evaluate a run on its test split (or on another data set); prints the metrics as JSON."""
    from realfake import run

    metrics = run.evaluate(run_dir, data, device=device)
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
@friendly
def predict(
    run_dir: Path = typer.Argument(..., help="a trained run directory"),
    paths: list[Path] = typer.Argument(..., help="image files and folders (searched recursively)"),
    threshold: float | None = typer.Option(None, help="override the run's decision threshold"),
    batch_size: int = typer.Option(256, help="images per model call"),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps"),
) -> None:
    """One JSON line per image: path, p_fake, label (or error). Exits 1 if no image could be read."""
    from realfake.detector import Detector

    if threshold is not None and not 0 < threshold < 1:
        raise RealfakeError("--threshold must be between 0 and 1")
    det = Detector.load(run_dir, device=device)
    files = list(_expand(paths))
    read = 0
    for start in range(0, len(files), batch_size):
        for pred in det.predict_many(files[start : start + batch_size], threshold):
            d = pred.to_dict()
            d["path"] = d.pop("source")
            typer.echo(json.dumps(d))
            read += pred.error is None
    if read == 0:
        raise RealfakeError(f"no readable image among {len(files)} file(s)")


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif"}


def _expand(paths: list[Path]) -> Iterator[Path]:
    """Files as given; folders walked for image files (by extension) in sorted order."""
    for p in paths:
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p


@app.command()
@friendly
def report(run_dir: Path = typer.Argument(..., help="a trained run directory")) -> None:
    """Re-draw the plots and report.html of a run."""
    from realfake import run

    typer.echo(str(run.report(run_dir)))


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
        reason = f"{e.__class__.__name__}: {e}".splitlines()[0][:200]
        raise RealfakeError(
            f"could not download CIFAKE ({reason}). Check the internet connection, or download archive.zip "
            f"from https://www.kaggle.com/datasets/{CIFAKE_HANDLE} and pass it as --data"
        ) from None
    typer.echo(str(path))
    typer.echo(f"next: realfake train --data {path} --protocol official", err=True)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

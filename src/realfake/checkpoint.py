"""What a run's checkpoint/ folder holds, written and read without pickle.

A run folder is data that may come from anyone (shared, downloaded, restored from a backup), and
unpickling a file runs whatever code the file names. So every tensor (weights, Adam's moments and step
counts, RNG states as uint8) goes into safetensors files and everything else (epoch, hyper-parameters,
scheduler counters, early stopping, history) into one JSON file; reading them can only yield numbers.

    checkpoint/
      model.safetensors   the weights after the last finished epoch
      best.safetensors    the weights of the best epoch so far
      state.safetensors   optimizer state tensors ("optimizer.state.<param id>.<name>") and RNG states
                          ("rng.torch", "rng.generator", "rng.cuda.<i>")
      state.json          {"format", "version", "epoch", "optimizer": {"class", "state", "param_groups"},
                           "scheduler": {"class", "state"}, "early_stopping", "rng", "history"};
                          a tensor appears here as {"$tensor": "<key in state.safetensors>"}, a float that
                          JSON cannot hold as {"$float": "inf" | "-inf" | "nan"}, a tuple as {"$tuple": [...]}

The folder is swapped in whole (realfake.atomic.atomic_dir), so a crash or a full disk leaves the previous
checkpoint. Checkpoints from before this format (state.pt, a pickle) are refused, never opened.
"""

from __future__ import annotations

__side__ = "training"  # see tests/test_layers.py

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as st_save
from torch import nn

from realfake.atomic import atomic_dir, existing_dir
from realfake.errors import RealfakeError, one_line
from realfake.models.registry import first_non_finite

FORMAT = "realfake-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"
LEGACY_FILE = "state.pt"  # the pickle older versions wrote; its presence is reported, its content never read

# Per-parameter optimizer state that has the parameter's shape (Adam, AdamW, SGD, RMSprop, Adagrad, ...);
# checked on load so that a wrong file fails now, not with a shape error in the middle of the next epoch.
PARAM_SHAPED = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "acc_delta", "sum",
                "exp_inf", "prev", "ax"}
_TAGS = ("$tensor", "$float", "$tuple")
# Optimizer flags that say how torch computes a step, not what it computes: they may differ between machines
# (fused Adam on one device, not on another). Every other flag (amsgrad, maximize, ...) must be the run's own.
IMPLEMENTATION = {"foreach", "fused", "capturable", "differentiable"}


@dataclass
class Checkpoint:
    """A checkpoint as read from disk: plain numbers and CPU tensors, checked for form but not yet applied."""

    path: Path
    epoch: int  # the last finished epoch, counted from 0
    model: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # {"class", "torch": torch's state dict (int parameter ids)}
    scheduler: dict[str, Any]  # {"class", "state"}
    early_stopping: dict[str, Any]
    rng: dict[str, Any]  # {"torch": uint8 tensor, "generator": uint8 tensor, "cuda": [uint8 tensor, ...]?}
    history: list[dict[str, Any]]

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        early_stopping: Any,
        generator: torch.Generator,
    ) -> None:
        """Put the checkpoint into freshly built training objects, checking first that it fits them, so that a
        foreign or damaged file stops the resume now rather than an epoch later.

        `early_stopping` is a dataclass instance whose fields are overwritten from the checkpoint.
        """
        current = model.state_dict()
        _check_weights(self.path / MODEL_FILE, self.model, current, self.path)
        _check_weights(self.path / BEST_FILE, self.best, current, self.path)
        state_json = self.path / STATE_FILE
        _check_optimizer(state_json, self.path, self.optimizer, optimizer)
        if self.scheduler["class"] != type(scheduler).__name__:
            raise _damaged(state_json, self.path, f"it holds {self.scheduler['class']} state but the run's "
                           f"schedule is {type(scheduler).__name__} (was config.yaml changed?)")
        names = {f.name for f in dataclasses.fields(early_stopping)}
        if set(self.early_stopping) != names or not all(
            _is_number(v) for v in self.early_stopping.values()
        ):
            raise _damaged(state_json, self.path, f"early_stopping must hold the numbers {sorted(names)}")
        if unknown := sorted(self.scheduler["state"].keys() - scheduler.state_dict().keys()):
            raise _damaged(state_json, self.path, f"unknown scheduler settings {unknown[:3]}")
        if wrong := _kind_mismatch(self.scheduler["state"], scheduler.state_dict(), "scheduler.state"):
            raise _damaged(state_json, self.path, wrong)
        try:
            model.load_state_dict(self.model)
            optimizer.load_state_dict(self.optimizer["torch"])
            _state_in_parameter_layout(optimizer)
            scheduler.load_state_dict(self.scheduler["state"])
        except Exception as e:  # noqa: BLE001 - plain data torch could not take: a damaged or foreign file
            raise _damaged(state_json, self.path, f"{e.__class__.__name__}: {one_line(e, 200)}") from None
        for k, v in self.early_stopping.items():
            setattr(early_stopping, k, v)
        try:
            generator.set_state(self.rng["generator"])
            torch.set_rng_state(self.rng["torch"])
            if "cuda" in self.rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self.rng["cuda"])
        except (RuntimeError, ValueError, TypeError) as e:
            raise _damaged(self.path / TENSORS_FILE, self.path, f"bad RNG state: {e}") from None


def _state_in_parameter_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor its parameter's memory layout (strides) again.

    safetensors stores tensors contiguous, but the model trains in channels_last; PyTorch's fused Adam walks the
    parameter, its gradient and its moments as raw memory, so moments read back in another layout were paired
    with the wrong elements and a resumed run drifted from an uninterrupted one (the per-tensor loop did not
    care). A state tensor of the parameter's shape is copied into the parameter's layout.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    state[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


# --- writing -------------------------------------------------------------------------------------------


def write_checkpoint(
    ckpt_dir: Path,
    model: nn.Module,
    best_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    early_stopping: Any,
    generator: torch.Generator,
    epoch: int,
    history: list[dict[str, Any]],
) -> None:
    """Everything needed to continue after `epoch`, swapped in as one folder.

    All of it is encoded in memory first, so a state that cannot be stored without pickle fails before the
    disk is touched; a failed write (disk full, quota) leaves the previous checkpoint and says so in one line.
    """
    ckpt_dir = Path(ckpt_dir)
    opt_sd = optimizer.state_dict()
    tree = {
        "epoch": int(epoch),
        "optimizer": {
            "class": type(optimizer).__name__,
            "state": {str(pid): s for pid, s in opt_sd["state"].items()},  # JSON keys are strings
            "param_groups": opt_sd["param_groups"],
        },
        "scheduler": {"class": type(scheduler).__name__, "state": scheduler.state_dict()},
        "early_stopping": dataclasses.asdict(early_stopping)
        if dataclasses.is_dataclass(early_stopping)
        else dict(early_stopping),
        "rng": _rng_state(generator),
        "history": history,
    }
    tensors: dict[str, torch.Tensor] = {}
    encoded = {"format": FORMAT, "version": VERSION, **{k: _encode(v, k, tensors) for k, v in tree.items()}}
    try:
        state_text = json.dumps(encoded, allow_nan=False, indent=1) + "\n"
    except ValueError as e:  # _encode should have caught it; never fall back to anything that pickles
        raise RealfakeError(f"cannot write the checkpoint {ckpt_dir}: {e}") from None
    files = {
        MODEL_FILE: st_save(_cpu(model.state_dict())),
        BEST_FILE: st_save(_cpu(best_state)),
        TENSORS_FILE: st_save(tensors),
        STATE_FILE: state_text.encode("utf-8"),
    }
    name = ""
    try:
        with atomic_dir(ckpt_dir) as tmp:
            for name, data in files.items():
                _write_synced(tmp / name, data)
            name = ""
    except OSError as e:
        where = ckpt_dir / name if name else ckpt_dir
        todo = (
            f"the previous checkpoint is kept. Free disk space, then continue with: realfake train --resume "
            f"{ckpt_dir.parent}"
            if existing_dir(ckpt_dir) is not None
            else "no checkpoint was saved. Free disk space, then train again with a new --out"
        )
        raise RealfakeError(f"could not write the checkpoint {where} ({e.strerror or e}); {todo}") from None


def _write_synced(path: Path, data: bytes) -> None:
    """Write and fsync, so a checkpoint that was swapped in is on disk, not just in the page cache."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies (safetensors refuses tensors that share storage, e.g. tied weights)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "generator": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """`obj` as JSON values; tensors move to `tensors` under `key` (their path), anything else is refused."""
    if isinstance(obj, torch.Tensor):
        if key in tensors:
            raise RealfakeError(f"cannot write the checkpoint: two tensors would be stored as {key!r}")
        tensors[key] = obj.detach().to("cpu").contiguous().clone()  # clone: safetensors refuses shared storage
        return {"$tensor": key}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"$float": repr(obj)}  # 'inf', '-inf', 'nan'
    if isinstance(obj, tuple):
        return {"$tuple": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or k.startswith("$"):
                raise RealfakeError(f"cannot write the checkpoint: {key} has the key {k!r}, which JSON cannot hold")
            out[k] = _encode(v, f"{key}.{k}", tensors)
        return out
    raise RealfakeError(
        f"cannot write the checkpoint: {key} is of type {type(obj).__name__}, not a number, string or tensor "
        f"(realfake never pickles checkpoint state)"
    )


# --- reading -------------------------------------------------------------------------------------------


def read_checkpoint(ckpt_dir: Path) -> Checkpoint:
    """The checkpoint in `ckpt_dir`, checked for form; a RealfakeError naming the file if it is unusable.

    Nothing here can run code: safetensors and JSON only. An old checkpoint's state.pt is never opened.
    """
    ckpt_dir = Path(ckpt_dir)
    state_json = ckpt_dir / STATE_FILE
    if not state_json.is_file():
        if (ckpt_dir / LEGACY_FILE).exists():
            raise RealfakeError(
                f"{ckpt_dir} is a checkpoint from an older realfake ({LEGACY_FILE}, a pickle, is never loaded): "
                f"{_retrain(ckpt_dir)}"
            )
        raise _damaged(state_json, ckpt_dir, "the file is missing")
    try:
        raw = json.loads(state_json.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError) as e:
        raise _damaged(state_json, ckpt_dir, f"not valid JSON: {one_line(e, 200)}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise _damaged(state_json, ckpt_dir, f"not a {FORMAT} file")
    if raw.get("version") != VERSION:
        raise RealfakeError(
            f"{state_json} has checkpoint format version {raw.get('version')!r}; this realfake reads version "
            f"{VERSION}: resume with the realfake that wrote it, or start a new run with --out"
        )
    tensors = _load_tensors(ckpt_dir / TENSORS_FILE, ckpt_dir)
    used: set[str] = set()
    try:
        tree = {k: _decode(v, tensors, used) for k, v in raw.items() if k not in ("format", "version")}
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise _damaged(state_json, ckpt_dir, one_line(e, 200)) from None
    if unused := sorted(set(tensors) - used):
        raise _damaged(ckpt_dir / TENSORS_FILE, ckpt_dir, f"unexpected tensors {unused[:3]}")
    missing = {"epoch", "optimizer", "scheduler", "early_stopping", "rng", "history"} - set(tree)
    if missing:
        raise _damaged(state_json, ckpt_dir, f"missing {sorted(missing)}")
    epoch, history, early = tree["epoch"], tree["history"], tree["early_stopping"]
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise _damaged(state_json, ckpt_dir, f"epoch must be a whole number >= 0, not {epoch!r}")
    if not isinstance(history, list) or not all(
        isinstance(r, dict) and all(_is_number(v) for v in r.values()) for r in history
    ):
        raise _damaged(state_json, ckpt_dir, "history must be a list of rows of numbers")
    if not isinstance(early, dict):
        raise _damaged(state_json, ckpt_dir, "early_stopping must be an object")
    return Checkpoint(
        path=ckpt_dir,
        epoch=epoch,
        model=_load_tensors(ckpt_dir / MODEL_FILE, ckpt_dir),
        best=_load_tensors(ckpt_dir / BEST_FILE, ckpt_dir),
        optimizer=_read_optimizer(tree["optimizer"], state_json, ckpt_dir),
        scheduler=_read_scheduler(tree["scheduler"], state_json, ckpt_dir),
        early_stopping=early,
        rng=_read_rng(tree["rng"], ckpt_dir),
        history=history,
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (the checkpoint writes it as {{'$float': ...}})")


def _decode(obj: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    """Undo _encode: tensor references from `tensors` (recorded in `used`), tagged floats and tuples."""
    if isinstance(obj, list):
        return [_decode(v, tensors, used) for v in obj]
    if not isinstance(obj, dict):
        return obj
    tags = [k for k in obj if k.startswith("$")]
    if not tags:
        return {k: _decode(v, tensors, used) for k, v in obj.items()}
    if len(obj) != 1 or tags[0] not in _TAGS:
        raise ValueError(f"unknown tag {tags[0]!r}")
    tag, value = tags[0], obj[tags[0]]
    if tag == "$tensor":
        if not isinstance(value, str) or value not in tensors:
            raise KeyError(f"tensor {value!r} is not in {TENSORS_FILE}")
        used.add(value)
        return tensors[value]
    if tag == "$float":
        if value not in ("inf", "-inf", "nan"):
            raise ValueError(f"bad $float {value!r}")
        return float(value)
    if not isinstance(value, list):
        raise ValueError("$tuple must hold a list")
    return tuple(_decode(v, tensors, used) for v in value)


def _read_optimizer(opt: Any, state_json: Path, ckpt_dir: Path) -> dict[str, Any]:
    if not isinstance(opt, dict) or not isinstance(opt.get("class"), str):
        raise _damaged(state_json, ckpt_dir, "optimizer must be an object with a class")
    state, groups = opt.get("state"), opt.get("param_groups")
    if not isinstance(state, dict) or not isinstance(groups, list) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list)
        and all(isinstance(p, int) and not isinstance(p, bool) for p in g["params"])
        for g in groups
    ):
        raise _damaged(state_json, ckpt_dir, "optimizer needs state and param_groups with integer params")
    ids = {p for g in groups for p in g["params"]}
    by_id: dict[int, Any] = {}
    for k, v in state.items():
        if not k.isdigit() or int(k) not in ids or not isinstance(v, dict):
            raise _damaged(state_json, ckpt_dir, f"optimizer state for unknown parameter {k!r}")
        by_id[int(k)] = v
    return {"class": opt["class"], "torch": {"state": by_id, "param_groups": groups}}


def _read_scheduler(sched: Any, state_json: Path, ckpt_dir: Path) -> dict[str, Any]:
    if not isinstance(sched, dict) or not isinstance(sched.get("class"), str) or not isinstance(
        sched.get("state"), dict
    ):
        raise _damaged(state_json, ckpt_dir, "scheduler must be an object with a class and a state")
    return sched


def _read_rng(rng: Any, ckpt_dir: Path) -> dict[str, Any]:
    ok = lambda t: isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1  # noqa: E731
    if (
        not isinstance(rng, dict)
        or not (ok(rng.get("torch")) and ok(rng.get("generator")))
        or ("cuda" in rng and not (isinstance(rng["cuda"], list) and all(ok(t) for t in rng["cuda"])))
    ):
        raise _damaged(ckpt_dir / TENSORS_FILE, ckpt_dir, "the RNG states must be 1-D uint8 tensors")
    return rng


def _check_optimizer(state_json: Path, ckpt_dir: Path, saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Same optimizer, same parameter layout, and moment tensors of each parameter's shape."""
    if saved["class"] != type(optimizer).__name__:
        raise _damaged(state_json, ckpt_dir, f"it holds {saved['class']} state but the run uses "
                       f"{type(optimizer).__name__}")
    groups = saved["torch"]["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        raise _damaged(state_json, ckpt_dir, "its optimizer parameter groups do not fit the model")
    fresh = optimizer.state_dict()["param_groups"]  # parameter ids as the checkpoint holds them
    for i, (g, now) in enumerate(zip(groups, fresh, strict=True)):
        if unknown := sorted(g.keys() - now.keys()):
            raise _damaged(state_json, ckpt_dir, f"unknown optimizer settings {unknown[:3]}")
        if wrong := _kind_mismatch(g, now, f"optimizer.param_groups.{i}"):
            raise _damaged(state_json, ckpt_dir, wrong)
        if switched := sorted(k for k, v in g.items() if isinstance(now.get(k), bool) and k not in IMPLEMENTATION
                              and v != now[k]):
            raise _damaged(state_json, ckpt_dir, f"optimizer setting {switched[0]} is {g[switched[0]]}, the run's "
                           f"optimizer has {now[switched[0]]} (was it written by another realfake?)")
    params = dict(zip((p for g in groups for p in g["params"]),
                      (p for g in optimizer.param_groups for p in g["params"]), strict=True))
    for pid, entries in saved["torch"]["state"].items():
        for name, value in entries.items():
            if value is None or name not in PARAM_SHAPED and (isinstance(value, torch.Tensor) or _is_number(value)):
                continue
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise _damaged(state_json, ckpt_dir, f"optimizer.state.{pid}.{name} must be a tensor of floats, not "
                               f"{_short(value)}")
            if value.shape != params[pid].shape:
                raise _damaged(ckpt_dir / TENSORS_FILE, ckpt_dir, f"optimizer.state.{pid}.{name} has shape "
                               f"{tuple(value.shape)}, its parameter {tuple(params[pid].shape)}")


def _kind_mismatch(saved: Any, fresh: Any, name: str) -> str | None:
    """Where `saved` is not the kind of value `fresh` (the freshly built object's own) is, what is wrong there.

    torch's load_state_dict takes any value: a learning rate of "abc" or a scheduler counter that is a list
    fails only at the first step, an epoch later, with a traceback. A number must stay a number (finite where the
    run's is), a flag a flag or None, a string a string, a tensor a tensor, a list a list as long.
    """
    if isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)) or len(saved) != len(fresh):
            return f"{name} must be a list of {len(fresh)}, not {_short(saved)}"
        pairs = [(f"{name}.{i}", a, b) for i, (a, b) in enumerate(zip(saved, fresh, strict=True))]
    elif isinstance(fresh, dict):
        if not isinstance(saved, dict):
            return f"{name} must be an object, not {_short(saved)}"
        pairs = [(f"{name}.{k}", saved[k], fresh[k]) for k in saved if k in fresh]
    else:
        if isinstance(fresh, bool) or fresh is None:
            ok, kind = saved is None or isinstance(saved, bool), "a flag"
        elif _is_number(fresh):
            ok, kind = _is_number(saved) and (math.isfinite(saved) or not math.isfinite(fresh)), "a number"
        elif isinstance(fresh, (str, torch.Tensor)):
            ok, kind = isinstance(saved, type(fresh)), f"a {type(fresh).__name__}"
        else:
            return None  # anything else (a function's state) is torch's to check
        return None if ok else f"{name} must be {kind}, not {_short(saved)}"
    return next(filter(None, (_kind_mismatch(a, b, where) for where, a, b in pairs)), None)


def _short(value: Any) -> str:
    return "a tensor" if isinstance(value, torch.Tensor) else repr(value)[:40]


def _check_weights(
    file: Path, saved: dict[str, torch.Tensor], current: dict[str, torch.Tensor], ckpt_dir: Path
) -> None:
    """The model's keys, shapes and dtypes exactly: a mismatch means a different model or a damaged file."""
    if missing := sorted(current.keys() - saved.keys()):
        raise _damaged(file, ckpt_dir, f"{len(missing)} weights missing (e.g. {missing[0]}); is it this run's model?")
    if extra := sorted(saved.keys() - current.keys()):
        raise _damaged(file, ckpt_dir, f"{len(extra)} unexpected weights (e.g. {extra[0]}); is it this run's model?")
    for k, v in current.items():
        if saved[k].shape != v.shape or saved[k].dtype != v.dtype:
            raise _damaged(file, ckpt_dir, f"{k} is {saved[k].dtype} {tuple(saved[k].shape)}, the model needs "
                           f"{v.dtype} {tuple(v.shape)}")
    if (bad := first_non_finite(saved)) is not None:
        raise _damaged(file, ckpt_dir, f"{bad} holds NaN or infinite values")


def _load_tensors(file: Path, ckpt_dir: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise _damaged(file, ckpt_dir, "the file is missing")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise _damaged(file, ckpt_dir, f"not a readable safetensors file: {one_line(e, 200)}") from None


def _damaged(file: Path, ckpt_dir: Path, problem: str) -> RealfakeError:
    """One line: which file, what is wrong, and how to get the run's model anyway."""
    return RealfakeError(f"cannot resume from {file}: {problem}; {_retrain(ckpt_dir)}")


def _retrain(ckpt_dir: Path) -> str:
    """The way on when a checkpoint cannot be used: the run's config.yaml trains the same model again.

    Not "delete the checkpoint and --resume": without one, resume starts from untrained weights, not the
    run's starting weights (ImageNet, a file).
    """
    run = ckpt_dir.parent
    return f"retrain it as a new run: realfake train --config {run / 'config.yaml'} --out NEW_FOLDER"




def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)

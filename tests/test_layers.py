"""The package's shape, checked: no import cycle, no import that points up a layer, and nothing that
predicts (inference, export, serving, batch prediction) reaches the training loop.

Which modules train and which predict is said by the package itself, not by a list here: every module declares
`__side__`: "training" (the training loop and what only it and offline tools use), "predicting" (inference and
its faces), "shared" (both sides import it), or "face" (the command and the package's front door, which reach
both). Nothing but a training module or a face may reach a training module.

Every `import` in the source counts, including the ones inside functions and under TYPE_CHECKING: a
function-local import is still a dependency, only a hidden one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first: a module may import only modules listed before it. A new module must be placed here, which
# is the point: where it sits in the journey of an image is a decision, not an accident.
LAYERS = [
    "realfake.errors",
    "realfake.verbosity",
    "realfake.tuning",
    "realfake._kernels",
    "realfake._kernels.onednn",
    "realfake._kernels.jpeg",
    "realfake._kernels.small_maps",
    "realfake._kernels.state_dict",
    "realfake._kernels.cpu_caps",
    "realfake.atomic",
    "realfake.contract",
    "realfake.calibration",
    "realfake.config",
    "realfake.device",
    "realfake.distributed",
    "realfake.data",
    "realfake.data.images",
    "realfake.data.walk",
    "realfake.data.inputs",
    "realfake.data.sources",
    "realfake.data.splits",
    "realfake.data.tensors",
    "realfake.data.placement",
    "realfake.data.batches",
    "realfake.data.cache",
    "realfake.zoo.families",
    "realfake.zoo.weights",
    "realfake.zoo.train",
    "realfake.zoo.sample",
    "realfake.zoo.builtin",
    "realfake.zoo.extras",
    "realfake.zoo",
    "realfake.data.extra",
    "realfake.rundir",
    "realfake.models.fused",
    "realfake.models.registry",
    "realfake.models.seed_resnet50",
    "realfake.models.fast",
    "realfake.models",
    "realfake.metrics",
    "realfake.infer",
    "realfake.onnxfile",
    "realfake.explain",
    "realfake.detector",
    "realfake.checkpoint",
    "realfake.fit",
    "realfake.quantize",
    "realfake.export",
    "realfake.predict",
    "realfake.predict_ray",
    "realfake.report.summary",
    "realfake.report.plots",
    "realfake.report.html",
    "realfake.report.model_card",
    "realfake.report",
    "realfake.evaluation",
    "realfake.robustness",
    "realfake.training",
    "realfake.adapt",
    "realfake.serve.decoding",
    "realfake.serve.batching",
    "realfake.serve.guards",
    "realfake.serve.app",
    "realfake.serve",
    "realfake.cli",
    "realfake.__main__",
    "realfake",
]
def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.joinpath("realfake").rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every realfake module `path` imports, anywhere in the file."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("realfake"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if not base.startswith("realfake"):
                continue
            for alias in node.names:  # `from realfake import training` names a module, not an attribute
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m != me}


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer():
    assert sorted(set(all_modules()) - set(LAYERS)) == []


def upward_imports(layers: list[str]) -> list[str]:
    rank = {m: i for i, m in enumerate(layers)}
    return sorted(f"{m} imports {d}" for m, deps in graph().items() for d in deps if rank[d] >= rank[m])


def test_no_import_points_up_a_layer_so_there_is_no_cycle():
    assert upward_imports(LAYERS) == []


def test_the_checker_can_fail():
    """Hidden (function-local) imports are seen, and an upward one is reported."""
    deps = imports_of(SRC / "realfake" / "detector.py", all_modules())
    assert {"realfake.explain", "realfake.models"} <= deps  # both imported inside methods
    swapped = [m for m in LAYERS if m != "realfake.detector"]
    swapped.insert(swapped.index("realfake.calibration"), "realfake.detector")
    assert "realfake.detector imports realfake.calibration" in upward_imports(swapped)


def closure(start: str, g: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(g.get(m, ()))
    return seen


SIDES_ALLOWED = ("training", "predicting", "shared", "face")


def side_of(path: Path) -> str | None:
    """The module's `__side__ = "..."` (a top-level assignment of a string), or None."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["__side__"]
                and isinstance(node.value, ast.Constant)):
            return node.value.value
    return None


def sides() -> dict[str, str | None]:
    return {name: side_of(path) for name, path in all_modules().items()}


def modules_on(side: str) -> set[str]:
    return {m for m, s in sides().items() if s == side}


def test_every_module_declares_its_side():
    assert {m: s for m, s in sides().items() if s not in SIDES_ALLOWED} == {}


def reaching_training(g: dict[str, set[str]], side_of_module: dict[str, str | None]) -> dict[str, list[str]]:
    """Each predicting or shared module that reaches (imports, at any depth) a training module, with those."""
    training = {m for m, s in side_of_module.items() if s == "training"}
    found = {m: sorted(closure(m, g) & training) for m, s in side_of_module.items() if s in ("predicting", "shared")}
    return {m: r for m, r in found.items() if r}


def test_nothing_but_training_and_the_faces_reaches_the_training_loop():
    assert len(modules_on("training")) >= 5 and len(modules_on("predicting")) >= 5  # the sides are declared
    assert reaching_training(graph(), sides()) == {}


def test_the_side_checker_can_fail():
    """A shared module that imports a training one, directly or through another, is reported."""
    g = {"a": {"b"}, "b": {"t"}, "t": set(), "p": {"a"}}
    side = {"a": "shared", "b": "shared", "t": "training", "p": "predicting"}
    assert reaching_training(g, side) == {"a": ["t"], "b": ["t"], "p": ["t"]}
    assert reaching_training(g, {**side, "b": "training"}) == {"a": ["b", "t"], "p": ["b", "t"]}


def test_importing_the_faces_loads_no_training_code():
    """The same at run time: serving, predicting and exporting load no training module."""
    training = sorted(modules_on("training"))
    code = (
        "import sys, realfake.serve, realfake.predict, realfake.export, realfake.detector;"
        f"print(sorted(m for m in sys.modules if m in {training!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip() == "[]"

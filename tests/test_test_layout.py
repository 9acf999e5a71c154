"""The test tree's layout: the product's tests never import the benchmarks/ harness (`make test` must pass without
it and its extras), folders mirror src/realfake's packages, and every test file's name is unique (there are no
__init__.py files, so pytest imports each file by its bare name)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src" / "realfake"
BENCHMARK_TESTS = TESTS / "benchmarks"
IMPORTERS = {"import_module", "__import__", "importorskip"}  # calls that take a module's dotted name


def _is_benchmarks(name: str | None) -> bool:
    return name is not None and (name == "benchmarks" or name.startswith("benchmarks."))


def benchmark_imports(path: Path) -> list[str]:
    """Where the file imports the benchmarks package, at any depth (a function's own import counts too), as
    'line: what'."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if _is_benchmarks(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_benchmarks(node.module):
            found.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if func in IMPORTERS and isinstance(node.args[0].value, str) and _is_benchmarks(node.args[0].value):
                found.append(f"{node.lineno}: {func}({node.args[0].value!r})")
    return sorted(found, key=lambda hit: int(hit.split(":")[0]))


def test_only_the_benchmark_tests_import_the_benchmarks_harness():
    outside = {p.relative_to(TESTS).as_posix(): hits for p in sorted(TESTS.rglob("*.py"))
               if BENCHMARK_TESTS not in p.parents and (hits := benchmark_imports(p))}
    assert not outside, f"move these tests to tests/benchmarks/: {outside}"


def test_the_scan_finds_top_level_function_local_and_dynamic_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom benchmarks.run import main\n\ndef f():\n    import benchmarks.common as c\n"
                     "    from benchmarks import readme_table\n    importlib.import_module('benchmarks.jpeg_codec')\n"
                     "    from benchmarksx import y\n    from . import benchmarks\n")
    assert benchmark_imports(probe) == ["2: from benchmarks.run import ...", "5: import benchmarks.common",
                                        "6: from benchmarks import ...", "7: import_module('benchmarks.jpeg_codec')"]


def test_test_folders_mirror_the_packages_they_test():
    packages = {p.parent.name.lstrip("_") for p in SRC.glob("*/__init__.py")}  # _kernels is tested in kernels/
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders - {"benchmarks"} <= packages, folders - {"benchmarks"} - packages


def test_every_test_file_name_is_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1], names.most_common(3)

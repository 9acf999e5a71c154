"""The README's one results table, made from committed benchmark JSONs: `python -m benchmarks.readme_table`.

Why generated: a figure typed by hand drifts from the file it came from. This table takes the labels users get
(FAKE / uncertain / REAL shares) at home and on a generator the model never saw from the generalization bench
(one JSON a seed), and the speed against the Keras notebook reference from one `benchmarks.run` JSON, and names
each figure's machine and file. tests/test_docs_site.py checks that the README holds this output verbatim.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from benchmarks.run import REPO, isa_line

GENERALIZATION = tuple(
    f"benchmarks/results/generalization/vm-2026-12-07-f1a31d9-seed{s}.json" for s in (42, 7, 1)
)
SPEED = "benchmarks/results/bench/xeon-amx-2026-11-29-f090abd-run10.json"
METHOD = "fast-recipe"
LABELS = ("FAKE", "uncertain", "REAL")


def _load(path: str) -> dict[str, Any]:
    return json.loads((REPO / path).read_text())


def machine(m: dict[str, Any]) -> str:
    """A machine in a few words: CPU (AMX where it has it), cores, GPU, load average at the start."""
    cpu = m.get("cpu", "unknown CPU").replace("(R)", "").replace(" Processor", "")
    amx = " with AMX" if "amx_bf16" in isa_line(m).split() else ""
    gpu = m.get("gpu") or "no GPU"
    return f"{cpu}{amx}, {m.get('cores', '?')} cores, {gpu}"


def _span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def _pct(values: list[float], fmt: str = "{:.1f}") -> str:
    return _span([100 * v for v in values], fmt) + "%"


def _shares(runs: list[dict[str, Any]], where: str, cls: str) -> str:
    """`FAKE 96.3% / uncertain 3.7% / REAL 0%` over the seeds (a range where they differ)."""
    return " / ".join(f"{k} {_pct([r[where]['labels'][cls]['shares'][k] for r in runs])}" for k in LABELS)


def table() -> str:
    """The Markdown table and the line under it."""
    gen = [_load(p) for p in GENERALIZATION]
    runs = [g["methods"][METHOD] for g in gen]
    seeds = " / ".join(str(g["args"]["seed"]) for g in gen)
    gm = machine(gen[0]["machine"])
    n_home = runs[0]["home"]["n"]
    n_fake, n_real = runs[0]["heldout"]["n_fake"], runs[0]["heldout"]["n_real"]
    speed = _load(SPEED)
    models, ratios = speed["models"], speed["ratios"]
    sm = machine(speed["machine"]) + f", {models['fast'].get('precision', '?')}"
    gen_files = "`" + GENERALIZATION[0].replace("seed42", "seed{42,7,1}") + "`"
    g_load, s_load = gen[0]["machine"]["load_average_start"][0], speed["machine"]["load_average_start"][0]
    rows = [
        (f"home test split (stand-in, {n_home:,} images): accuracy",
         _pct([r["home"]["accuracy"] for r in runs], "{:.2f}"), gm),
        ("home: real photos labelled", _shares(runs, "home", "REAL"), gm),
        ("home: fakes labelled", _shares(runs, "home", "FAKE"), gm),
        (f"unseen generator ganC ({n_fake:,} fakes + {n_real:,} real): ROC AUC",
         _span([r["heldout"]["roc_auc"] for r in runs], "{:.4f}"), gm),
        ("unseen generator: fakes labelled", _shares(runs, "heldout", "FAKE"), gm),
        ("training speed, `fast` vs the Keras notebook",
         f"{models['fast']['train_images_per_s']:,.0f} vs {models['reference']['train_images_per_s']:,.0f} "
         f"images/s ({ratios['fast_train_throughput']:.1f}x)", sm),
        ("training speed, `seed-resnet50` vs the Keras notebook",
         f"{models['seed-resnet50']['train_images_per_s']:,.0f} vs "
         f"{models['reference']['train_images_per_s']:,.0f} images/s "
         f"({ratios['seed_resnet50_train_throughput']:.1f}x)", sm),
        ("prediction, `fast` vs the Keras notebook",
         f"{ratios['fast_predict_throughput']:.1f}x in memory, {ratios['fast_predict_from_files_throughput']:.1f}x "
         "from JPEG files", sm),
    ]
    lines = ["| measured | result | machine |", "|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    command = gen[0]["command"].split(" --out-dir")[0].replace(" --seed 42", " --seed N")
    lines.append(
        f"Labels: `fast`'s recipe, {runs[0]['epochs_run']} epochs on the stand-in's {runs[0]['n_train']:,} training "
        f"images, seeds {seeds}, a range where they differ (`{command}`, load {g_load:.1f} at the start; "
        f"{gen_files}); ganC's real photos are the home test split's, labelled as above. Speed: "
        f"`python -m benchmarks.run --table {SPEED}` (load {s_load:.1f}; 3,000 images, 3 epochs). "
        "Stand-in data, not CIFAKE."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    argparse.ArgumentParser(prog="python -m benchmarks.readme_table", description=__doc__.splitlines()[0]).parse_args(
        argv
    )
    text = table()
    print(text)
    return text


if __name__ == "__main__":
    main()

"""Coverage-guided fuzzing of `realfake.data.images.decode_bytes` with atheris (libFuzzer for Python).

    make fuzz                      # FUZZ_SECONDS=60 by default
    .venv/bin/python fuzz/fuzz_decode.py -max_total_time=180 [libFuzzer flags] [corpus folder]

A finding is any input for which decode_bytes raises anything but BadImage, returns something other than a
(32, 32, 3) uint8 array, runs longer than -timeout (2 s) or grows the process past -rss_limit_mb (2 GB).
libFuzzer saves it under fuzz/crashes/; pin it in tests/data/test_fuzz_decode.py (PINNED) and fix it.
Not part of `make test`: it runs until its time is up, and what it explores differs from run to run.
The corpus (REALFAKE_CACHE_DIR or ~/.cache/realfake, under fuzz-corpus/) starts from the test suite's
seed files, one small file per format and bit depth, and grows between runs; or pass a folder of your own.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

with atheris.instrument_imports(include=["PIL", "realfake"]):
    from PIL import Image

    Image.init()  # imports every format plugin now, so that their parsers are instrumented too
    from realfake.data.images import BadImage, decode_bytes

import numpy as np  # noqa: E402  (not instrumented: coverage of numpy would only slow the search)


def test_one_input(data: bytes) -> None:
    try:
        out = decode_bytes(data)
    except BadImage:
        return
    if not (isinstance(out, np.ndarray) and out.shape == (32, 32, 3) and out.dtype == np.uint8):
        raise AssertionError(f"decode_bytes returned {type(out).__name__} {getattr(out, 'shape', '')}")


def _corpus() -> str:
    """The corpus kept between runs (in realfake's cache folder), seeded with the test suite's files."""
    from tests.data.test_fuzz_decode import make_seeds

    from realfake.data.cache import cache_root

    folder = cache_root() / "fuzz-corpus"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in make_seeds().items():
        (folder / f"seed-{name}").write_bytes(data)
    return str(folder)


def main() -> None:
    warnings.simplefilter("ignore")  # Pillow warns about every corrupt EXIF block: noise at this volume
    args = list(sys.argv)
    defaults = {"-timeout": "2", "-rss_limit_mb": "2048", "-artifact_prefix": str(ROOT / "fuzz" / "crashes") + "/"}
    for flag, value in defaults.items():
        if not any(a.startswith(flag + "=") for a in args[1:]):
            args.append(f"{flag}={value}")
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus folder given
        args.append(_corpus())
    os.makedirs(ROOT / "fuzz" / "crashes", exist_ok=True)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

"""benchmarks.jpeg_codec: the decoding benchmark sends the same files down both paths and finds them identical."""

from __future__ import annotations

import pytest
from benchmarks.jpeg_codec import decode_files
from tests.data.jpegtools import jpeg, picture

from realfake.data import images

pytestmark = pytest.mark.slow  # a benchmark's smoke run, not the product's behaviour


def test_the_decoding_benchmark_compares_like_with_like(capsys: pytest.CaptureFixture[str]) -> None:
    if images._jpeg_decoder() is None:
        pytest.skip("torchvision's JPEG decoder is missing or differs from Pillow's here, or REALFAKE_KERNELS=0: "
                    "the fast path is off")
    files = [jpeg(picture(seed=s), quality=60 + s) for s in range(6)] + [jpeg(picture(40, 40))]
    decode_files(files, rounds=2)
    line = capsys.readouterr().out
    assert "6 of 7 through torchvision" in line and "identical: True" in line



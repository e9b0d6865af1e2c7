"""Property-based tests of the image decoder: random bytes, odd shapes, truncations.

Whatever a file holds, :func:`bcfeat.data.load_image` either returns an ``(H, W, 3) uint8``
image (C-contiguous, writable, at least 1 x 1) or raises :class:`ImageDecodeError` naming the
file; never another exception, and never a silently padded image.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bcfeat.data import ImageDecodeError, load_image

pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"BM", b"II*\x00", b"MM\x00*", b"GIF89a"]


def _decode(data: bytes, suffix: str = ".img") -> np.ndarray | None:
    """load_image of ``data`` written to a file; None when refused with ImageDecodeError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        path.write_bytes(data)
        try:
            image = load_image(path)
        except ImageDecodeError as error:
            assert str(path) in str(error)
            return None
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert image.shape[0] >= 1 and image.shape[1] >= 1
    assert image.flags.c_contiguous and image.flags.writeable
    return image


@SETTINGS
@given(magic=st.sampled_from(MAGICS), body=st.binary(min_size=0, max_size=600))
def test_random_bytes_decode_or_are_refused_by_name(magic, body):
    _decode(magic + body)


@st.composite
def arrays(draw):
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    channels = draw(st.sampled_from([None, 1, 3, 4]))
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.float32]))
    shape = (h, w) if channels is None else (h, w, channels)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if dtype is np.float32:
        data = rng.random(shape, dtype=np.float32)
    else:
        data = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    return data


@SETTINGS
@given(a=arrays())
def test_tiffs_of_odd_shapes_and_types_keep_their_size(a):
    buffer = io.BytesIO()
    photometric = "rgb" if a.ndim == 3 and a.shape[2] in (3, 4) else "minisblack"
    extrasamples = ["unassalpha"] if a.ndim == 3 and a.shape[2] == 4 else None
    tifffile.imwrite(buffer, a, photometric=photometric, extrasamples=extrasamples)
    image = _decode(buffer.getvalue(), ".tif")
    assert image is not None and image.shape == (a.shape[0], a.shape[1], 3)


@SETTINGS
@given(h=st.integers(1, 30), w=st.integers(1, 30), seed=st.integers(0, 2**16),
       mode=st.sampled_from(["L", "RGB", "RGBA", "P", "1"]), fmt=st.sampled_from(["PNG", "BMP"]))
def test_pillow_formats_round_trip(h, w, seed, mode, fmt):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    decoded = _decode(buffer.getvalue(), "." + fmt.lower())
    assert decoded is not None and decoded.shape == (h, w, 3)
    if mode == "RGB":
        np.testing.assert_array_equal(decoded, rgb)
    if mode == "L":
        np.testing.assert_array_equal(decoded, np.repeat(np.asarray(image)[..., None], 3, axis=2))


@SETTINGS
@given(h=st.integers(2, 30), w=st.integers(2, 30), seed=st.integers(0, 2**16), data=st.data(),
       fmt=st.sampled_from(["PNG", "JPEG", "BMP"]))
def test_a_truncated_file_is_refused_or_decodes_to_the_same_image(h, w, seed, data, fmt):
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, fmt)
    whole = buffer.getvalue()
    full = _decode(whole, "." + fmt.lower())
    cut = data.draw(st.integers(0, len(whole) - 1))
    truncated = _decode(whole[:cut], "." + fmt.lower())
    # never a padded or partial image: refused, or (a cut in trailing metadata) exactly the same
    assert truncated is None or np.array_equal(truncated, full)

import io

import numpy as np
import pytest
from PIL import Image

from omni.modalities.image import load_image, normalized_patch_targets, patchify, unpatchify


def test_patchify_inverse_and_layout():
    images = np.random.default_rng(0).random((2, 16, 24, 3)).astype(np.float32)
    patches = patchify(images, 8)
    assert patches.shape == (2, 2 * 3, 8 * 8 * 3)
    np.testing.assert_array_equal(unpatchify(patches, 8, 16, 24), images)
    # Patch (row 1, col 2) is the pixels [8:16, 16:24], flattened row-major with channels last.
    np.testing.assert_array_equal(patches[0, 1 * 3 + 2], images[0, 8:16, 16:24].reshape(-1))


def test_normalized_targets_formula():
    patches = np.random.default_rng(1).random((1, 4, 12)).astype(np.float32)
    expected = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(patches.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(normalized_patch_targets(patches), expected, rtol=1e-5, atol=1e-6)


def _encode(img: Image.Image, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P", "CMYK", "RGB"])
def test_any_mode_becomes_rgb_uint8(mode):
    img = Image.new("RGB", (20, 10), (200, 30, 30)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = load_image(_encode(img, fmt), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_resize_keeps_aspect_and_pads():
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    out = load_image(_encode(img), 16)
    assert (out[:8] == 255).all()          # 40x20 -> 16x8, at the top
    assert (out[8:] == 0).all()            # padded below


def test_corrupt_image_is_a_value_error():
    data = _encode(Image.new("RGB", (20, 20)))
    with pytest.raises(ValueError, match="cannot decode"):
        load_image(data[: len(data) // 3], 16)
    with pytest.raises(ValueError):
        load_image(b"", 16)


def test_large_jpeg_decodes_in_draft_mode_close_to_a_full_decode():
    """A JPEG four times larger than needed decodes at 1/4 scale in the DCT (PIL's draft mode)
    and still matches a full decode resized the same way, within a few grey levels on average."""
    rng = np.random.default_rng(0)
    # smooth content (a real photo's spectrum), so the two ways of downscaling see the same image
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((512, 384), Image.BICUBIC)
    data = _encode(big, "JPEG")
    drafted = Image.open(io.BytesIO(data))
    drafted.draft(None, (64, 64))
    assert drafted.size == (128, 96)  # what load_image decodes: 1/4 of each side, not all of it
    out = load_image(data, 64)
    full = np.zeros((64, 64, 3), np.uint8)
    full[:48] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((64, 48), Image.BILINEAR))
    difference = np.abs(out.astype(int) - full.astype(int))
    assert difference.mean() < 2.0 and difference.max() < 40, (difference.mean(), difference.max())
    assert difference.max() > 0  # identical only if load_image decoded the whole JPEG
    assert (out[48:] == 0).all()

"""The sin-cos starting values of the patch stems' position tables (omni/modalities/positions.py)
against the formulas written out, and what the stems make of them."""
import numpy as np
import pytest
from flax import nnx

from omni.config import ConfigError, load_config
from omni.modalities.image import ImageStem
from omni.modalities.positions import axial_sincos, sincos_1d
from omni.modalities.video import VideoStem


def small_config(*overrides):
    return load_config(None, ["--config.model.width=32", "--config.model.depth=1",
                              "--config.model.heads=2", "--config.model.embed_dim=32", *overrides])


def test_sincos_1d_is_the_transformer_formula():
    dim = 8
    table = sincos_1d(np.arange(5), dim)
    for p in range(5):
        for i in range(dim // 2):
            angle = p / 10000 ** (2 * i / dim)
            assert table[p, i] == pytest.approx(np.sin(angle), abs=1e-6)
            assert table[p, dim // 2 + i] == pytest.approx(np.cos(angle), abs=1e-6)
    with pytest.raises(ValueError, match="even"):
        sincos_1d(np.arange(3), 7)


def test_two_axes_sum_to_mae_2d_embedding():
    """MAE's get_2d_sincos_pos_embed: the row's 1-D table on the first half, the column's on the second."""
    rows, cols = axial_sincos((3, 5), 16)
    for r in range(3):
        for c in range(5):
            expected = np.concatenate([sincos_1d(np.array([r]), 8)[0], sincos_1d(np.array([c]), 8)[0]])
            np.testing.assert_allclose(rows[r] + cols[c], expected, atol=1e-7)


def test_three_axes_take_disjoint_even_slices():
    time, rows, cols = axial_sincos((4, 2, 2), 32)  # slices of 10, 10 and 12
    nonzero = [np.flatnonzero(np.abs(t).sum(0)) for t in (time, rows, cols)]
    assert nonzero[0].max() < 10 <= nonzero[1].min() and nonzero[1].max() < 20 <= nonzero[2].min()
    np.testing.assert_allclose(cols[:, 20:], sincos_1d(np.arange(2), 12))
    # Every (t, r, c) gets its own position vector.
    codes = {tuple(np.round(time[t] + rows[r] + cols[c], 6)) for t in range(4) for r in range(2) for c in range(2)}
    assert len(codes) == 16


def test_image_stem_starts_from_the_chosen_tables():
    stem = ImageStem(small_config("--config.model.position_init=sincos"), nnx.Rngs(0))
    grid = 32 // 8
    expected_rows, expected_cols = axial_sincos((grid, grid), 32)
    np.testing.assert_array_equal(np.asarray(stem.rows[...]), expected_rows)
    np.testing.assert_array_equal(np.asarray(stem.cols[...]), expected_cols)
    # As large as the content of a token, not 2% of it.
    assert 0.3 < float(np.asarray(stem._positions()).std()) < 1.0
    normal = ImageStem(small_config("--config.model.position_init=normal"), nnx.Rngs(0))
    assert float(np.asarray(normal._positions()).std()) < 0.05
    # position_std scales the normal start: rows + cols of std s each sum to std ~s * sqrt(2).
    wide = ImageStem(small_config("--config.model.position_std=1.0"), nnx.Rngs(0))
    assert 1.2 < float(np.asarray(wide._positions()).std()) < 1.6


def test_video_stem_positions_are_time_row_column_sincos():
    config = small_config("--config.model.position_init=sincos")
    stem = VideoStem(config, nnx.Rngs(0))
    cfg = config.modalities.video
    grid = cfg.size // cfg.patch
    rows, cols, time = axial_sincos((grid, grid, cfg.num_frames), 32)
    positions = np.asarray(stem._positions())
    # _patches orders tokens frame by frame, each frame's patches row-major.
    t, r, c = 2, 1, 0
    np.testing.assert_allclose(positions[t * grid * grid + r * grid + c], time[t] + rows[r] + cols[c], atol=1e-6)


def test_an_unknown_start_names_the_key():
    with pytest.raises(ConfigError, match="model.position_init"):
        ImageStem(small_config("--config.model.position_init=fourier"), nnx.Rngs(0))
    with pytest.raises(ConfigError, match="model.position_std"):
        ImageStem(small_config("--config.model.position_std=0.0"), nnx.Rngs(0))

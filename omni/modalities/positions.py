"""Starting values for the learned position tables of the patch stems (image rows and columns;
video time, rows and columns).

`normal` (the default): std `model.position_std`, 0.02 as ViT initialises its position
embeddings. Next to a patch's content (std ~1 after the patch projection) that is 2% of a token,
and the tables stayed near there through the default run (std 0.03 at its end).

`sincos`: MAE's fixed 2-D sine-cosine embedding (He et al. 2022, `get_2d_sincos_pos_embed`: half
of the width encodes the row, half the column), extended to any number of axes. Each axis gets its
own even slice of the width and, on it, the 1-D table of the Transformer (Vaswani et al. 2017,
section 3.5): PE(p, 2i) = sin(p / 10000^(2i/D)), PE(p, 2i+1) = cos(p / 10000^(2i/D)), D the slice's
width; written here as [sin | cos] halves, as MAE does. The stems add one table per axis, so their
sum is exactly the multi-axis sin-cos embedding, with entries of size ~1, as large as the content.
The tables stay trainable: this only sets where they start.

Measured on the default dataset (docs/evaluation.md, `benchmarks/caption_attributes.py`): a
linear probe reads a digit's quadrant from the image embedding after the default run's 600 steps
at 0.25 from normal(0.02), 0.32 from sincos and 0.48 from normal(1.0) (`model.position_std`;
chance 0.25), but retrieval did not improve: the caption embedding drops the place during training
in every case. So the default stays normal(0.02), and the others are options.
"""
from __future__ import annotations

import numpy as np
from flax import nnx

from omni.errors import ConfigError
from omni.nn import param

POSITION_INITS = ("normal", "sincos")


def sincos_1d(positions: np.ndarray, dim: int) -> np.ndarray:
    """[P] positions -> [P, dim]: [sin(p * w_i) | cos(p * w_i)], w_i = 10000^(-2i/dim), i < dim/2."""
    if dim % 2:
        raise ValueError(f"sin-cos positions need an even width, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angles = np.asarray(positions, np.float64)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def axis_slices(num_axes: int, width: int) -> list[slice]:
    """Split `width` into `num_axes` even slices, as equal as possible (the last takes the rest)."""
    size = (width // num_axes) // 2 * 2
    if size == 0:
        raise ValueError(f"width {width} is too small for {num_axes} sin-cos axes")
    bounds = [a * size for a in range(num_axes)] + [width - width % 2]
    return [slice(bounds[a], bounds[a + 1]) for a in range(num_axes)]


def axial_sincos(lengths: tuple[int, ...], width: int) -> list[np.ndarray]:
    """One [length, width] table per axis, zero outside its own slice of the width, so that
    table_0[p_0] + table_1[p_1] + ... is the sin-cos embedding of the position (p_0, p_1, ...)."""
    tables = []
    for length, part in zip(lengths, axis_slices(len(lengths), width)):
        table = np.zeros((length, width), np.float32)
        table[:, part] = sincos_1d(np.arange(length), part.stop - part.start)
        tables.append(table)
    return tables


def position_params(rngs: nnx.Rngs, config, lengths: tuple[int, ...], width: int) -> list[nnx.Param]:
    """One learned [length, width] table per axis, started as `model.position_init` says: `normal`
    with std `model.position_std` (default 0.02), or `sincos`. Workdirs written before these keys
    existed start from normal(0.02); a restored checkpoint overwrites the start either way."""
    kind = config.model.get("position_init", "normal")
    if kind not in POSITION_INITS:
        raise ConfigError(f"model.position_init={kind!r}: expected one of {POSITION_INITS}")
    names = ("length", "embed")
    if kind == "sincos":
        return [param(rngs, (n, width), names, init=t) for n, t in zip(lengths, axial_sincos(lengths, width))]
    std = float(config.model.get("position_std", 0.02))
    if not std > 0:
        raise ConfigError(f"model.position_std={std}: expected a positive standard deviation")
    return [param(rngs, (n, width), names, scale=std) for n in lengths]

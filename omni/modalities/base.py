"""What every modality provides: the `Modality` interface, and the few helpers that the
built-in stems share and a plugin may use (`random_token_mask`, `ReconstructingStem`,
`read_file_field`).

A modality owns four things:
  * its manifest field (`prepare`, at `omni data build` time): the JSON value of a manifest line
    -> the value stored in the record (text, a file's bytes, ...), checked so that an undecodable
    file is reported there with its path and reason;
  * host preprocessing: a stored record field -> fixed-shape numpy arrays (`encode`), plus an
    all-zero stand-in when the modality is absent (`empty`), and optional run assets fitted on the
    training split (`fit_asset`: the BPE vocabulary, an SVD basis) saved with every checkpoint;
  * a stem inside the model (`make_stem`): arrays -> token embeddings and a validity mask, its
    masking scheme for masked modelling, and its reconstruction loss;
  * config checks (`validate`).
A stem is built from omni.nn's layers (`param`, `matmul`, `Dense`, `LayerNorm`), which live there,
not here, so that this file reads as the interface alone: one concept per file, and no CPU-specific
custom VJP between a plugin author and the methods to implement.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from omni import mup
from omni.nn import Dense, LayerNorm, param


def row_keys(rng, batch: int):
    """One key per row. The train step gives `masked_embed` one key per example (folded from its
    id, omni.objectives.row_keys), so an example's mask does not depend on the rows beside it;
    a single key is split into `batch` keys."""
    return rng if rng.ndim == 1 else jax.random.split(rng, batch)


def row_uniform(rng, shape):
    """Uniform [0, 1) floats of `shape` = (batch, ...), each row drawn from its own key."""
    return jax.vmap(lambda key: jax.random.uniform(key, shape[1:]))(row_keys(rng, shape[0]))


def random_token_mask(rng, batch: int, num: int, count: int):
    """bool [batch, num], True at exactly `count` random positions of every row (a static count,
    so the step's shapes never change). rng: one key, or one per row."""
    rank = jnp.argsort(row_uniform(rng, (batch, num)), axis=-1).argsort(axis=-1)
    return rank < count


class ReconstructingStem(nnx.Module):
    """MAE-style masked modelling shared by the image, video, audio and smell stems: masked tokens are
    replaced by a learned mask token, and a layer-normed linear head predicts each token's
    (normalised) target, scored by the mean squared error per token."""

    def init_reconstruction(self, rngs, config, target_dim: int) -> None:
        width = config.model.width
        self.mask_token = param(rngs, (width,), ("embed",))
        self.head_norm = LayerNorm(rngs, width)
        self.head = Dense(rngs, width, target_dim, names=("embed", "patch"),
                          scale=mup.readout_init_scale(config, width))
        self.output_multiplier = mup.output_multiplier(config)

    def predict(self, hidden, dtype):
        return self.head(self.head_norm(hidden), dtype) * self.output_multiplier

    def reconstruction_loss(self, hidden, target, dtype):
        return jnp.mean(jnp.square(self.predict(hidden, dtype) - target), axis=-1)


def read_file_field(value, root, field: str) -> bytes:
    """A manifest path field (relative to the manifest's folder `root`) -> the file's bytes;
    ValueError saying what is wrong (the caller names the file) when it is missing or empty.
    Any filesystem etils.epath reads (local; gs:// with its packages installed)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{field}' must be a file path (a non-empty string), got {value!r}")
    path = epath.Path(root) / value
    if not path.is_file():
        raise ValueError("does not exist")
    data = path.read_bytes()
    if not data:
        raise ValueError("is empty (0 bytes)")
    return data


class Modality:
    """Base class; subclasses set `name` and `objective` and implement the methods below."""

    name: str = ""
    objective: str = ""  # the config.loss key of this modality's masked-modelling objective
    file_field: bool = False  # its manifest field is a path to a file (image, audio, video)

    def validate(self, config) -> None:
        pass

    def num_tokens(self, config) -> int:
        """Tokens this modality contributes to the sequence, CLS not included."""
        raise NotImplementedError

    def array_spec(self, config) -> dict[str, tuple[tuple, np.dtype]]:
        """Per-example arrays this modality puts in a batch: key -> (shape, dtype)."""
        raise NotImplementedError

    def encode(self, value, config, assets) -> dict[str, np.ndarray]:
        """Host preprocessing of one record field into `array_spec` arrays; raise ValueError on bad input."""
        raise NotImplementedError

    def empty(self, config) -> dict[str, np.ndarray]:
        return {k: np.zeros(shape, dtype) for k, (shape, dtype) in self.array_spec(config).items()}

    def stem_flops(self, config) -> tuple[float, float]:
        """Forward matmul FLOPs per example of (the stem's embedding, the reconstruction head),
        for the analytic MFU (omni.train.model_flops_per_step)."""
        return 0.0, 0.0

    def prepare(self, value, root) -> str | bytes:
        """A manifest line's field (paths relative to the folder `root`) -> the stored record value.
        Raise ValueError naming the file and what is wrong with it."""
        if self.file_field:
            return self.check_bytes(read_file_field(value, root, self.name))
        raise NotImplementedError

    def check_bytes(self, data: bytes) -> bytes:
        """A file modality's encoded bytes (a manifest's file, or a WebDataset member) -> the stored
        value, after a check that they decode; ValueError with the reason when they do not.
        Modalities without a file (text, smell) never receive bytes."""
        raise ValueError(f"modality '{self.name}' cannot be read from a file's bytes")

    def fit_asset(self, values, config) -> dict | None:
        """A JSON-serialisable asset fitted on the stored values of the training split (an
        iterable), or None when this modality needs none. It reaches `encode` as assets[name]."""
        return None

    def make_stem(self, config, rngs: nnx.Rngs, built: dict | None = None) -> nnx.Module:
        """`built`: the stems made before this one (registry order), for sharing weights."""
        raise NotImplementedError

"""Maximal-update parametrisation (muP; Yang et al. 2021, "Tensor Programs V") for Adam, so that
a learning rate tuned on a narrow model transfers to wide ones (`model.parametrization="mup"`).

With the width multiplier m = model.width / model.mup_base_width:
  * hidden matrices, those with two dimensions that grow with the width (attention q/k/v/out,
    MLP in/out, and a stem's own width x width layers such as the audio stem's second conv and
    its frame projection): init std 1/sqrt(fan_in) as usual, and their Adam learning rate is
    divided by m, so each update moves a layer's output by O(1) whatever the width. Which
    matrices these are is read off the shapes, by comparing the model with the same model
    built at the base width (as the mup package's `set_base_shapes` does), so a new stem is
    classified without a list of names;
  * input weights (token, patch and position embeddings), biases and norms: init and learning
    rate independent of width;
  * read-outs (the tied text read-out, the masked-modelling heads, the contrastive projections,
    the matching head): their outputs are multiplied by 1/m, and their weights start at the
    base width's init std (`readout_init_scale`), as the mup package's MuReadout does. Folded
    together, the read-out's initial variance falls as 1/width^2 (Tensor Programs V, Table 3).
    The contrastive projections feed an L2 normalisation, which cancels the multiplier; for
    them only the init and the width-independent learning rate matter;
  * attention logits are q.k * sqrt(base_head_dim) / head_dim instead of q.k / sqrt(head_dim).
  * weight decay: a hidden matrix still decays by lr * weight_decay per step, whatever the width,
    as in the mup package's MuAdamW (lr / m and weight_decay * m); `train.mup_decay="with_lr"`
    scales the decay by 1/m with the Adam step, as omni did before (omni/run/setup.py).
At width == mup_base_width both parametrisations are the same model.

omni.bench.coordinate_check measures how much a few Adam steps move the transformer's output
activations at several widths: flat under muP, growing with width under the standard one.
"""
from __future__ import annotations

import jax
import optax

def is_mup(config) -> bool:
    return config.model.parametrization == "mup"


def width_multiplier(config) -> float:
    return config.model.width / config.model.mup_base_width if is_mup(config) else 1.0


def output_multiplier(config) -> float:
    return 1.0 / width_multiplier(config)


def readout_init_scale(config, fan_in: int) -> float:
    """Init std of a read-out's weights: 1/sqrt(fan_in) under SP; under muP 1/sqrt(fan_in / m),
    the std the layer has at the base width, whatever the width."""
    return (fan_in / width_multiplier(config)) ** -0.5


def attention_scale(config, head_dim: int) -> float:
    if not is_mup(config):
        return head_dim ** -0.5
    base_head_dim = config.model.mup_base_width / config.model.heads
    return base_head_dim ** 0.5 / head_dim


def growing_dimensions(shape, base_shape) -> int:
    """How many of a parameter's dimensions differ from the same parameter at the base width."""
    if len(shape) != len(base_shape):
        raise ValueError(f"parameter of shape {tuple(shape)} has shape {tuple(base_shape)} at the base width")
    return sum(a != b for a, b in zip(shape, base_shape))


def learning_rate_multipliers(params: dict, base_params: dict, config) -> dict:
    """Same structure as params: 1/m for the hidden matrices (two or more dimensions differ from
    `base_params`, the same model's parameters, or their shapes, at model.mup_base_width), 1
    elsewhere: input weights and read-outs grow in one dimension only, biases and norms too."""
    hidden = 1.0 / width_multiplier(config)
    return jax.tree.map(lambda p, base: hidden if growing_dimensions(p.shape, base.shape) >= 2 else 1.0,
                        params, base_params)


def scale_updates(multipliers: dict) -> optax.GradientTransformation:
    """Multiply each parameter's update by its (static) multiplier."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)

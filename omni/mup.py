"""Maximal-update parametrisation (muP; Yang et al. 2021, "Tensor Programs V") for Adam, so that
a learning rate tuned on a narrow model transfers to wide ones (`model.parametrization="mup"`).

With the width multiplier m = model.width / model.mup_base_width:
  * hidden matrices (attention q/k/v/out, MLP in/out): init std 1/sqrt(fan_in) as usual, and
    their Adam learning rate is divided by m, so each update moves a layer's output by O(1)
    whatever the width;
  * input weights (token, patch and position embeddings), biases and norms: init and learning
    rate independent of width;
  * output layers (the tied text read-out, the masked-image head, the contrastive projections):
    their outputs are multiplied by 1/m;
  * attention logits are q.k * sqrt(base_head_dim) / head_dim instead of q.k / sqrt(head_dim).
At width == mup_base_width both parametrisations are the same model.

omni.bench.coordinate_check measures how much a few Adam steps move the transformer's output
activations at several widths: flat under muP, growing with width under the standard one.
"""
from __future__ import annotations

import jax
import optax

HIDDEN_MATRICES = ("wq", "wk", "wv", "wo", "w_in", "w_out")


def is_mup(config) -> bool:
    return config.model.parametrization == "mup"


def width_multiplier(config) -> float:
    return config.model.width / config.model.mup_base_width if is_mup(config) else 1.0


def output_multiplier(config) -> float:
    return 1.0 / width_multiplier(config)


def attention_scale(config, head_dim: int) -> float:
    if not is_mup(config):
        return head_dim ** -0.5
    base_head_dim = config.model.mup_base_width / config.model.heads
    return base_head_dim ** 0.5 / head_dim


def learning_rate_multipliers(params: dict, config) -> dict:
    """Same structure as params: 1/m for the transformer's hidden matrices, 1 elsewhere."""
    hidden = 1.0 / width_multiplier(config)

    def visit(tree, path):
        if isinstance(tree, dict):
            return {k: visit(v, path + (k,)) for k, v in tree.items()}
        return hidden if path[0] == "encoder" and path[-1] in HIDDEN_MATRICES else 1.0

    return visit(params, ())


def scale_updates(multipliers: dict) -> optax.GradientTransformation:
    """Multiply each parameter's update by its (static) multiplier."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)

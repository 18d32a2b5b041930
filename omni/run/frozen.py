"""Parameters that no example of a step trains: those of a configured modality that no sub-batch
of the mixture holds (a sixth modality configured before its data arrives, say).

No gradient reaches them, so AdamW's only change to them would be weight decay: shrinking a stem
that has never seen an example, which a later run with that modality's data would then start
from. So the step leaves them, and their optimizer slots, exactly as they are, and the optimizer
runs on the trained parameters alone: a frozen leaf enters it as an empty array, whose update
compiles to nothing. An absent modality then costs the step neither FLOPs nor program
(tests/test_plugin_modality.py). The optimizer state keeps its structure, so checkpoints do not
depend on the mixture.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# The parameter groups that hold one entry per modality (omni.model.Omni)
PER_MODALITY = ("stems", "projections", "decoders")


def frozen_mask(params, modalities) -> dict:
    """A tree like `params`: True at the leaves of `modalities`' stems, projections and decoders."""
    modalities = set(modalities)

    def frozen(path, _):
        keys = [getattr(k, "key", None) for k in path]
        return len(keys) >= 2 and keys[0] in PER_MODALITY and keys[1] in modalities

    return jax.tree_util.tree_map_with_path(frozen, params)


def _mirrors(tree, params_def):
    """Apply to the subtrees of an optimizer state that mirror the params (Adam's mu and nu)."""
    is_mirror = lambda x: jax.tree.structure(x) == params_def  # noqa: E731
    return lambda f: jax.tree.map(lambda sub: f(sub) if is_mirror(sub) else sub, tree, is_leaf=is_mirror)


def update_trained(tx, grads, opt_state, params, frozen):
    """`tx.update` on the trained leaves only -> (updates, new optimizer state): a frozen leaf's
    update is zero and its optimizer slots keep their values."""
    if not any(jax.tree.leaves(frozen)):
        return tx.update(grads, opt_state, params)
    params_def = jax.tree.structure(params)

    def shrink(tree):
        return jax.tree.map(lambda x, f: jnp.zeros((0,), x.dtype) if f else x, tree, frozen)

    small_state = _mirrors(opt_state, params_def)(shrink)
    updates, new_state = tx.update(shrink(grads), small_state, shrink(params))
    updates = jax.tree.map(lambda u, p, f: jnp.zeros_like(p) if f else u, updates, params, frozen)
    # put each frozen slot back: pair the new state's mirrors with the old state's, leaf by leaf
    old_mirrors = iter(_collect(opt_state, params_def))
    restored = _mirrors(new_state, params_def)(
        lambda new: jax.tree.map(lambda n, o, f: o if f else n, new, next(old_mirrors), frozen))
    return updates, restored


def _collect(tree, params_def) -> list:
    """The subtrees of `tree` that mirror the params, in the order `_mirrors` visits them."""
    found = []
    _mirrors(tree, params_def)(lambda sub: found.append(sub) or sub)
    return found

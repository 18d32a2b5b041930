"""On 8 CPU devices: the sharded SigLIP and InfoNCE losses and their gradients equal the plain
losses on the gathered batch, and the matching sampler draws the same negatives (and passes the
same gradients back to the candidates' tokens) as unsharded. For each, the collectives of its
compiled program on 8 devices and on 2: the same, whatever the device count."""
import collections
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from omni import matching, parallel
from omni.contrastive import infonce_loss, infonce_loss_sharded, siglip_loss, siglip_loss_sharded

COLLECTIVE = re.compile(r" (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(")


def collectives(hlo: str) -> dict:
    """How many of each collective op a compiled program holds (async pairs counted once)."""
    return dict(collections.Counter(COLLECTIVE.findall(hlo)))


def run_sharded(fn, mesh, args):
    """fn jitted on `args` sharded by rows over the mesh's batch axes -> (result, collectives)."""
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    args = [jax.device_put(x, rows) if np.ndim(x) else x for x in args]
    with jax.set_mesh(mesh):
        compiled = jax.jit(fn).lower(*args).compile()
        return compiled(*args), collectives(compiled.as_text())


def compare(plain, sharded, meshes, za, zb, valid, *scalars) -> dict:
    fn = jax.value_and_grad(lambda za, zb, valid: sharded(za, zb, *scalars, valid), argnums=(0, 1))
    reference, reference_grad = jax.value_and_grad(plain, argnums=(0, 1))(za, zb, *scalars, valid)
    (value, grads), ops = run_sharded(fn, meshes[8], (za, zb, valid))
    return {
        "loss": float(value), "reference": float(reference),
        "grad_max_abs_diff": float(max(np.abs(np.asarray(g) - np.asarray(r)).max()
                                       for g, r in zip(grads, reference_grad))),
        "collectives": {"8": ops, "2": run_sharded(fn, meshes[2], (za, zb, valid))[1]},
    }


def compare_matching(meshes, za, zb, valid) -> dict:
    """Queries za draw among candidates zb whose 'tokens' are random; a loss on the drawn tokens
    back-propagates to the candidates' tokens."""
    rng = np.random.default_rng(1)
    n = zb.shape[0]
    tokens = rng.normal(size=(n, 3, 5)).astype(np.float32)
    token_valid = rng.random((n, 3)) > 0.3
    fingerprint = np.arange(n, dtype=np.int32) % 13        # rows 0 and 13 share content
    ids = np.arange(n, dtype=np.int32)
    weights = rng.normal(size=(n, 3, 5)).astype(np.float32)

    def draw(za, zb, valid, tokens, token_valid, fingerprint, ids, weights):
        queries = matching.Queries(za, fingerprint, valid, ids)
        candidates = matching.Candidates(zb, fingerprint, valid, tokens, token_valid, ids)
        got, got_valid, found, chosen = matching.sample_negatives(queries, candidates, 10.0, jax.random.key(3))
        return jnp.sum(got * weights * got_valid[..., None]), (got_valid, found, chosen)

    fn = jax.value_and_grad(draw, argnums=3, has_aux=True)
    args = (za, zb, valid, tokens, token_valid, fingerprint, ids, weights)
    (value, aux), grad = fn(*args)
    ((value8, aux8), grad8), ops = run_sharded(fn, meshes[8], args)
    return {
        "found": int(np.asarray(aux[1]).sum()), "rows": int(valid.sum()),
        "same_draw": all(np.array_equal(a, b) for a, b in zip(aux, aux8)),
        "loss": float(value8), "reference": float(value),
        "grad_max_abs_diff": float(np.abs(np.asarray(grad8) - np.asarray(grad)).max()),
        "collectives": {"8": ops, "2": run_sharded(fn, meshes[2], args)[1]},
    }


def main():
    auto = (AxisType.Auto,) * 3
    meshes = {8: parallel.make_mesh((2, 4, 1)),
              2: jax.make_mesh((1, 2, 1), parallel.MESH_AXES, axis_types=auto, devices=jax.devices()[:2])}
    rng = np.random.default_rng(0)
    za = rng.normal(size=(16, 8)).astype(np.float32)
    zb = rng.normal(size=(16, 8)).astype(np.float32)
    za /= np.linalg.norm(za, axis=1, keepdims=True)
    zb /= np.linalg.norm(zb, axis=1, keepdims=True)
    valid = rng.random(16) > 0.25
    t, b = np.float32(np.log(10.0)), np.float32(-10.0)
    print(json.dumps({
        "siglip": compare(siglip_loss, siglip_loss_sharded, meshes, za, zb, valid, t, b),
        "infonce": compare(infonce_loss, infonce_loss_sharded, meshes, za, zb, valid, t),
        "matching": compare_matching(meshes, za, zb, valid),
    }))


if __name__ == "__main__":
    main()

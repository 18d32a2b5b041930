"""On 4 CPU devices (data 2 x tensor 2): the blocked attention, which runs under `shard_map` on
each device's examples and heads, gives the loss and gradients of the unsharded model."""
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from omni import parallel
from omni.transformer import Transformer
from tests.conftest import small_config


def main():
    # as base runs it: bf16, and the remat policy that keeps the attention's output
    config = small_config("--config.model.attention=blocked", "--config.model.remat=dots",
                          "--config.model.dtype=bfloat16")
    graphdef, params = nnx.split(Transformer(config, nnx.Rngs(params=0)))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 300, config.model.width)).astype(np.float32)  # 2 blocks of 150 queries
    valid = rng.random((4, 300)) < 0.7

    def loss(params, x, valid):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x, valid)))

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    reference, reference_grads = step(params, x, valid)
    mesh = parallel.make_mesh((2, 1, 2))
    with jax.set_mesh(mesh):
        sharded = [jax.device_put(a, NamedSharding(mesh, parallel.logical_to_spec(names, a.shape, mesh)))
                   for a, names in ((x, ("batch", "length", "embed")), (valid, ("batch", "length")))]
        value, grads = step(params, *sharded)
        hlo = step.lower(params, *sharded).compile().as_text()
    print(json.dumps({
        "loss": float(value), "reference": float(reference),
        "grad_max_abs_diff": max(float(np.abs(np.asarray(g) - np.asarray(r)).max())
                                 for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(reference_grads))),
        "grad_max_abs": max(float(np.abs(np.asarray(r)).max()) for r in jax.tree.leaves(reference_grads)),
        "input_shards": len(sharded[0].sharding.device_set),
        "all_gathers": hlo.count("all-gather-start") + hlo.count("all-gather("),
    }))


if __name__ == "__main__":
    main()

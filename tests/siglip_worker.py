"""On 8 CPU devices: the chunked (ring) SigLIP loss and its gradient equal the plain loss on the
gathered batch, and its compiled program permutes chunks instead of all-gathering them."""
import json

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from omni import parallel
from omni.objectives import siglip_loss, siglip_loss_chunked


def main():
    mesh = parallel.make_mesh((2, 4, 1))
    rng = np.random.default_rng(0)
    za = rng.normal(size=(16, 8)).astype(np.float32)
    zb = rng.normal(size=(16, 8)).astype(np.float32)
    za /= np.linalg.norm(za, axis=1, keepdims=True)
    zb /= np.linalg.norm(zb, axis=1, keepdims=True)
    valid = rng.random(16) > 0.25
    t, b = np.float32(np.log(10.0)), np.float32(-10.0)
    reference, reference_grad = jax.value_and_grad(siglip_loss, argnums=(0, 1))(za, zb, t, b, valid)
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    args = [jax.device_put(x, rows) for x in (za, zb)]
    valid_sharded = jax.device_put(valid, rows)
    fn = jax.jit(jax.value_and_grad(siglip_loss_chunked, argnums=(0, 1)))
    with jax.set_mesh(mesh):
        value, grads = fn(args[0], args[1], t, b, valid_sharded)
        hlo = fn.lower(args[0], args[1], t, b, valid_sharded).compile().as_text()
    print(json.dumps({
        "loss": float(value), "reference": float(reference),
        "grad_max_abs_diff": float(max(np.abs(np.asarray(g) - np.asarray(r)).max()
                                       for g, r in zip(grads, reference_grad))),
        "collective_permutes": hlo.count("collective-permute"), "all_gathers": hlo.count("all-gather"),
    }))


if __name__ == "__main__":
    main()

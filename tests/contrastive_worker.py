"""On 8 CPU devices: the chunked (ring) SigLIP and InfoNCE losses and their gradients equal the
plain losses on the gathered batch, and their compiled programs permute chunks instead of
all-gathering them."""
import json

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from omni import parallel
from omni.contrastive import infonce_loss, infonce_loss_chunked, siglip_loss, siglip_loss_chunked


def compare(plain, chunked, mesh, za, zb, valid, *scalars) -> dict:
    reference, reference_grad = jax.value_and_grad(plain, argnums=(0, 1))(za, zb, *scalars, valid)
    rows = NamedSharding(mesh, P(("data", "fsdp")))
    args = [jax.device_put(x, rows) for x in (za, zb)]
    valid_sharded = jax.device_put(valid, rows)
    fn = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1)))
    with jax.set_mesh(mesh):
        value, grads = fn(args[0], args[1], *scalars, valid_sharded)
        hlo = fn.lower(args[0], args[1], *scalars, valid_sharded).compile().as_text()
    return {
        "loss": float(value), "reference": float(reference),
        "grad_max_abs_diff": float(max(np.abs(np.asarray(g) - np.asarray(r)).max()
                                       for g, r in zip(grads, reference_grad))),
        "collective_permutes": hlo.count("collective-permute"), "all_gathers": hlo.count("all-gather"),
    }


def main():
    mesh = parallel.make_mesh((2, 4, 1))
    rng = np.random.default_rng(0)
    za = rng.normal(size=(16, 8)).astype(np.float32)
    zb = rng.normal(size=(16, 8)).astype(np.float32)
    za /= np.linalg.norm(za, axis=1, keepdims=True)
    zb /= np.linalg.norm(zb, axis=1, keepdims=True)
    valid = rng.random(16) > 0.25
    t, b = np.float32(np.log(10.0)), np.float32(-10.0)
    print(json.dumps({
        "siglip": compare(siglip_loss, siglip_loss_chunked, mesh, za, zb, valid, t, b),
        "infonce": compare(infonce_loss, infonce_loss_chunked, mesh, za, zb, valid, t),
    }))


if __name__ == "__main__":
    main()

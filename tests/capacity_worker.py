"""On 8 CPU devices (mesh data x fsdp x tensor from argv), one step's loss and gradient norm with
the encoder's token compaction at a capacity measured on the data, and with it off: printed as
JSON for tests/test_capacity.py."""
import json
import sys

import jax
import numpy as np
from flax import nnx

from omni import objectives, parallel
from omni.bench.batches import real_batch, real_data
from omni.config import load_config
from omni.run.setup import build_setup
from tests.conftest import SMALL_ALL


def loss_and_grad_norm(config, mesh, source, assets):
    setup = build_setup(config, mesh)
    with jax.set_mesh(mesh):
        state = setup.init_state()
        batch = real_batch(config, setup, source, assets)

        def loss(params):
            return objectives.total_loss(nnx.merge(setup.graphdef, params), batch, jax.random.key(1), config)

        (value, metrics), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(state["params"])
        norm = float(np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(grads))))
    return {"loss": float(value), "grad_norm": norm, "capacity": float(config.model.token_capacity),
            "rows": float(metrics["encoder_rows"]), "slots": float(metrics["encoder_slots"])}


def main(mesh_spec: str) -> None:
    data, fsdp, tensor = (int(n) for n in mesh_spec.split("x"))
    mesh = parallel.make_mesh((data, fsdp, tensor))
    # captions padded to 32 tokens and 8 frames for clips of 4 key frames: about a third padding
    overrides = SMALL_ALL + ["--config.train.batch_size=64", "--config.data.rows_multiple=4",
                             "--config.modalities.text.max_len=32", "--config.modalities.video.num_frames=8",
                             f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}",
                             f"--config.mesh.tensor={tensor}"]
    measured, source, assets = real_data(load_config(None, overrides + ["--config.model.token_capacity=0"]))
    off = measured.copy_and_resolve_references()
    off.model.token_capacity = 1.0
    runs = {name: loss_and_grad_norm(config, mesh, source, assets) for name, config in (("0", measured), ("1.0", off))}
    print(json.dumps(runs))


if __name__ == "__main__":
    main(sys.argv[1])

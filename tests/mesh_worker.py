"""Runs a few train steps of the small test model on each mesh given as DATAxFSDPxTENSOR, in its
own process (so that XLA_FLAGS can set the number of CPU devices), and prints one JSON object:
per mesh, the losses, the per-device bytes of params + optimizer state of
the compiled step, and its collectives that cross processes (omni.bench.plan). A mesh written
DATAxFSDPxTENSOR:DCN_DATAxDCN_FSDP is hybrid: the devices are grouped as that many processes would
hold them (omni.parallel.hybrid_device_grid).

    python -m tests.mesh_worker STEPS 8x1x1 1x8x1 2x4x1:2x1 ..."""
import json
import sys

import jax

from omni import config as config_lib, parallel
from omni.bench.plan import collectives_report
from omni.data import pipeline
from omni.data.records import open_split
from omni.modalities.text import BPETokenizer
from omni.run.setup import build_setup
from omni.validation import validate
from tests.conftest import SMALL


def run(steps: int, shape: str) -> dict:
    sizes, _, dcn = shape.partition(":")
    data, fsdp, tensor = sizes.split("x")
    dcn_data, dcn_fsdp = dcn.split("x") if dcn else (1, 1)
    overrides = [f"--config.mesh.data={data}", f"--config.mesh.fsdp={fsdp}", f"--config.mesh.tensor={tensor}",
                 f"--config.mesh.dcn_data={dcn_data}", f"--config.mesh.dcn_fsdp={dcn_fsdp}",
                 # matching off: it made each mesh's run slower by half (28 s against 19 s for
                 # 1x8x1, cold compile cache), and its sharded parts (the negatives' draw, the
                 # tokens' all-to-all and their gradients) are checked against one device in
                 # tests.contrastive_worker
                 # two sub-batches by modality set, each split over up to 8 batch shards
                 "--config.train.batch_size=16", "--config.data.mixture=image+text=8,text=8"]
    config = config_lib.load_config(None, SMALL + overrides)
    validate(config, jax.device_count())
    mesh_shape = config_lib.resolve_mesh_shape(config, jax.device_count())
    mesh = parallel.make_mesh(mesh_shape)
    source = open_split(pipeline.resolve_data_dir(config), "train")
    assets = {"tokenizer": BPETokenizer.train(pipeline.corpus_lines(source), config.modalities.text.vocab_size)}
    setup = build_setup(config, mesh)
    # One program in flight at a time: XLA's CPU collectives between 8 virtual devices that share
    # 2 cores can deadlock when two programs' device threads interleave.
    state = jax.block_until_ready(setup.init_state())
    step_fn = setup.compile_train_step()
    shardings = setup.batch_shardings()
    batches = pipeline.training_batches(source, config, assets)
    losses = []
    with jax.set_mesh(mesh):
        for i in range(steps):
            local, _ = next(batches)
            batch = jax.tree.map(jax.make_array_from_process_local_data, shardings, local)
            if i == 0:  # compiled once, ahead of time, for its memory analysis; every step runs it
                compiled = step_fn.lower(state, batch, setup.step_args).compile()
                state_bytes = sum(
                    leaf.addressable_shards[0].data.nbytes
                    for leaf in jax.tree.leaves((state["params"], state["opt_state"])))
                memory = compiled.memory_analysis()
                argument_bytes = getattr(memory, "argument_size_in_bytes", None)
            state, metrics = jax.block_until_ready(compiled(state, batch, setup.step_args))
            losses.append(float(metrics["loss"]))
    return {"losses": losses, "state_bytes_per_device": state_bytes,
            "compiled_argument_bytes": argument_bytes, "devices": jax.device_count(),
            "process_of_each_device": parallel.granule_of_each_device(mesh, mesh_shape.dcn),
            "collectives": collectives_report(compiled.as_text(), mesh, mesh_shape.dcn)["collectives"]}


if __name__ == "__main__":
    print(json.dumps({shape: run(int(sys.argv[1]), shape) for shape in sys.argv[2:]}))

"""grain worker processes (data.workers) build the batches one process would, in step order."""
import jax
import numpy as np

from omni.config import load_config
from omni.data import pipeline
from omni.data.records import open_split
from omni.run.assets import load_or_fit_assets
from tests.conftest import SMALL_ALL


def test_worker_processes_build_the_batches_of_one_process(default_data, tmp_path):
    config = load_config(None, [*SMALL_ALL, "--config.train.steps=5", "--config.data.prefetch=1"])
    source = open_split(default_data, "train")
    config, _ = pipeline.with_resolved_mixture(config, source)
    assets, _ = load_or_fit_assets(config, tmp_path, None, source)
    read = {}
    for workers in (0, 2):
        config.data.workers = workers
        read[workers] = [batch for batch, _ in pipeline.training_batches(source, config, assets, start_step=1)]
    assert len(read[0]) == len(read[2]) == 4
    for one, many in zip(read[0], read[2]):
        assert one.keys() == many.keys()
        jax.tree.map(np.testing.assert_array_equal, one, many)
    steps = [tuple(b["image+text"]["example_id"]) for b in read[2]]
    assert len(set(steps)) == 4  # each step its own examples, in order

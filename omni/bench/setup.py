"""The run state `omni plan` and `omni bench` measure: the configured mesh and its Setup."""
from __future__ import annotations

import jax

from omni import config as config_lib, parallel
from omni.run.setup import build_setup
from omni.validation import validate


def mesh_and_setup(config):
    """The configured mesh (after joining the other processes, if any) and the run's Setup."""
    parallel.maybe_initialize_distributed()
    validate(config, jax.device_count())
    mesh = parallel.make_mesh(config_lib.resolve_mesh_shape(config, jax.device_count()))
    return mesh, build_setup(config, mesh)

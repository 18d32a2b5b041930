"""The muP coordinate check (Yang et al. 2021, "Tensor Programs V", the coordinate check of their
figure 5): how much a few Adam steps at one learning rate move the transformer's output
activations, at several widths. Under muP the change stays flat as width grows; under the
standard parametrisation it grows. It trains real steps, so it lives with the tools, above the
parametrisation (omni.mup) it checks."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from omni import config as config_lib, parallel
from omni.bench.batches import synthetic_batch
from omni.run.setup import build_setup


def coordinate_check(widths, parametrization: str, steps: int = 3, lr: float = 1e-2,
                     base_overrides=()) -> list[float]:
    """Mean |change| of the transformer's output activations on one fixed batch after `steps`
    Adam steps at a fixed learning rate, for each width (heads fixed, head_dim grows)."""
    sizes = []
    for width in widths:
        config = config_lib.load_config(None, list(base_overrides) + [
            f"--config.model.width={width}", f"--config.model.embed_dim={width}",
            f"--config.model.parametrization={parametrization}", f"--config.train.lr={lr}",
            "--config.train.warmup_steps=0", "--config.train.min_lr_ratio=1.0",
            "--config.train.weight_decay=0.0", "--config.train.grad_clip=1000000.0",
            f"--config.train.steps={steps + 1}"])
        mesh = parallel.make_mesh((1, 1, 1))
        setup = build_setup(config, mesh)
        state = setup.init_state()
        batch = synthetic_batch(config, setup)
        text_rows = next(sub for sub in batch.values() if "text/ids" in sub)  # a sub-batch with text

        def hidden(params):
            model = nnx.merge(setup.graphdef, params)
            tokens, valid = model.stems["text"].embed(text_rows, jnp.float32)
            x, valid = model.sequence("text", tokens, valid, jnp.ones(tokens.shape[0], bool))
            return model.encoder(x, valid)

        hidden = jax.jit(hidden)
        before = hidden(state["params"])
        step = setup.compile_train_step()
        with jax.set_mesh(mesh):
            for _ in range(steps):
                state, _ = step(state, batch, setup.step_args)
        sizes.append(float(jnp.mean(jnp.abs(hidden(state["params"]) - before))))
    return sizes


def coordinate_growth(sizes) -> float:
    """Largest-width size over smallest-width size (1 = flat)."""
    return float(np.asarray(sizes)[-1] / np.asarray(sizes)[0])

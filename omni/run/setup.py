"""A run's state, built from its config and mesh: the model's graph, the optimizer, the shardings
of every parameter and optimizer slot, the batch layout, and the compiled update step.

The update step is one pure function `train_step(state, batch) -> (state, metrics)` compiled once
with `jax.jit` (in/out shardings on the data x fsdp x tensor mesh, the old state donated). Random
keys are derived from (seed, step), so a run resumed from a checkpoint continues exactly as if it
had never stopped. Training, evaluation, export and bench all build their state here.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from omni import matching, mup, objectives, parallel, sub_batches
from omni.checkpoint import abstract_like
from omni.data import mixture, pipeline
from omni.errors import ConfigError
from omni.flops import real_work
from omni.modalities import registry
from omni.model import Omni
from omni.run.frozen import frozen_mask, update_trained


def step_arguments(config) -> dict:
    """The numbers of a run that change between otherwise identical runs (the seed, and the
    learning-rate schedule's peak, warmup, length and floor), passed to the compiled step as
    arguments instead of baked into it as constants: a sweep over learning rates or budgets, or a
    test suite's runs of different lengths, then compile one program and share it through the
    persistent compilation cache."""
    t = config.train
    warmup = min(int(t.warmup_steps), int(t.steps) // 2)  # short test runs still decay
    decay_steps = max(int(t.steps), warmup + 1)
    peak, end = float(t.lr), float(t.lr) * float(t.min_lr_ratio)
    alpha = 0.0 if peak == 0.0 else end / peak  # in float64 on the host, as optax does
    return {"seed": np.int32(int(t.seed)), "peak_lr": np.float32(peak), "warmup_steps": np.int32(warmup),
            "cosine_steps": np.float32(decay_steps - warmup), "alpha": np.float32(alpha),
            "one_minus_alpha": np.float32(1.0 - alpha)}


def learning_rate(count, args: dict):
    """optax.warmup_cosine_decay_schedule(0, peak, warmup, decay_steps, end) with its numbers
    taken from `step_arguments` (arrays, so traceable): a linear warmup from 0 to the peak, then
    a cosine from the peak down to end = alpha * peak. The same float32 operations as optax's,
    but XLA folds optax's constants (pi * count / decay becomes count * (pi / decay)), so the two
    differ by float32 rounding (tests/test_step.py compares them)."""
    warmup = args["warmup_steps"]
    ramp = 1 - jnp.clip(count, 0, warmup) / jnp.maximum(warmup, 1)
    warming = -args["peak_lr"] * ramp + args["peak_lr"]
    since = jnp.minimum(count - warmup, args["cosine_steps"])
    cosine = 0.5 * (1 + jnp.cos(jnp.pi * since / args["cosine_steps"]))
    decaying = args["peak_lr"] * (args["one_minus_alpha"] * cosine + args["alpha"])
    return jnp.where(count < warmup, warming, decaying)


MUP_DECAYS = ("width_independent", "with_lr")


def mup_decay(config) -> str:
    """`train.mup_decay`; workdirs written before the key existed trained with "with_lr"."""
    kind = config.train.get("mup_decay", "with_lr")
    if kind not in MUP_DECAYS:
        raise ConfigError(f"train.mup_decay={kind!r}: expected one of {MUP_DECAYS}")
    return kind


def make_optimizer(config, lr_multipliers: dict | None = None, args: dict | None = None):
    """AdamW with warmup + cosine (`learning_rate`) and clipping; under muP each parameter's Adam
    step is scaled by its entry of `lr_multipliers` (`mup_learning_rate_multipliers`).
    `args`: the step's arguments (traced inside the step; the config's own numbers when omitted).

    Under muP the weight decay of a hidden matrix, lr * weight_decay per step, stays the same at
    every width (`train.mup_decay="width_independent"`), as in the mup package's MuAdamW, which
    divides such a matrix's lr by the width multiplier m and multiplies its weight_decay by m.
    "with_lr" scales the decay by 1/m together with the Adam step (omni before 2026-11-30; the
    muP sweeps in docs/scaling.md were measured so), so wider models decayed less."""
    t = config.train
    rule = mup_decay(config)
    args = step_arguments(config) if args is None else args
    # Weight decay on matrices only: not on biases, norms, or scalars like the temperature.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    schedule = lambda count: learning_rate(count, args)  # noqa: E731
    clip = optax.clip_by_global_norm(t.grad_clip)
    if lr_multipliers is not None and rule == "width_independent":
        # optax.adamw's own chain, with the muP multipliers on the Adam step before the decay.
        return optax.chain(clip, optax.scale_by_adam(b1=t.b1, b2=t.b2), mup.scale_updates(lr_multipliers),
                           optax.add_decayed_weights(t.weight_decay, decay_mask),
                           optax.scale_by_learning_rate(schedule))
    tx = optax.chain(clip, optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask))
    if lr_multipliers is not None:
        tx = optax.chain(tx, mup.scale_updates(lr_multipliers))
    return tx


def mup_learning_rate_multipliers(config, abstract_params: dict) -> dict | None:
    """Under muP, 1/m for the hidden matrices and 1 elsewhere (omni.mup), found by comparing the
    parameters' shapes with the same model's at model.mup_base_width; None under SP. Call
    outside `jax.set_mesh`, as for the abstract model itself."""
    if not mup.is_mup(config):
        return None
    base = config.copy_and_resolve_references()
    base.model.width = int(config.model.mup_base_width)
    base_params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Omni(base, nnx.Rngs(params=0)))))
    return mup.learning_rate_multipliers(abstract_params, base_params, config)


def _set_path(tree: dict, path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def param_shardings(abstract_state, mesh, allow_replication: bool = False) -> dict:
    """Pure dict (same structure as the params) of NamedShardings from each Param's logical names;
    ConfigError for a parameter the mesh would replicate, unless allow_replication (then listed)."""
    params = [(path, var.get_metadata().get("out_sharding") or (None,) * len(var.shape), var.shape, var.dtype)
              for path, var in nnx.to_flat_state(abstract_state)]
    out: dict = {}
    for path, spec in parallel.parameter_specs(params, mesh, allow_replication).items():
        _set_path(out, path, NamedSharding(mesh, spec))
    return out


def batch_spec(config, resolved=None) -> dict[str, dict[str, tuple[tuple, np.dtype]]]:
    """Global batch arrays, one sub-batch per modality set of the mixture (omni.data.mixture):
    set name -> key -> (shape, dtype). Each holds only its own modalities' arrays and presence
    bits, and `example_id` (omni.data.pipeline). `resolved`: the mixture, when already known."""
    resolved = resolved or pipeline.mixture_of(config)
    lengths = mixture.text_lengths(config, resolved)
    spec = {}
    for sub in resolved.sub_batches:
        arrays = {}
        shaped = mixture.sub_batch_config(config, sub, lengths)  # its own text length
        for name in sub.modalities:
            for key, (shape, dtype) in registry.get(name).array_spec(shaped).items():
                arrays[key] = ((sub.rows, *shape), dtype)
            arrays[f"{name}/present"] = ((sub.rows,), np.bool_)
        arrays["example_id"] = ((sub.rows,), np.uint32)
        spec[sub.name] = arrays
    return spec


@dataclass
class Setup:
    """Everything compiled code needs: the model's graph, state shardings, the step functions."""
    config: object
    mesh: object
    graphdef: object
    state_shardings: dict
    abstract_state: dict
    tx: object
    step_args: dict  # step_arguments(config): the third argument of every call of the train step
    lr_multipliers: dict | None  # muP's per-parameter learning-rate factors; None under SP

    def schedule(self, step: int) -> float:
        """The learning rate the step `step` uses (for logs)."""
        return float(learning_rate(jnp.int32(step), self.step_args))

    def step_args_on_devices(self) -> dict:
        """`step_args` as arrays replicated on the mesh, made once before a loop: the step then
        takes no host values per call (numpy arguments would be copied to the devices every step)."""
        replicated = NamedSharding(self.mesh, P())
        return {k: jax.make_array_from_process_local_data(replicated, np.asarray(v))
                for k, v in self.step_args.items()}

    def init_state(self):
        config = self.config

        def init():
            model = Omni(config, nnx.Rngs(params=int(config.train.seed)))
            params = nnx.to_pure_dict(nnx.split(model)[1])
            return {"step": jnp.zeros((), jnp.int32), "params": params,
                    "opt_state": self.tx.init(params), "bad_steps": jnp.zeros((), jnp.int32)}

        return jax.jit(init, out_shardings=self.state_shardings)()

    @functools.cached_property
    def mixture(self):
        """The rows per modality set of a training batch (omni.data.mixture), resolved once: an
        empty data.mixture reads the training split's proportions, which only training needs."""
        return pipeline.mixture_of(self.config)

    def batch_spec(self) -> dict:
        """The sub-batches' arrays; ConfigError when a sub-batch does not split over the batch
        shards of the mesh or over the processes."""
        shards = int(np.prod([self.mesh.shape[a] for a in ("data", "fsdp") if a in self.mesh.shape]))
        mixture.check_divides(self.mixture, shards, jax.process_count())
        return batch_spec(self.config, self.mixture)

    def batch_shardings(self):
        """The sharding of every array of every sub-batch: rows over the batch shards."""
        return {sub: {k: parallel.batch_sharding(self.mesh, len(shape)) for k, (shape, _) in arrays.items()}
                for sub, arrays in self.batch_spec().items()}

    def compile_train_step(self):
        """jit of `train_step(state, batch, step_args) -> (state, metrics)`; call it with
        `self.step_args` as the third argument."""
        step_fn = make_train_step(self.config, self.graphdef, self.lr_multipliers)
        replicated = NamedSharding(self.mesh, P())
        args_shardings = {k: replicated for k in self.step_args}
        return jax.jit(step_fn, in_shardings=(self.state_shardings, self.batch_shardings(), args_shardings),
                       out_shardings=(self.state_shardings, None), donate_argnums=0)

    def embed_fn(self, name: str):
        """params, numpy batch -> numpy normalised embeddings of one modality (unimodal pass).
        The batch is replicated on every device (each process passes the same full batch), so
        evaluation also works when the params live on devices of several processes."""
        graphdef = self.graphdef
        replicated = NamedSharding(self.mesh, P())
        embed = jax.jit(lambda params, batch: nnx.merge(graphdef, params).embed(name, batch),
                        out_shardings=replicated)

        def run(params, batch):
            batch = {k: jax.make_array_from_process_local_data(replicated, v) for k, v in batch.items()}
            with jax.set_mesh(self.mesh):
                return np.asarray(embed(params, batch))

        return run

    def match_fn(self, a: str, b: str):
        """params, numpy batch holding a's and b's inputs row by row -> numpy matching logits [B]
        (omni.matching: one fused pass over [a, b], in the order the pair was trained, which is
        the config's modality order whatever the order given). Needs loss.itm.weight > 0."""
        names = list(self.config.modalities.keys())
        a, b = sorted((a, b), key=names.index)
        graphdef = self.graphdef
        replicated = NamedSharding(self.mesh, P())

        def logits(params, batch):
            model = nnx.merge(graphdef, params)
            block_a = (*model.stems[a].embed(batch, model.dtype), batch[f"{a}/present"])
            block_b = (*model.stems[b].embed(batch, model.dtype), batch[f"{b}/present"])
            return matching.matching_logits(model, a, block_a, b, block_b)

        score = jax.jit(logits, out_shardings=replicated)

        def run(params, batch):
            batch = {k: jax.make_array_from_process_local_data(replicated, v) for k, v in batch.items()}
            with jax.set_mesh(self.mesh):
                return np.asarray(score(params, batch))

        return run


def layer_loop_config(config, mesh):
    """The config with `model.scan_layers` off where the mesh's collectives would not stay in order
    inside the layers' loop (omni.parallel.loop_collectives_are_ordered: XLA:CPU with sharded
    parameters). The parameters are stacked either way, so checkpoints do not change."""
    if not config.model.scan_layers or parallel.loop_collectives_are_ordered(mesh):
        return config
    print(f"omni: mesh {dict(mesh.shape)} on CPU shards the parameters: the layers run unrolled "
          "(model.scan_layers=false), since XLA:CPU can order the collectives inside a loop "
          "differently on different devices and deadlock (docs/launch.md)", file=sys.stderr, flush=True)
    config = config.copy_and_resolve_references()
    config.model.scan_layers = False
    return config


def build_setup(config, mesh) -> Setup:
    """Call outside `jax.set_mesh`: the abstract model must not pick up flax's own sharding."""
    config = layer_loop_config(config, mesh)
    abstract_model = nnx.eval_shape(lambda: Omni(config, nnx.Rngs(params=0)))
    graphdef, abstract_vars = nnx.split(abstract_model)
    shardings = param_shardings(abstract_vars, mesh, bool(config.mesh.get("allow_replication", False)))
    abstract_params = nnx.to_pure_dict(abstract_vars)
    lr_multipliers = mup_learning_rate_multipliers(config, abstract_params)
    tx = make_optimizer(config, lr_multipliers)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    replicated = NamedSharding(mesh, P())
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, shardings, transform_non_params=lambda _: replicated)
    state_shardings = {"step": replicated, "params": shardings, "opt_state": opt_shardings,
                       "bad_steps": replicated}
    abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
                      "opt_state": abstract_opt, "bad_steps": jax.ShapeDtypeStruct((), jnp.int32)}
    return Setup(config, mesh, graphdef, state_shardings, abstract_like(abstract_state, state_shardings),
                 tx, step_arguments(config), lr_multipliers)


def make_train_step(config, graphdef, lr_multipliers):
    def train_step(state, batch, args):
        tx = make_optimizer(config, lr_multipliers, args)
        rng = jax.random.fold_in(jax.random.key(args["seed"]), state["step"])
        batch = sub_batches.as_sub_batches(batch)

        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            return objectives.total_loss(model, batch, rng, config)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        grad_norm = optax.tree.norm(grads)
        # the parameters of a configured modality that no sub-batch holds stay as they are
        absent = [n for n in config.modalities if not sub_batches.holding(batch, n)]
        frozen = frozen_mask(state["params"], absent)
        updates, opt_state = update_trained(tx, grads, state["opt_state"], state["params"], frozen)
        params = jax.tree.map(lambda p, u, f: p if f else optax.apply_updates(p, u), state["params"], updates, frozen)
        # A non-finite loss or gradient skips the update (the data still moves on) and is counted.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = {
            "step": state["step"] + 1,
            "params": keep_if_finite(params, state["params"]),
            "opt_state": keep_if_finite(opt_state, state["opt_state"]),
            "bad_steps": jnp.where(finite, 0, state["bad_steps"] + 1),
        }
        # what the step did, counted on real tokens (omni.flops.real_work): MFU and tokens/s
        work = real_work(nnx.merge(graphdef, state["params"]), batch, config)
        metrics = dict(metrics, **work, grad_norm=grad_norm, skipped=(~finite).astype(jnp.int32))
        return new_state, metrics

    return train_step

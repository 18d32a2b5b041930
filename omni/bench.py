"""`omni plan` (compile the train step for the configured mesh, run nothing) and `omni bench`
(time the compiled step, the device's matmul peak, and the input pipeline, in one process)."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from omni import config as config_lib, parallel
from omni.train import (batch_spec, build_setup, measure_peak_flops, model_flops_per_step,
                        tokens_per_step)


def _setup(config):
    parallel.maybe_initialize_distributed()
    config_lib.validate(config, jax.device_count())
    mesh = parallel.make_mesh(config_lib.resolve_mesh_shape(config, jax.device_count()))
    return mesh, build_setup(config, mesh)


def _abstract_batch(setup):
    shardings = setup.batch_shardings()
    return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=shardings[k])
            for k, (shape, dtype) in batch_spec(setup.config).items()}


def _bytes_per_device(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
    return total


def _compiled_flops(compiled) -> float | None:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    return float(analysis["flops"]) if analysis and "flops" in analysis else None


def plan(config) -> dict:
    """Compile the train step on abstract inputs; report per-device memory and FLOPs."""
    mesh, setup = _setup(config)
    started = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = setup.compile_train_step().lower(setup.abstract_state, _abstract_batch(setup)).compile()
    compile_s = time.perf_counter() - started
    memory = compiled.memory_analysis()
    params = _bytes_per_device(setup.abstract_state["params"])
    optimizer = _bytes_per_device(setup.abstract_state["opt_state"])
    temp = int(getattr(memory, "temp_size_in_bytes", 0) or 0)
    arguments = int(getattr(memory, "argument_size_in_bytes", 0) or 0)
    outputs = int(getattr(memory, "output_size_in_bytes", 0) or 0)
    aliased = int(getattr(memory, "alias_size_in_bytes", 0) or 0)
    return {
        "mesh": dict(mesh.shape), "devices": jax.device_count(), "device": jax.devices()[0].device_kind,
        "params_bytes_per_device": params, "optimizer_bytes_per_device": optimizer,
        "activation_bytes_per_device": temp,
        # Donated state is aliased to the output, so it is counted once.
        "total_bytes_per_device": arguments + outputs - aliased + temp,
        "model_flops_per_step": model_flops_per_step(config),
        "compiled_flops_per_step_per_device": _compiled_flops(compiled),
        # XLA's cost analysis counts a while-loop body once: with scan_layers the compiled figure
        # covers one layer of the stack; plan with --config.model.scan_layers=false to compare.
        "compiled_flops_counts_one_layer": bool(config.model.scan_layers),
        "compile_time_s": compile_s,
    }


def _real_batch(config, setup):
    """One batch of the configured data (the embedded default set unless data.path is given)."""
    from omni.data import pipeline
    from omni.data.records import open_split
    from omni.modalities.text import BPETokenizer
    source = open_split(pipeline.resolve_data_dir(config), "train")
    lines = [t for _, t in zip(range(2000), pipeline.corpus_lines(source))]
    assets = {"tokenizer": BPETokenizer.train(lines, config.modalities.text.vocab_size)}
    local, _ = next(pipeline.training_batches(source, config, assets))
    shardings = setup.batch_shardings()
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}, source, assets


def _synthetic_batch(config, setup):
    """Random token ids and pixels, every modality present: no dataset or tokenizer needed."""
    rng = np.random.default_rng(0)
    shardings = setup.batch_shardings()
    batch = {}
    for key, (shape, dtype) in batch_spec(config).items():
        if dtype == np.bool_:
            value = np.ones(shape, np.bool_)
        elif key == "text/ids":
            value = rng.integers(4, config.modalities.text.vocab_size, shape).astype(dtype)
        else:
            value = rng.integers(0, 256, shape).astype(dtype)
        batch[key] = jax.make_array_from_process_local_data(shardings[key], value)
    return batch


def bench(config, steps: int = 5, warmup: int = 2, pipeline_batches: int = 0, synthetic: bool = False,
          profile_dir: str | None = None) -> dict:
    """Time `steps` train steps after `warmup`; peak FLOP/s from a matmul in this same process.
    With profile_dir, 2 more steps run under jax.profiler (after the timing, which it would skew)."""
    mesh, setup = _setup(config)
    state = setup.init_state()
    if synthetic:
        batch = _synthetic_batch(config, setup)
    else:
        batch, source, assets = _real_batch(config, setup)
    with jax.set_mesh(mesh):
        started = time.perf_counter()
        step_fn = setup.compile_train_step()
        compiled = step_fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - started
        for _ in range(warmup):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        started = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(state)
        step_s = (time.perf_counter() - started) / steps
        if profile_dir:
            with jax.profiler.trace(profile_dir):
                for _ in range(2):
                    state, metrics = compiled(state, batch)
                jax.block_until_ready(state)
    peak = measure_peak_flops(config.model.dtype)
    flops = model_flops_per_step(config)
    compiled_flops = _compiled_flops(compiled)
    result = {
        "config": config.name, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
        "dtype": config.model.dtype, "batch_size": int(config.train.batch_size),
        "step_time_s": step_s, "compile_time_s": compile_s,
        "model_flops_per_step": flops, "compiled_flops_per_step": compiled_flops,
        "peak_flops_per_s": peak, "mfu": flops / step_s / (peak * jax.device_count()),
        "tokens_per_s": tokens_per_step(config) / step_s,
        "examples_per_s": config.train.batch_size / step_s,
        "loss": float(metrics["loss"]),
    }
    if pipeline_batches and not synthetic:
        result.update(bench_pipeline(config, source, assets, pipeline_batches, step_s))
    return result


def bench_pipeline(config, source, assets, batches: int, step_s: float) -> dict:
    """Batches/s of the input pipeline alone (decode, tokenize, resize, stack), and how many
    times faster than the step consumes them."""
    from omni.data import pipeline
    iterator = pipeline.training_batches(source, config, assets, start_step=1)
    next(iterator)  # threads started, first batch ready
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    per_batch = (time.perf_counter() - started) / batches
    return {"pipeline_examples_per_s": config.train.batch_size / per_batch,
            "pipeline_to_step_ratio": step_s / per_batch}

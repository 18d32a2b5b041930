"""`omni bench`: time the compiled train step on one batch of the configured data (or a synthetic
one), beside the device's matmul peak measured in the same process, and the input pipeline alone.
FLOPs, `mfu` and `tokens_per_s` count present, non-padding tokens of that batch; `padded_mfu`
counts every token row the step computes, and `token_fill` is the real tokens' share of the token
rows the encoder computed."""
from __future__ import annotations

import time

import jax

from omni.bench.batches import real_batch, real_data, synthetic_batch
from omni.bench.plan import compiled_flops
from omni.bench.setup import mesh_and_setup
from omni.data import pipeline
from omni.flops import computed_flops, model_flops_per_step
from omni.peak import measure_peak_flops


def bench(config, steps: int = 5, warmup: int = 2, pipeline_batches: int = 0, synthetic: bool = False,
          profile_dir: str | None = None) -> dict:
    """Time `steps` train steps after `warmup`; peak FLOP/s from a matmul in this same process.
    With profile_dir, 2 more steps run under jax.profiler (after the timing, which it would skew)."""
    if not synthetic:
        config, source, assets = real_data(config)
    if steps == 0:  # the input pipeline alone: no model, no step, no peak
        if synthetic or not pipeline_batches:
            raise ValueError("omni bench --steps 0 times the input pipeline alone: give --pipeline-batches N "
                             "(and not --synthetic)")
        return {"config": config.name, "batch_size": int(config.train.batch_size),
                "mixture": config.data.mixture, **bench_pipeline(config, source, assets, pipeline_batches)}
    mesh, setup = mesh_and_setup(config)
    state = setup.init_state()
    batch = synthetic_batch(config, setup) if synthetic else real_batch(config, setup, source, assets)
    with jax.set_mesh(mesh):
        started = time.perf_counter()
        step_fn = setup.compile_train_step()
        compiled = step_fn.lower(state, batch, setup.step_args).compile()
        compile_s = time.perf_counter() - started
        for _ in range(warmup):
            state, metrics = compiled(state, batch, setup.step_args)
        jax.block_until_ready(state)
        started = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch, setup.step_args)
        jax.block_until_ready(state)
        step_s = (time.perf_counter() - started) / steps
        if profile_dir:
            with jax.profiler.trace(profile_dir):
                for _ in range(2):
                    state, metrics = compiled(state, batch, setup.step_args)
                jax.block_until_ready(state)
    peak = measure_peak_flops(config.model.dtype)
    padded = model_flops_per_step(config, pipeline.slot_layout(config))
    work = {k: float(metrics[k]) for k in ("real_flops", "real_tokens", "encoder_tokens", "encoder_rows",
                                           "encoder_slots")}
    computed = computed_flops(config, padded, work)
    total_peak = peak * jax.device_count()
    result = {
        "config": config.name, "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
        "dtype": config.model.dtype, "batch_size": int(config.train.batch_size),
        "mixture": config.data.mixture or pipeline.mixture_of(config).spec(),
        "text_lengths": str(config.data.get("text_lengths", "") or ""),
        "token_capacity": float(config.model.get("token_capacity", 1.0)),
        "step_time_s": step_s, "compile_time_s": compile_s,
        # FLOPs, MFU and tokens/s count present, non-padding tokens; padded_mfu counts every token row computed
        "model_flops_per_step": work["real_flops"], "padded_flops_per_step": computed,
        "compiled_flops_per_step": compiled_flops(compiled),
        "peak_flops_per_s": peak, "mfu": work["real_flops"] / step_s / total_peak,
        "padded_mfu": computed / step_s / total_peak,
        "token_fill": work["encoder_tokens"] / work["encoder_rows"],
        "tokens_per_s": work["real_tokens"] / step_s,
        "examples_per_s": config.train.batch_size / step_s,
        "loss": float(metrics["loss"]),
    }
    if pipeline_batches and not synthetic:
        result.update(bench_pipeline(config, source, assets, pipeline_batches, step_s))
    return result


def bench_pipeline(config, source, assets, batches: int, step_s: float | None = None) -> dict:
    """Examples/s of the input pipeline alone (read, decode, tokenize, resize, stack), per host
    core it ran on (data.workers worker processes, or this one process's threads under one GIL),
    and how many times faster than the step consumes them."""
    iterator = pipeline.training_batches(source, config, assets, start_step=1)
    next(iterator)  # threads started, first batch ready
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    per_batch = (time.perf_counter() - started) / batches
    cores = max(1, pipeline.decode_workers(config))
    result = {"pipeline_examples_per_s": config.train.batch_size / per_batch, "pipeline_cores": cores,
              "pipeline_examples_per_s_per_core": config.train.batch_size / per_batch / cores}
    if step_s is not None:
        result["pipeline_to_step_ratio"] = step_s / per_batch
    return result

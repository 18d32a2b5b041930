"""The training loop, top to bottom in banner sections: mesh -> input and assets -> state -> step
-> loop. Each section is a short function; `train` reads as the list of them.

Random keys come from (seed, step) and data order from (seed, position), so a run resumed from a
checkpoint continues exactly as an uninterrupted run would. Evaluation is injected (`evaluator`),
so the trainer does not depend on the tools built on top of it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import jax

from omni import config as config_lib, parallel, storage
from omni.checkpoint import Checkpoints
from omni.data import pipeline
from omni.data.records import open_split, split_names
from omni.errors import Preempted
from omni.flops import computed_flops, model_flops_per_step
from omni.model import count_params
from omni.peak import measure_peak_flops
from omni.run.assets import load_or_fit_assets, log
from omni.run.bundle import load_bundle_params
from omni.run.capacity import with_token_capacity
from omni.run.setup import build_setup
from omni.train.guards import BadStepWatch, check_resume_compatible
from omni.train.metrics import MetricsWriter, Progress
from omni.train.preemption import Preemption
from omni.validation import validate


class Evaluator(Protocol):
    """What the loop needs from periodic evaluation (omni.eval.periodic.PeriodicEvaluator)."""

    def check(self, config) -> None:
        """Fail now, before training, on a config the evaluation cannot run (a typo in eval.tasks)."""

    def __call__(self, setup, params, config, assets, data_dir) -> dict[str, float]:
        """Flat metrics, e.g. {"eval/retrieval/image->text/R@1": 0.12}."""


def train(config, workdir: str | Path, evaluator: Evaluator | None = None) -> dict:
    """Train (or resume) the run in workdir; returns the last logged metrics. SIGTERM or SIGUSR1
    saves a checkpoint (at one agreed step on every process) and raises Preempted. With an
    evaluator, it runs every train.eval_every steps on the held-out split config.eval.split
    (when the dataset has one). workdir: a local folder, gs://bucket/... or s3://bucket/...
    (omni.storage)."""
    workdir = storage.path(workdir)
    with Preemption() as preemption:
        parallel.maybe_initialize_distributed()  # before anything touches JAX (the logs do)
        validate(config, jax.device_count())  # a config that cannot work fails before any data is read
        config = set_up_mixture(config)
        mesh = set_up_mesh(config, workdir)
        data_dir, source, checkpoints, assets, saved_assets = set_up_input(config, workdir)
        config = set_up_text_lengths(config, workdir, source, assets)
        config = set_up_token_capacity(config, workdir, source, assets)
        try:
            setup, state, start = set_up_state(config, mesh, checkpoints)
            if evaluator is not None and config.train.eval_every > 0 and config.eval.split in split_names(data_dir):
                evaluator.check(config)  # a typo in eval.tasks fails now, not at the first evaluation
            else:
                evaluator = None
            return run_loop(config, workdir, setup, state, start, source, assets, saved_assets, checkpoints,
                            data_dir, evaluator, preemption)
        finally:
            checkpoints.close()


# ==============================================================================================
# Set up the mesh
# ==============================================================================================

def set_up_mixture(config):
    """data.mixture as rows per modality set (omni.data.mixture), written into the config (and so
    into config.json) before anything else reads it; sets of the data that get no rows are reported."""
    config, resolved = pipeline.with_resolved_mixture(config)
    log(f"sub-batches by modality set: {config.data.mixture}")
    for name, count in resolved.unused.items():
        log(f"warning: {count} training records hold {name}, a set data.mixture gives no rows: they are "
            "not trained on (add the set to data.mixture)")
    return config


def set_up_mesh(config, workdir):
    parallel.maybe_initialize_distributed()
    validate(config, jax.device_count())
    mesh = parallel.make_mesh(config_lib.resolve_mesh_shape(config, jax.device_count()))
    check_resume_compatible(config, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(config, workdir)
    log(f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es); workdir {workdir}")
    return mesh


def write_config(config, workdir) -> None:
    if jax.process_index() == 0:
        # Written whole: the other processes read it at the same time (resume check).
        storage.write_text_atomic(workdir / "config.json", config_lib.to_json(config))


# ==============================================================================================
# Input pipeline and the run's assets
# ==============================================================================================

def set_up_input(config, workdir):
    data_dir = pipeline.resolve_data_dir(config)
    source = open_split(data_dir, "train")
    checkpoints = Checkpoints(workdir / "checkpoints", keep=int(config.train.keep_checkpoints))
    assets, saved_assets = load_or_fit_assets(config, workdir, checkpoints, source)
    return data_dir, source, checkpoints, assets, saved_assets


def set_up_text_lengths(config, workdir, source, assets):
    """Each sub-batch's own text length, measured with the run's tokenizer when data.text_lengths
    is empty or auto (omni.data.pipeline.with_text_lengths), and written to config.json."""
    resolved = pipeline.with_text_lengths(config, source, assets)
    if resolved is not config:
        log(f"text tokens per sub-batch: {resolved.data.text_lengths}")
        write_config(resolved, workdir)
    return resolved


def set_up_token_capacity(config, workdir, source, assets):
    """The encoder's token rows as a share of its slots, measured on the run's first batches when
    model.token_capacity is 0 (omni.run.capacity), and written to config.json."""
    resolved = with_token_capacity(config, source, assets)
    if resolved is not config:
        log(f"token capacity: {resolved.model.token_capacity} of the encoder's token slots")
        write_config(resolved, workdir)
    return resolved


# ==============================================================================================
# Model, optimizer, shardings: restore or initialise
# ==============================================================================================

def set_up_state(config, mesh, checkpoints: Checkpoints):
    setup = build_setup(config, mesh)
    with jax.set_mesh(mesh):
        start = checkpoints.latest_step()
        if start is not None:
            state = checkpoints.restore_state(start, setup.abstract_state)
            log(f"resumed from step {start}")
        else:
            state = setup.init_state()
            if config.init_from:
                state["params"] = jax.device_put(load_bundle_params(config.init_from, state["params"]),
                                                 setup.state_shardings["params"])
                log(f"initialised from bundle {config.init_from}")
            start = 0
        log(f"{count_params(state['params']):,} parameters")
    return setup, state, start


# ==============================================================================================
# Train loop
# ==============================================================================================

def run_loop(config, workdir, setup, state, start, source, assets, saved_assets, checkpoints, data_dir,
             evaluator, preemption) -> dict:
    steps = int(config.train.steps)
    with jax.set_mesh(setup.mesh):
        train_step = setup.compile_train_step()  # the update step, compiled once (omni.run.setup)
        batch_shardings = setup.batch_shardings()
        step_args = setup.step_args_on_devices()
    # every token slot of the global batch; the real-token count comes from the step itself
    padded_flops = model_flops_per_step(config, pipeline.slot_layout(config, setup.mixture))
    # The configured peak, or a quicker measurement than `omni bench` takes (it starts every run),
    # so this MFU may read a few percent high.
    peak = float(config.train.get("peak_flops_per_device", 0.0)) or \
        measure_peak_flops(config.model.dtype, warmup_s=0.5, cpu_measure_s=0.0)
    peak *= jax.device_count()
    writer = MetricsWriter(workdir)
    progress = Progress(steps, start)
    batches = pipeline.training_batches(source, config, assets, start_step=start)
    skipped_examples = 0
    bad_steps = BadStepWatch(config, start)
    last = {}
    window_start, window_steps, window_work = time.perf_counter(), 0, None
    try:
        with jax.set_mesh(setup.mesh):
            for step in range(start, steps):
                local_batch, problems = next(batches)
                for problem in problems:
                    log(f"skipped input: {problem}")
                skipped_examples += len(problems)
                batch = jax.tree.map(jax.make_array_from_process_local_data, batch_shardings, local_batch)
                state, metrics = train_step(state, batch, step_args)
                window_work = work_so_far(window_work, metrics)
                bad_steps.check(metrics, checkpoints)
                window_steps += 1
                done = step + 1
                if done % config.train.log_every == 0 or done == steps:
                    # The only host sync of the loop: once per log interval.
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items() if k not in WORK}
                    work = {k: float(v) / window_steps for k, v in jax.device_get(window_work).items()}
                    elapsed = (time.perf_counter() - window_start) / window_steps
                    last = {**metrics, "lr": float(setup.schedule(step)), "step_time_s": elapsed,
                            **rates(work, padded_flops, elapsed, peak, config), "skipped_examples": skipped_examples}
                    writer.write(done, last)
                    progress.update(done, loss=f"{last['loss']:.4f}", rate=f"{1 / elapsed:.2f}",
                                    mfu=f"{last['mfu']:.2f}")
                    window_start, window_steps, window_work = time.perf_counter(), 0, None
                else:
                    progress.update(done)
                if done % config.train.checkpoint_every == 0 or done == steps:
                    checkpoints.save(done, state, saved_assets)
                if evaluator is not None and (done % config.train.eval_every == 0 or done == steps):
                    results = evaluator(setup, state["params"], config, assets, data_dir)
                    writer.write(done, results)
                    last.update(results)
                    log(" ".join(f"{k}={v:.3f}" for k, v in results.items() if k.endswith("R@1")))
                    window_start, window_steps, window_work = time.perf_counter(), 0, None
                if preemption.reached(done):
                    if checkpoints.latest_step() != done:
                        checkpoints.save(done, state, saved_assets, force=True)
                    raise Preempted(f"preemption signal: saved a checkpoint at step {done}; rerun the same command to resume")
    finally:
        progress.close()
        writer.close()
    return last


# omni.flops.real_work and the encoder's counts (omni.objectives.run_passes): summed over a log window
WORK = ("real_flops", "real_tokens", "encoder_tokens", "encoder_rows", "encoder_slots")


def work_so_far(window, metrics):
    """The window's running sums of the step's work counts, on the device (no host sync)."""
    step = {k: metrics[k] for k in WORK}
    return step if window is None else jax.tree.map(lambda a, b: a + b, window, step)


def rates(work: dict, padded_flops: float, step_s: float, peak: float, config) -> dict:
    """Per-step work (means over the window) -> the logged rates: `mfu` and `tokens_per_s` on
    present, non-padding tokens; `padded_mfu` counting every token row computed (`computed_flops`);
    `token_fill`, the real tokens' share of the token rows the encoder computed."""
    computed = computed_flops(config, padded_flops, work)
    return {"tokens_per_s": work["real_tokens"] / step_s, "mfu": work["real_flops"] / step_s / peak,
            "padded_mfu": computed / step_s / peak, "token_fill": work["encoder_tokens"] / work["encoder_rows"],
            "model_flops_per_step": work["real_flops"], "real_tokens_per_step": work["real_tokens"],
            "token_rows_per_step": work["encoder_rows"]}

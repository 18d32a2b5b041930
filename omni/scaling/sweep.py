"""Running a sweep (`omni sweep`): train every grid point into out/runs/<name> and record its
result.json (omni.scaling.measure says what the numbers are), locally one after another or as a
SLURM job array.

A run whose result.json exists is finished and never rerun; a run interrupted half-way resumes
from its last checkpoint (omni.train does that). The runs share one tokenizer and a JAX
persistent compilation cache in the sweep's directory.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as cc

from omni import config as config_lib, parallel
from omni.data import pipeline
from omni.flops import model_flops_per_step
from omni.modalities import registry
from omni.modalities.text import SPECIAL_TOKENS, BPETokenizer
from omni.scaling import slurm_array
from omni.scaling.grid import build_run_config, grid_points, load_sweep, resolve_base, resolve_sweep_file
from omni.scaling.measure import (compiled_step_flops, heldout_losses, last_training_row, mesh_and_setup,
                                  non_embedding_params)
from omni.scaling.results import load_results, write_json, write_runs_csv
from omni.train import train


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def persistent_compilation_cache(directory: Path):
    """Use a JAX persistent compilation cache in `directory` (unless one is already configured),
    so that compiling the step for its cost analysis and train()'s own compile of the same step
    cost one compile, and a resumed sweep recompiles nothing."""
    if jax.config.jax_compilation_cache_dir:
        yield
        return
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    previous = {name: getattr(jax.config, name) for name in names}
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    cc.reset_cache()
    try:
        yield
    finally:
        for name, value in previous.items():
            jax.config.update(name, value)
        cc.reset_cache()


def _tokenizer_key(config) -> str:
    text = f"{Path(pipeline.resolve_data_dir(config)).resolve()}|{config.modalities.text.vocab_size}" \
        if "text" in config.modalities else ""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def run_one(name: str, overrides: list[str], base: str, run_dir: Path, sweep, shared_dir: Path,
            point: dict | None = None) -> dict:
    """Train one grid point (resuming if interrupted) and write run_dir/result.json."""
    config = build_run_config(base, overrides)
    run_dir.mkdir(parents=True, exist_ok=True)
    # One tokenizer for the whole sweep (same data, same vocabulary): text losses stay comparable
    # across runs and it is trained once.
    if "text" in config.modalities:
        shared_tokenizer = shared_dir / f"tokenizer-{_tokenizer_key(config)}.json"
        if shared_tokenizer.exists() and not (run_dir / "tokenizer.json").exists() \
                and not (run_dir / "checkpoints").exists():
            shutil.copyfile(shared_tokenizer, run_dir / "tokenizer.json")

    if "text" not in config.modalities and not (run_dir / "tokenizer.json").exists():
        # omni.train always loads or trains a tokenizer, and training one needs modalities.text:
        # a run without text gets a placeholder (byte-level symbols only), never used.
        BPETokenizer.train(["placeholder"], len(SPECIAL_TOKENS) + 257).save(run_dir / "tokenizer.json")

    started = time.perf_counter()
    _, setup = mesh_and_setup(config)
    n_non_embedding, n_total = non_embedding_params(setup.abstract_state["params"])
    xla = {}
    if sweep.get("cost_analysis", True):
        try:
            xla = compiled_step_flops(config)
        except Exception as e:  # noqa: BLE001 -- optional: a failure must not lose the run
            xla = {"xla_error": f"{type(e).__name__}: {e}"}
    last = train(config, run_dir)
    train_s = time.perf_counter() - started

    if "text" in config.modalities and (run_dir / "tokenizer.json").exists():
        shared_tokenizer = shared_dir / f"tokenizer-{_tokenizer_key(config)}.json"
        if not shared_tokenizer.exists():  # whole or not at all: array tasks run side by side
            partial = shared_tokenizer.with_name(f"{shared_tokenizer.name}.tmp-{os.getpid()}")
            shutil.copyfile(run_dir / "tokenizer.json", partial)
            os.replace(partial, shared_tokenizer)

    steps, batch = int(config.train.steps), int(config.train.batch_size)
    trained = config_lib.from_json_file(run_dir / "config.json")  # as resolved by the run
    sub_batches = pipeline.slot_layout(trained)
    # slots per modality: its tokens in every row of the sub-batches that hold it
    tokens_per_modality = {m: sum(rows * own.get(m, int(registry.get(m).num_tokens(config)))
                                  for held, rows, own in sub_batches if m in held) * steps
                           for m in config.modalities}
    padded_flops_per_step = model_flops_per_step(config, sub_batches)
    # The last training row of metrics.jsonl (train() returns nothing new when it resumes a run
    # that had already finished training). An objective that had nothing to score reports
    # exactly 0 (e.g. mmm in a one-modality run): left out.
    row = last_training_row(run_dir) or last
    # D and C on present, non-padding tokens (omni.flops.real_work, logged per step), so that a
    # law carries over between data mixtures; the slot counts stay beside them
    D = float(row.get("real_tokens_per_step", 0.0)) * steps or float(sum(tokens_per_modality.values()))
    flops_per_step = float(row.get("model_flops_per_step", 0.0)) or padded_flops_per_step
    train_row = {k: float(v) for k, v in row.items()
                 if k == "loss" or (k.startswith("loss/") and float(v) != 0.0)}

    eval_batches = int(sweep.get("eval_batches", 0) or 0)
    held_out = None
    if eval_batches > 0 and jax.process_count() == 1:
        held_out = heldout_losses(run_dir, str(config.eval.split), eval_batches, config)
    from_train_row = []
    if held_out is not None:
        losses = {k: v for k, v in held_out.items() if k == "loss" or k.startswith("loss/")}
        source = f"held-out split '{config.eval.split}', {eval_batches} batches of {batch}"
        # An objective that had nothing to score in any held-out batch (e.g. mlm when the split
        # holds only pairs and no batch dropped a modality) keeps its final training value.
        from_train_row = sorted(k for k in train_row if k not in losses)
        losses.update({k: train_row[k] for k in from_train_row})
        if from_train_row:
            losses["loss"] = sum(float(config.loss[name].weight) * losses[f"loss/{name}"] for name in config.loss
                                 if float(config.loss[name].weight) > 0 and f"loss/{name}" in losses)
    else:
        losses = train_row
        source = "final training row of metrics.jsonl (no held-out loss)"
    per_modality = {m: losses.get(f"loss/{registry.get(m).objective}") for m in config.modalities}

    result = {
        "name": name, "point": dict(point or {}), "overrides": list(overrides), "modalities": sorted(config.modalities.keys()),
        "width": int(config.model.width), "depth": int(config.model.depth),
        "N": n_non_embedding, "N_total": n_total,
        "steps": steps, "batch_size": batch, "D": D, "D_per_modality": tokens_per_modality,
        "D_slots": float(sum(tokens_per_modality.values())), "padded_flops_per_step": padded_flops_per_step,
        "C_6ND": 6.0 * n_non_embedding * D,
        "C_analytic": flops_per_step * steps, "analytic_flops_per_step": flops_per_step,
        **{k: v for k, v in xla.items()},
        "loss": losses.get("loss"), "losses": losses, "loss_per_modality": per_modality,
        "loss_source": source, "losses_from_train_row": from_train_row, "final_train_losses": train_row,
        "heldout_sem": (held_out or {}).get("sem"),
        "lr": float(config.train.lr), "seed": int(config.train.seed),
        "parametrization": str(config.model.get("parametrization", "sp")),
        "mup_base_width": int(config.model.get("mup_base_width", 0) or 0),
        "wall_s": time.perf_counter() - started, "train_s": train_s,
    }
    if xla.get("xla_flops_per_step") is not None:
        result["C_xla"] = xla["xla_flops_per_step"] * steps
    if xla.get("hlo_unrolled_flops_per_step") is not None:
        result["C_hlo_unrolled"] = xla["hlo_unrolled_flops_per_step"] * steps
    write_json(run_dir / "result.json", result)
    return result


def omni_executable() -> str:
    """The `omni` of this Python's environment (what the array tasks run), else `omni` on PATH."""
    beside = Path(sys.executable).parent / "omni"
    return str(beside) if beside.exists() else "omni"


def run_sweep(sweep_config_path, out_dir, only: int | None = None, runner: str | None = None,
              max_parallel: int | None = None) -> dict:
    """Run the grid points of the sweep config into out_dir/runs/<name>, skipping those whose
    result.json exists, and write out_dir/runs.csv. runner (the argument, else the config's):
    "local": all of them, one after another, here. "slurm": write out_dir/sweep.sbatch and, when
    sbatch is on PATH, submit the unfinished points as one job array, at most `max_parallel` at
    a time (omni.scaling.slurm_array). `only`: just that grid point, here (what each array task
    does). Returns a summary."""
    sweep_file = resolve_sweep_file(sweep_config_path)
    sweep = load_sweep(sweep_file)
    runner = str(runner or sweep.get("runner", "local"))
    if runner not in ("local", "slurm"):
        raise ValueError(f"{sweep_file}: runner '{runner}': use local or slurm")
    out = Path(out_dir)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    base = resolve_base(sweep, sweep_file)
    points = grid_points(sweep)
    if only is None:
        shutil.copyfile(sweep_file, out / "sweep_config.py")
    if runner == "slurm" and only is None:
        script = slurm_array.write_array_script(sweep, sweep_file, out, omni_executable())
        if not shutil.which("sbatch"):
            return {"out": str(out), "runs": len(points), "script": str(script), "submitted": None,
                    "note": "sbatch is not on PATH: submit the script with sbatch --array=0-"
                            f"{len(points) - 1} {script}"}
        return {"out": str(out), "runs": len(points),
                **slurm_array.submit_unfinished(script, out, points, max_parallel)}
    if only is not None:
        if not 0 <= only < len(points):
            raise ValueError(f"--only {only}: the sweep has grid points 0..{len(points) - 1}")
        points = [points[only]]
    parallel.maybe_initialize_distributed()
    trained, skipped = [], []
    cache = persistent_compilation_cache(out / "jax_cache") if sweep.get("compilation_cache", True) \
        else contextlib.nullcontext()
    with cache:
        for i, point in enumerate(points):
            run_dir = out / "runs" / point["name"]
            result_file = run_dir / "result.json"
            if result_file.exists():
                recorded = json.loads(result_file.read_text())
                if recorded.get("overrides") != point["overrides"]:
                    log(f"[sweep] {point['name']}: result.json was made with other overrides; kept "
                        "(delete it to rerun)")
                skipped.append(point["name"])
                log(f"[sweep] {i + 1}/{len(points)} {point['name']}: finished before, skipped")
                continue
            log(f"[sweep] {i + 1}/{len(points)} {point['name']}: {' '.join(point['overrides'])}")
            run_one(point["name"], point["overrides"], base, run_dir, sweep, out, point["point"])
            trained.append(point["name"])
            if only is None:  # array tasks run at once: leave runs.csv to `omni scaling fit`
                write_runs_csv(load_results(out), out / "runs.csv")
    results = load_results(out)
    csv_path = write_runs_csv(results, out / "runs.csv")
    return {"out": str(out), "runs": len(points), "trained": trained, "skipped": skipped,
            "csv": str(csv_path)}


def sweep_status(out_dir) -> dict:
    """`omni sweep --status DIR`: each grid point done / running / queued / failed / not submitted,
    with the SLURM job id of its array task (from DIR/slurm_jobs.jsonl and squeue)."""
    out = Path(out_dir)
    config_copy = out / "sweep_config.py"
    if not config_copy.exists():
        raise FileNotFoundError(f"{out}: no sweep_config.py (not a folder written by `omni sweep`)")
    rows = slurm_array.point_states(out, grid_points(load_sweep(config_copy)))
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return {"out": str(out), "counts": counts, "points": rows}

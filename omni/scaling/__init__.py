"""Scaling laws: run a grid of trainings (`omni sweep`), fit L(N, D) to them (`omni scaling fit`).

    law          L(N, D) = E + A/N^alpha + B/D^beta and its fit (Hoffmann et al. 2022, approach 3)
    interaction  the two-modality interaction term (Aghajanyan et al. 2023, bi-modal law) and its fit
    approach2    Chinchilla approach 2: IsoFLOP parabolas, N_opt = k C^a
    loo          leave-one-out refits and the held-out prediction of one run
    checks       holdout, approach 2 against 3, leave-one-out and noise for a fitted group
    lr_transfer  `omni scaling lr-transfer`: best lr per width under SP and muP (Tensor Programs V)
    optimise     Huber loss, multi-start L-BFGS-B, bootstrap percentiles (shared by both fits)
    grid         a sweep config, its grid points, each point's run config
    measure      what a run's numbers are: N, C (analytic, XLA), held-out L
    sweep        `omni sweep`: train the points (locally or as a SLURM job array), record result.json
    slurm_array  the job array: its script, submitting the unfinished points, `omni sweep --status`
    results      result.json / runs.csv reading and writing
    fit_dir      `omni scaling fit`: fit a sweep directory, write fit.json; load_fit
    plots        the fit's PNG plots
    commands     the CLI entry points

Modules inside omni import from these submodules; this package re-exports the public names.
"""
from omni.scaling.approach2 import fit_approach2, isoflop_slices, parabola_minimum
from omni.scaling.checks import check_group, seed_noise
from omni.scaling.commands import cli_fit, cli_lr_transfer, cli_sweep
from omni.scaling.fit_dir import fit_dir, holdout_largest, load_fit
from omni.scaling.grid import build_run_config, grid_points, load_sweep, resolve_sweep_file
from omni.scaling.interaction import Interaction, fit_interaction
from omni.scaling.law import CHINCHILLA_GRID, Fit, Law, fit_law
from omni.scaling.loo import holdout, largest_index, leave_one_out
from omni.scaling.lr_transfer import grid_factor, interpolated_minimum, lr_transfer
from omni.scaling.measure import (EMBEDDING_KEYS, compiled_step_flops, heldout_losses, last_training_row,
                                  non_embedding_params)
from omni.scaling.optimise import HUBER_DELTA
from omni.scaling.plots import make_plots
from omni.scaling.results import CSV_COLUMNS, load_results, write_runs_csv
from omni.scaling.slurm_array import ARRAY_SCRIPT, array_spec, write_array_script
from omni.scaling.sweep import persistent_compilation_cache, run_one, run_sweep, sweep_status

__all__ = [
    "CHINCHILLA_GRID", "CSV_COLUMNS", "EMBEDDING_KEYS", "HUBER_DELTA", "ARRAY_SCRIPT",
    "Fit", "Interaction", "Law", "array_spec",
    "build_run_config", "check_group", "cli_fit", "cli_lr_transfer", "cli_sweep", "compiled_step_flops", "fit_approach2",
    "fit_dir", "fit_interaction", "fit_law", "grid_factor", "grid_points", "heldout_losses", "holdout", "holdout_largest",
    "interpolated_minimum", "isoflop_slices", "largest_index", "last_training_row", "leave_one_out", "load_fit",
    "load_results", "lr_transfer", "parabola_minimum", "seed_noise",
    "load_sweep", "make_plots", "non_embedding_params", "persistent_compilation_cache", "resolve_sweep_file",
    "run_one", "run_sweep", "sweep_status", "write_array_script", "write_runs_csv",
]

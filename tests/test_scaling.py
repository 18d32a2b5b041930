"""Scaling laws: the fit recovers a known law, the compute-optimal formula matches brute force,
the interaction fit recovers a known interaction, fit_dir writes its outputs, and a resumed sweep
skips finished runs."""
import json
import math
import os

import numpy as np
import pytest

from omni import scaling
from omni.scaling import Interaction, Law, fit_interaction, fit_law
from tests.conftest import REPO, SMALL

CHINCHILLA = Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def grid_runs(n_sizes=8, n_budgets=8):
    N, D = np.meshgrid(np.logspace(6, 9, n_sizes), np.logspace(8, 11, n_budgets))
    return N.ravel(), D.ravel()


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_recovers_known_law(seed):
    N, D = grid_runs()
    rng = np.random.default_rng(seed)
    L = CHINCHILLA(N, D) * np.exp(rng.normal(0.0, 1e-3, N.shape))  # 0.1% noise
    fit = fit_law(N, D, L, bootstrap=30, seed=seed)
    for name in ("E", "A", "B", "alpha", "beta"):
        true, got = getattr(CHINCHILLA, name), getattr(fit.law, name)
        assert abs(got / true - 1) < 0.05, (name, got, true)
        low, high = fit.intervals[name]
        assert low <= got * (1 + 1e-9) and got <= high * (1 + 1e-9), (name, low, got, high)
    assert fit.bootstrap["n"] == 30


def test_compute_optimal_matches_brute_force():
    law = CHINCHILLA
    for C in (1e18, 1e21, 1e24):
        n_opt, d_opt = law.compute_optimal(C)
        assert 6 * n_opt * d_opt == pytest.approx(C, rel=1e-9)
        grid = np.logspace(5, 14, 400_001)
        losses = law(grid, C / (6 * grid))
        brute = grid[np.argmin(losses)]
        assert n_opt == pytest.approx(brute, rel=1e-3)
        assert law.frontier(C) == pytest.approx(losses.min(), rel=1e-9)
        # the closed form's pieces
        G = (law.alpha * law.A / (law.beta * law.B)) ** (1 / (law.alpha + law.beta))
        assert n_opt == pytest.approx(G * (C / 6) ** (law.beta / (law.alpha + law.beta)), rel=1e-12)


def test_fit_interaction_recovers_known_term():
    law_i, law_j = Law(1.5, 300.0, 400.0, 0.3, 0.3), Law(2.0, 200.0, 900.0, 0.25, 0.35)
    true = Interaction(C=0.05, beta=30.0, alpha=0.35, gamma=50.0, alpha_d=0.35)
    N, D = grid_runs(6, 6)
    rng = np.random.default_rng(0)
    L = true.mixed_loss(law_i, law_j, N, D / 2, D / 2) * np.exp(rng.normal(0.0, 1e-3, N.shape))
    result = fit_interaction(N, D / 2, D / 2, L, law_i, law_j)
    got = result["interaction"]
    assert got.C == pytest.approx(true.C, rel=0.15)
    assert got.alpha == pytest.approx(true.alpha, rel=0.15)
    np.testing.assert_allclose(got.term(N, D), true.term(N, D), atol=0.01)
    assert got.barrier(20.0) == pytest.approx(true.barrier(20.0), rel=0.25)
    # compete at small scale, help each other beyond the barrier
    assert got.term(1e6, 2e7) > 0 > got.term(1e12, 2e13)


def _fake_result(name, modalities, N, D, losses, per_modality):
    return {"name": name, "modalities": modalities, "N": N, "N_total": N * 1.1, "D": D,
            "D_per_modality": {m: D / len(modalities) for m in modalities}, "steps": 1, "batch_size": 1,
            "C_6ND": 6 * N * D, "C_analytic": 12 * N * D, "loss": losses["loss"], "losses": losses,
            "loss_per_modality": per_modality, "loss_source": "synthetic"}


def test_fit_dir_writes_fits_plots_and_interactions(tmp_path):
    law_text, law_image = Law(1.5, 300.0, 400.0, 0.3, 0.3), Law(2.0, 200.0, 900.0, 0.25, 0.35)
    mixed = Interaction(C=0.05, beta=30.0, alpha=0.35, gamma=50.0, alpha_d=0.35)
    rng = np.random.default_rng(0)
    noise = lambda: math.exp(rng.normal(0.0, 1e-3))  # noqa: E731
    N, D = grid_runs(5, 4)
    results = []
    for k, (n, d) in enumerate(zip(N, D)):
        text, image = law_text(n, d) * noise(), law_image(n, d) * noise()
        results.append(_fake_result(f"text-{k:02d}", ["text"], n, d, {"loss": text, "loss/mlm": text}, {"text": text}))
        results.append(_fake_result(f"image-{k:02d}", ["image"], n, d, {"loss": image, "loss/mim": image},
                                    {"image": image}))
        both = float(mixed.mixed_loss(law_image, law_text, n, d / 2, d / 2)) * noise()
        # per-modality losses of the mixed run whose mean is the mixed loss
        t, i = both + 0.1, both - 0.1
        total = CHINCHILLA(n, d) * noise()
        results.append(_fake_result(f"both-{k:02d}", ["image", "text"], n, d,
                                    {"loss": total, "loss/mlm": t, "loss/mim": i}, {"text": t, "image": i}))
    for r in results:
        (tmp_path / "runs" / r["name"]).mkdir(parents=True)
        (tmp_path / "runs" / r["name"] / "result.json").write_text(json.dumps(r))

    summary = scaling.cli_fit(tmp_path, bootstrap=10, loo=False)   # leave-one-out has its own test
    data = json.loads((tmp_path / "fit.json").read_text())
    assert data["main"] == "image+text"
    assert set(data["groups"]) == {"image", "text", "image+text"}
    loss = data["groups"]["image+text"]["fits"]["loss"]
    for name in ("E", "A", "B", "alpha", "beta"):
        assert loss[name] == pytest.approx(getattr(CHINCHILLA, name), rel=0.1), name
        assert name in loss["intervals"]
    assert {"loss", "loss/mlm", "loss/mim"} <= set(data["groups"]["image+text"]["fits"])
    assert loss["holdout_largest"]["relative_error"] < 0.05
    row = loss["compute_optimal"][0]
    assert 6 * row["N_opt"] * row["D_opt"] == pytest.approx(row["C"], rel=1e-9)
    interaction = data["interactions"]["image+text"]
    assert interaction["C"] == pytest.approx(mixed.C, rel=0.3)
    assert {p["verdict"] for p in interaction["per_run"]} <= {"compete", "help each other"}
    for png in ("loss_vs_compute.png", "isoflop.png", "fitted_vs_observed.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert (tmp_path / "runs.csv").read_text().count("\n") == len(results) + 1
    assert summary["laws"]["loss"]["alpha"] == loss["alpha"]
    assert scaling.load_fit(tmp_path).alpha == loss["alpha"]


def test_resumed_sweep_skips_finished_runs(tmp_path, default_data):
    from omni import config as config_lib
    from omni.data import pipeline
    from omni.flops import model_flops_per_step
    from omni.scaling.measure import last_training_row

    common = SMALL + ["--config.train.steps=3", "--config.train.eval_every=0", "--config.train.log_every=1",
                      "--config.train.checkpoint_every=100"]
    # The two points differ only on the host side (data), so the second run reuses the compiled
    # step from the sweep's compilation cache and the test stays fast.
    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(
        "import ml_collections\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.base = 'tiny.py'\n"
        "    c.runner = 'local'\n"
        f"    c.overrides = {common!r}\n"
        "    c.grid = ml_collections.ConfigDict()\n"
        "    c.grid.mix = {'d1': ['--config.data.modality_dropout=0.1'], 'd5': ['--config.data.modality_dropout=0.5']}\n"
        "    c.axes = ('mix',)\n"
        "    c.eval_batches = 1\n"
        "    c.cost_analysis = True\n"
        "    return c\n")
    out = tmp_path / "sweep"
    first = scaling.cli_sweep(str(sweep_file), str(out))
    assert first["trained"] == ["d1", "d5"] and first["skipped"] == []

    files = {name: out / "runs" / name / "result.json" for name in ("d1", "d5")}
    result = json.loads(files["d1"].read_text())
    width, vocab, max_len, grid = 32, 400, 12, 16 // 8
    assert result["N_total"] - result["N"] == width * (vocab + max_len + 2 * grid)
    config = scaling.build_run_config("tiny.py", result["overrides"])
    # D in present, non-padding tokens (what training logged), the slots of the sub-batches beside it
    trained = config_lib.from_json_file(out / "runs" / "d1" / "config.json")  # text lengths per set
    layout = pipeline.slot_layout(trained)
    image_rows = sum(rows for held, rows, _ in layout if "image" in held)
    text_slots = sum(rows * own["text"] for _, rows, own in layout)
    assert text_slots <= 8 * max_len  # each set's text at most the longest
    assert result["D_slots"] == 3 * (text_slots + image_rows * grid * grid)
    logged = last_training_row(out / "runs" / "d1")
    assert result["D"] == pytest.approx(3 * logged["real_tokens_per_step"])
    assert 0 < result["D"] < result["D_slots"] + 3 * (8 + image_rows)  # CLS tokens count as real
    assert result["C_6ND"] == pytest.approx(6 * result["N"] * result["D"])
    assert result["C_analytic"] == pytest.approx(logged["model_flops_per_step"] * 3)
    assert result["C_analytic"] < model_flops_per_step(config, layout) * 3
    assert result["C_xla"] > 0 and result["C_hlo_unrolled"] > 0
    assert math.isfinite(result["loss"]) and result["loss_source"].startswith("held-out")
    assert {"loss/mmm", "loss/contrastive"} <= set(result["losses"])
    # mlm / mim score only examples with one modality: with 1 held-out batch of pairs they may
    # have had nothing to score and then come from the final training row
    assert set(result["losses_from_train_row"]) <= {"loss/mlm", "loss/mim"}
    assert set(result["loss_per_modality"]) == {"text", "image"}
    assert result["point"] == {"mix": "d1"}
    assert (out / "runs.csv").read_text().count("\n") == 3

    mtimes = {name: os.stat(f).st_mtime_ns for name, f in files.items()}
    second = scaling.cli_sweep(str(sweep_file), str(out))
    assert second["trained"] == [] and second["skipped"] == ["d1", "d5"]
    assert {name: os.stat(f).st_mtime_ns for name, f in files.items()} == mtimes

    # An interrupted sweep (d5 trained but never recorded) continues with d5 only: its training
    # resumes from the final checkpoint, so only the record is made.
    files["d5"].unlink()
    third = scaling.cli_sweep(str(sweep_file), str(out))
    assert third["trained"] == ["d5"] and third["skipped"] == ["d1"]
    assert os.stat(files["d1"]).st_mtime_ns == mtimes["d1"]
    resumed = json.loads(files["d5"].read_text())
    assert resumed["N"] == result["N"] and resumed["final_train_losses"]["loss"] > 0


def test_slurm_runner_writes_a_job_array(tmp_path, monkeypatch):
    """runner="slurm": one array task per grid point, each running `omni sweep --only INDEX`.
    Here only the script is checked: sbatch is hidden, as on a machine without SLURM."""
    from omni.scaling import grid_points, load_sweep, run_sweep
    monkeypatch.setattr("omni.scaling.sweep.shutil.which", lambda name: None)
    sweep_file = tmp_path / "sweep.py"
    source = (REPO / "configs" / "scaling" / "tiny_sweep.py").read_text()
    sweep_file.write_text(source.replace('c.runner = "local"', 'c.runner = "slurm"'))
    summary = run_sweep(sweep_file, tmp_path / "out")
    script = (tmp_path / "out" / "sweep.sbatch").read_text()
    count = len(grid_points(load_sweep(sweep_file)))
    assert summary["runs"] == count == 8 and summary["submitted"] is None
    assert f"--array=0-{count - 1}" in summary["note"]
    assert '--only "$SLURM_ARRAY_TASK_ID"' in script and str(sweep_file.resolve()) in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script  # a preempted point resumes
    assert not list((tmp_path / "out" / "runs").iterdir())   # nothing trained here
    with pytest.raises(ValueError, match="grid points 0..7"):
        run_sweep(sweep_file, tmp_path / "out", only=8)


def test_array_spec_compresses_consecutive_indices():
    from omni.scaling import array_spec
    assert array_spec([0, 1, 2, 3], 2) == "0-3%2"
    assert array_spec([1, 3, 4, 5, 9], None) == "1,3-5,9"
    assert array_spec([7], 4) == "7%4"


# --- the checks of issue 19: approach 2, leave-one-out, the interaction's sign, lr transfer ---

# a = beta / (alpha + beta) of CHINCHILLA, written out: 0.28 / 0.62
CHINCHILLA_A = 0.4516129


def isoflop_runs(law, budgets=(1e18, 1e19, 1e20, 1e21), spread=(0.25, 0.5, 1.0, 2.0, 4.0)):
    """IsoFLOP slices around the law's own optimum: N = N_opt(C) x spread, D = C / (6 N)."""
    N, C = [], []
    for c in budgets:
        n_opt, _ = law.compute_optimal(c)
        N += [n_opt * s for s in spread]
        C += [c] * len(spread)
    N, C = np.array(N), np.array(C)
    return N, C / (6 * N), C


def test_approach2_recovers_the_exponent_of_a_known_law():
    from omni.scaling import fit_approach2
    N, D, C = isoflop_runs(CHINCHILLA)
    rng = np.random.default_rng(0)
    L = CHINCHILLA(N, D) * np.exp(rng.normal(0.0, 1e-4, N.shape))
    result = fit_approach2(N, C, L, bootstrap=50)
    assert result["slices_used"] == 4
    assert result["a"] == pytest.approx(CHINCHILLA_A, abs=0.01)
    low, high = result["a_interval"]
    assert low < result["a"] < high and high - low < 0.05
    for row in result["slices"]:   # each parabola's minimum is the closed-form optimum
        assert row["interior"] and row["N_opt"] == pytest.approx(CHINCHILLA.compute_optimal(row["C"])[0], rel=0.1)
    # a law with twice the data exponent wants bigger models: a = 0.56 / 0.90 = 0.622
    steeper = Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.56)
    N, D, C = isoflop_runs(steeper)
    assert fit_approach2(N, C, steeper(N, D), bootstrap=0)["a"] == pytest.approx(0.6222, abs=0.015)


def test_approach2_refuses_slices_without_a_minimum():
    from omni.scaling import fit_approach2
    N, D, C = isoflop_runs(CHINCHILLA, spread=(1.0, 2.0, 4.0))
    L = 5.0 - 0.1 * np.log(N)          # loss falls with N along every slice: no parabola minimum
    result = fit_approach2(N, C, L, bootstrap=0)
    assert result["a"] is None and "minimum" in result["reason"]


SMALL_GRID = {"a": [6.0], "b": [6.0], "e": [0.5], "alpha": [0.3, 0.4], "beta": [0.3]}


def test_leave_one_out_finds_the_corrupted_run():
    from omni.scaling import leave_one_out
    N, D = grid_runs(4, 4)
    L = CHINCHILLA(N, D)
    L[5] *= 1.10                        # an inner run 10% off the law
    result = leave_one_out(N, D, L, [f"r{i}" for i in range(len(L))], grid=SMALL_GRID, top_k=None)
    assert result["most_influential"] == "r5"
    errors = [r["relative_error"] for r in result["runs"]]
    assert errors[5] == pytest.approx(0.1 / 1.1, rel=0.05)   # the refit without it predicts the true law
    assert sorted(errors)[-2] < 0.02
    # the Huber loss keeps one bad run from swinging the exponents: every refit is near the truth
    for key in ("alpha", "beta"):
        low, high = result["range"][key]
        assert getattr(CHINCHILLA, key) * 0.97 < low <= high < getattr(CHINCHILLA, key) * 1.03, key


@pytest.mark.parametrize("kind, true", [
    ("compete", Interaction(C=0.0, beta=30.0, alpha=0.35, gamma=50.0, alpha_d=0.35)),
    ("synergy", Interaction(C=0.08, beta=2.0, alpha=0.35, gamma=3.0, alpha_d=0.35)),
])
def test_interaction_fit_recovers_sign_and_size(kind, true):
    """Aghajanyan et al. 2023's bi-modal law on synthetic runs with a known interaction."""
    law_i, law_j = Law(1.5, 300.0, 400.0, 0.3, 0.3), Law(2.0, 200.0, 900.0, 0.25, 0.35)
    N, D = grid_runs(5, 5)
    rng = np.random.default_rng(1)
    L = true.mixed_loss(law_i, law_j, N, D / 2, D / 2) * np.exp(rng.normal(0.0, 5e-4, N.shape))
    got = fit_interaction(N, D / 2, D / 2, L, law_i, law_j)["interaction"]
    true_term, got_term = true.term(N, D), got.term(N, D)
    sign = 1 if kind == "compete" else -1
    assert np.all(np.sign(true_term) == sign) and np.all(np.sign(got_term) == sign)
    np.testing.assert_allclose(got_term, true_term, atol=0.1 * np.abs(true_term).max())


def test_lr_transfer_interpolates_on_the_log_grid(tmp_path):
    from omni.scaling import interpolated_minimum, lr_transfer
    lrs = 1e-3 * 2.0 ** np.arange(6)
    # an exact parabola in log lr with its vertex between grid points: found exactly
    curve = lambda best, lr: 3.0 + 0.2 * np.log(lr / best) ** 2  # noqa: E731
    got = interpolated_minimum(lrs, curve(5.5e-3, lrs))
    assert got["lr"] == pytest.approx(5.5e-3, rel=1e-6) and got["grid_lr"] == 4e-3 and not got["at_edge"]
    # a minimum beyond the grid is reported at its end, flagged
    edge = interpolated_minimum(lrs, curve(1e-1, lrs))
    assert edge["at_edge"] and edge["lr"] == lrs[-1]
    # a sweep directory: SP's best lr halves per doubling of width, muP's stays; muP's base width
    # (16) is not run: SP's curve there serves both
    # SP's width 64 ran two seeds, 0.05 above and below the curve: their mean is the curve
    seed_offsets = {("sp", 64): (0.05, -0.05)}
    for param, best in (("sp", {16: 8e-3, 32: 4e-3, 64: 2e-3}), ("mup", {32: 8e-3, 64: 8e-3})):
        for width, lr_star in best.items():
            for lr in lrs:
                for seed, offset in enumerate(seed_offsets.get((param, width), (0.0,))):
                    name = f"{param}-{width}-{lr:.4f}-seed{seed}"
                    (tmp_path / "runs" / name).mkdir(parents=True)
                    loss = float(curve(lr_star, lr)) + offset
                    (tmp_path / "runs" / name / "result.json").write_text(json.dumps(
                        {"name": name, "lr": lr, "width": width, "parametrization": param, "mup_base_width": 16,
                         "seed": seed, "loss": loss, "losses": {"loss": loss}}))
    out = lr_transfer(tmp_path)
    # std over two seeds L+d, L-d is d*sqrt(2); relative to their mean L, the median over the lrs
    assert out["seed_spread"] == pytest.approx(np.median(0.05 * np.sqrt(2) / curve(2e-3, lrs)), rel=1e-9)
    assert out["grid_factor"] == pytest.approx(2.0) and out["mup_base_width_from_sp"] == [16]
    assert out["mup"]["16"] == out["sp"]["16"] == pytest.approx(8e-3, rel=1e-6)
    assert out["sp"]["64"] == pytest.approx(2e-3, rel=1e-6) and out["mup"]["64"] == pytest.approx(8e-3, rel=1e-6)
    assert out["movement_grid_steps"]["sp"] == pytest.approx(2.0) and out["movement_grid_steps"]["mup"] == pytest.approx(0.0)
    assert out["movement_factor2_steps"] == pytest.approx(out["movement_grid_steps"])  # a factor-2 grid
    # both seeds of SP's width 64 have the curve's optimum (offsets shift a curve, not its minimum);
    # width 16 and 32 ran one seed: no seed spread of an optimum but theirs, 0 steps
    assert out["optimum_seed_spread_factor2_steps"] == pytest.approx(0.0, abs=1e-6)
    assert out["movement_factor2_steps_per_seed"]["sp"] == {"0": pytest.approx(2.0)}
    assert (tmp_path / "lr_transfer.png").stat().st_size > 1000


def test_lr_transfer_counts_factor2_steps_on_a_refined_grid(tmp_path):
    """A grid refined to a factor sqrt(2) around the optima: grid steps are then sqrt(2) steps,
    and the movement in factor-2 steps stays log2(max/min)."""
    from omni.scaling import lr_transfer
    lrs = 1e-3 * 2 ** (0.5 * np.arange(11))
    curve = lambda best, lr: 3.0 + 0.2 * np.log(lr / best) ** 2  # noqa: E731
    for width, lr_star in ((16, 5e-3), (64, 1e-2)):
        for lr in lrs:
            name = f"sp-{width}-{lr:.5f}"
            (tmp_path / "runs" / name).mkdir(parents=True)
            loss = float(curve(lr_star, lr))
            (tmp_path / "runs" / name / "result.json").write_text(json.dumps(
                {"name": name, "lr": lr, "width": width, "parametrization": "sp", "loss": loss,
                 "losses": {"loss": loss}}))
    out = lr_transfer(tmp_path, plot=False)
    assert out["grid_factor"] == pytest.approx(2 ** 0.5)
    # the parabola spans a factor 2 each side of the grid minimum: 5 points of the refined grid
    assert [json.loads((tmp_path / "lr_transfer.json").read_text())["curves"]["sp"][w]["points"]
            for w in ("16", "64")] == [5, 5]
    assert out["movement_factor2_steps"]["sp"] == pytest.approx(1.0, rel=1e-6)
    assert out["movement_grid_steps"]["sp"] == pytest.approx(2.0, rel=1e-6)


def test_approaches_agree_only_with_bracketed_minima():
    from omni.scaling.checks import _agree
    a3 = {"a": 0.45, "a_interval": [0.40, 0.50]}
    inside = {"a": 0.47, "a_interval": [0.44, 0.52], "slices": [{"ok": True, "interior": True, "C": 1.0}]}
    assert _agree(inside, a3)["agree"] is True
    assert _agree({**inside, "a_interval": [0.55, 0.60]}, a3)["agree"] is False
    outside = {**inside, "slices": [{"ok": True, "interior": True, "C": 1.0}, {"ok": True, "interior": False, "C": 2.0}]}
    result = _agree(outside, a3)   # overlapping intervals, but one minimum is extrapolated
    assert result["agree"] is None and "outside" in result["reason"]


@pytest.mark.parametrize("sweep_name", sorted(p.name for p in (REPO / "configs" / "scaling").glob("*.py")))
def test_every_shipped_sweep_config_builds_its_runs(sweep_name):
    """Each committed sweep config names only grid values it defines, lists no point twice, and
    every distinct override set of its points is a valid run config (a misspelt key would only
    show up hours into a sweep otherwise)."""
    from omni.scaling import build_run_config, grid_points, load_sweep
    from omni.scaling.grid import resolve_base
    sweep_file = REPO / "configs" / "scaling" / sweep_name
    sweep = load_sweep(sweep_file)
    points = grid_points(sweep)
    assert len({p["name"] for p in points}) == len(points) > 0
    base = resolve_base(sweep, sweep_file)
    for overrides in {tuple(p["overrides"]) for p in points}:
        config = build_run_config(base, list(overrides))
        assert config.train.steps > 0

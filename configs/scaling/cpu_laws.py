"""A scaling-law sweep sized for this 2-core CPU: IsoFLOP slices of configs/tiny.py (text + image
on the embedded default dataset), for per-objective laws and Chinchilla approaches 2 and 3.

Run:  omni sweep --config configs/scaling/cpu_laws.py --out runs/scaling/cpu_laws
      omni scaling fit runs/scaling/cpu_laws

Design (docs/scaling.md has the measured results):
  * 6 model sizes: widths 16..96 at depth 2 (N = 18k..281k non-embedding parameters).
  * 3 IsoFLOP slices (Hoffmann et al. 2022, approach 2): at each compute budget C = 6 N D, 5 or 6
    sizes, each trained for the steps that spend C (steps = C / (6 N x 64 x 40 tokens)); the
    sizes of each slice bracket the expected optimum. The slices give 11 distinct token budgets.
  * One held-out run, the largest: width 96 trained on 2x the largest slice's budget. The fit
    predicts it from the other runs (`holdout` in `omni scaling fit`).
  * Seeds 1 and 2 repeat one point (w032, 400 steps): their spread is the run-to-run noise.
  * Held-out losses on 32 batches of 64 of the test split (their standard error is recorded).
  * The cosine schedule decays over each run's own budget; warmup is 10% of it.
Fields are those of configs/scaling/tiny_sweep.py, plus `points`: the grid combinations to run
(one value name per axis, in `axes` order) instead of the full product.
"""
import ml_collections

# steps per width at each budget: budget S = steps of w032; steps(w) = S * N(w032) / N(w)
SLICES = {
    "c1": {"w016": 425, "w024": 236, "w032": 150, "w048": 76, "w064": 46},
    "c2": {"w016": 1132, "w024": 628, "w032": 400, "w048": 203, "w064": 122, "w096": 58},
    "c3": {"w024": 1570, "w032": 1000, "w048": 508, "w064": 306, "w096": 146},
}
HELD_OUT = ("w096", 292)   # 2x the budget of c3: the largest run, predicted from the others
SEED_POINT = ("w032", 400)


def _steps(n):
    return [f"--config.train.steps={n}", f"--config.train.warmup_steps={max(5, n // 10)}"]


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "cpu_laws"
    c.base = "tiny.py"
    c.runner = "local"
    c.overrides = [
        "--config.modalities=text,image",
        "--config.model.depth=2",
        "--config.model.heads=2",
        "--config.train.eval_every=0",
        "--config.train.log_every=50",
        "--config.train.checkpoint_every=100000",
        "--config.train.lr=0.001",
    ]
    widths = (16, 24, 32, 48, 64, 96)
    c.grid = ml_collections.ConfigDict()
    c.grid.size = {f"w{w:03d}": [f"--config.model.width={w}"] for w in widths}
    all_steps = sorted({s for slice_ in SLICES.values() for s in slice_.values()} | {HELD_OUT[1]})
    c.grid.steps = {f"s{s:04d}": _steps(s) for s in all_steps}
    c.grid.seed = {f"seed{k}": [f"--config.train.seed={k}"] for k in range(3)}
    c.axes = ("size", "steps", "seed")
    points = [(size, f"s{steps:04d}", "seed0") for slice_ in SLICES.values() for size, steps in slice_.items()]
    points.append((HELD_OUT[0], f"s{HELD_OUT[1]:04d}", "seed0"))
    points += [(SEED_POINT[0], f"s{SEED_POINT[1]:04d}", f"seed{k}") for k in (1, 2)]
    c.points = points
    c.isoflop = {name: [f"{size}-s{steps:04d}-seed0" for size, steps in slice_.items()]
                 for name, slice_ in SLICES.items()}
    c.eval_batches = 32
    c.cost_analysis = False   # C uses 6ND and the analytic count; XLA's count costs a compile per run
    c.compilation_cache = True
    return c

"""A scaling-law sweep sized for this 2-core CPU: IsoFLOP slices of configs/tiny.py (text + image
on the embedded default dataset), for per-objective laws and Chinchilla approaches 2 and 3.

Run:  omni sweep --config configs/scaling/cpu_laws.py --out runs/scaling/cpu_laws
      omni scaling fit runs/scaling/cpu_laws

Design (docs/scaling.md has the measured results and why the first design was replaced):
  * 6 model sizes: widths 8..48 at depth 2, 2 heads (N = 8.4k..89k non-embedding parameters).
    The first design's widths 16..96 put every IsoFLOP minimum at or below its smallest size.
  * muP with base width 16 and one learning rate, 6e-3 (configs/scaling/mup_transfer_w16.py: under
    muP the best learning rate stays put across widths), so that sizes differ in N and D only,
    not in how well a fixed learning rate suits them; the first design used SP at 1e-3, 4-12x
    below every width's best.
  * 3 IsoFLOP slices (Hoffmann et al. 2022, approach 2): at each compute budget C = 6 N D, the
    sizes whose runs last at least ~100 steps, each trained for the steps that spend C
    (steps(w) = S * N(w016) / N(w), S = the steps of width 16). 17 runs, 17 token budgets.
  * One held-out run, the largest: width 48 trained on 2x the largest slice's budget (its N and D
    both lie inside the other runs' ranges). `omni scaling fit` predicts it from the other runs.
  * Seeds 1 and 2 repeat one point (w016, 600 steps): their spread is the run-to-run noise.
  * Held-out losses on 32 batches of 64 of the test split (their standard error is recorded).
  * The cosine schedule decays over each run's own budget; warmup is 10% of it.
Fields are those of configs/scaling/tiny_sweep.py, plus `points`: the grid combinations to run
(one value name per axis, in `axes` order) instead of the full product.
"""
import ml_collections

# Non-embedding parameters per width (depth 2, 2 heads, text + image): omni.scaling.measure.
N = {8: 8370, 12: 12970, 16: 18338, 24: 31378, 32: 47490, 48: 88930}
# Steps of width 16 per slice, and the widths in it (every run at least ~100 steps).
SLICES = {"c1": (250, (8, 12, 16, 24, 32)), "c2": (600, (8, 12, 16, 24, 32, 48)),
          "c3": (1500, (8, 12, 16, 24, 32, 48))}
HELD_OUT = (48, 2 * 1500)   # width, width-16 steps: 2x the budget of c3
SEED_POINT = (16, 600)


def steps_for(width: int, width16_steps: int) -> int:
    return round(width16_steps * N[16] / N[width])


def _steps(n):
    return [f"--config.train.steps={n}", f"--config.train.warmup_steps={max(5, n // 10)}"]


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "cpu_laws"
    c.base = "tiny.py"
    c.runner = "local"
    c.overrides = [
        "--config.modalities=text,image",
        "--config.loss.contrastive.kind=siglip",  # as measured (tiny.py has used InfoNCE since)
        "--config.data.group_size=0",             # as measured (tiny.py batches a voice together since)
        "--config.train.mup_decay=with_lr",       # as measured (tiny.py decays as the mup package since)
        "--config.model.depth=2",
        "--config.model.heads=2",
        "--config.model.parametrization=mup",
        "--config.model.mup_base_width=16",
        "--config.train.eval_every=0",
        "--config.train.log_every=50",
        "--config.train.checkpoint_every=100000",
        "--config.train.lr=0.006",
    ]
    c.grid = ml_collections.ConfigDict()
    c.grid.size = {f"w{w:03d}": [f"--config.model.width={w}"] for w in N}
    runs = {name: [(w, steps_for(w, s)) for w in widths] for name, (s, widths) in SLICES.items()}
    held_out = (HELD_OUT[0], steps_for(*HELD_OUT))
    all_steps = sorted({s for slice_ in runs.values() for _, s in slice_} | {held_out[1]})
    c.grid.steps = {f"s{s:04d}": _steps(s) for s in all_steps}
    c.grid.seed = {f"seed{k}": [f"--config.train.seed={k}"] for k in range(3)}
    c.axes = ("size", "steps", "seed")
    # the largest budget first: a sweep cut short by time still has the runs that bracket the law
    points = [(f"w{w:03d}", f"s{s:04d}", "seed0") for name in ("c3", "c2", "c1") for w, s in runs[name]]
    points.append((f"w{held_out[0]:03d}", f"s{held_out[1]:04d}", "seed0"))
    seed_steps = steps_for(*SEED_POINT)
    points += [(f"w{SEED_POINT[0]:03d}", f"s{seed_steps:04d}", f"seed{k}") for k in (1, 2)]
    c.points = points
    c.isoflop = {name: [f"w{w:03d}-s{s:04d}-seed0" for w, s in slice_] for name, slice_ in runs.items()}
    c.eval_batches = 32
    c.cost_analysis = False   # C uses 6ND and the analytic count; XLA's count costs a compile per run
    c.compilation_cache = True
    return c

"""muP learning-rate transfer (Yang et al. 2022, "Tensor Programs V", Figure 1): the same sweep of
learning rates at widths 16, 32 and 64 (4x), under the standard parametrisation (SP) and under muP
with base width 16.

Run:  omni sweep --config configs/scaling/mup_transfer_w16.py --out runs/scaling/mup_transfer_w16
      omni scaling lr-transfer runs/scaling/mup_transfer_w16

Under muP the best learning rate should stay put as the width grows; under SP it should fall.
Learning rates on a factor-2 grid, 1e-3 .. 3.2e-2 (6.4e-2 added after the first runs put the
base width's optimum near 3.2e-2), refined to a factor sqrt(2) between 4e-3 and 3.2e-2; 100
steps of batch 64 each, depth 2, 2 heads, text + image; the loss is the held-out total over 8
batches.

At the base width muP is the standard model (same initialisation, same updates:
tests/test_mup.py::test_mup_equals_sp_at_the_base_width), so width 16 runs once, under SP, and
`omni scaling lr-transfer` uses that curve for both. The points run middle learning rates
first and the 4x pair (16 and 64) before width 32, so that a sweep cut short by time still
brackets each optimum. Then a second seed repeats every curve, the learning rates nearest the
optima first: a point with both seeds enters the curve as their mean, and the spread between
them says how far an optimum can move by chance (`seed_spread` in `omni scaling lr-transfer`).
Last, the refined points with both seeds, and a third seed over the refined span
(`optimum_seed_spread_factor2_steps`: how far apart the seeds' own optima lie). 133 runs.
"""
import ml_collections

LRS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064)
FINE_LRS = (0.00566, 0.0113, 0.0226)  # halfway (x sqrt 2) between the grid points around the optima
WIDTHS = (16, 32, 64)


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "mup_transfer_w16"
    c.base = "tiny.py"
    c.runner = "local"
    c.overrides = [
        "--config.modalities=text,image",
        "--config.loss.contrastive.kind=siglip",  # as measured (tiny.py has used InfoNCE since)
        "--config.data.group_size=0",             # as measured (tiny.py batches a voice together since)
        "--config.train.mup_decay=with_lr",       # as measured (tiny.py decays as the mup package since)
        "--config.model.depth=2",
        "--config.model.heads=2",
        "--config.model.mup_base_width=16",
        "--config.train.steps=100",
        "--config.train.warmup_steps=10",
        "--config.train.eval_every=0",
        "--config.train.log_every=50",
        "--config.train.checkpoint_every=100000",
    ]
    c.grid = ml_collections.ConfigDict()
    c.grid.param = {"sp": ["--config.model.parametrization=sp"], "mup": ["--config.model.parametrization=mup"]}
    c.grid.width = {f"w{w:03d}": [f"--config.model.width={w}"] for w in WIDTHS}
    c.grid.lr = {f"lr{round(lr * 1e4):04d}e-4": [f"--config.train.lr={lr}"] for lr in LRS + FINE_LRS}
    c.grid.seed = {f"seed{k}": [f"--config.train.seed={k}"] for k in range(3)}
    c.axes = ("param", "width", "lr", "seed")
    curves = [("sp", 16), ("sp", 64), ("mup", 64), ("sp", 32), ("mup", 32)]
    order = (0.004, 0.008, 0.002, 0.016, 0.001, 0.032)   # middle out
    c.points = [(param, f"w{w:03d}", f"lr{round(lr * 1e4):04d}e-4")
                for pair in ((curves[:3], order[:3]), (curves[:3], order[3:]), (curves[3:], order))
                for lr in pair[1] for param, w in pair[0]]
    # the base width's optimum came out near the top of the grid: one more step above it
    c.points += [(param, f"w{w:03d}", "lr0640e-4") for param, w in (("sp", 16), ("mup", 64), ("mup", 32), ("sp", 32))]
    c.points = [(*point, "seed0") for point in c.points]
    # seed 1: the three grid points around each curve's optimum (seed 0's runs put them at
    # 4e-3 .. 1.6e-2 for every curve), then the rest of the grid
    near = (0.008, 0.004, 0.016)
    rest = (0.002, 0.032, 0.001, 0.064)
    c.points += [(param, f"w{w:03d}", f"lr{round(lr * 1e4):04d}e-4", "seed1")
                 for group in (near, rest) for lr in group for param, w in curves
                 if not (lr == 0.064 and (param, w) == ("sp", 64))]
    # then a grid twice as fine around every optimum (all of them lay in 4e-3 .. 3.2e-2), both seeds:
    # a 3-point parabola on a factor-2 grid misplaced optima by up to 0.2 grid steps between seeds
    c.points += [(param, f"w{w:03d}", f"lr{round(lr * 1e4):04d}e-4", f"seed{k}")
                 for k in range(2) for lr in FINE_LRS for param, w in curves]
    # a third seed over the refined span, where the two seeds' optima disagreed most (width 16)
    span = (0.004, 0.00566, 0.008, 0.0113, 0.016, 0.0226, 0.032)
    c.points += [(param, f"w{w:03d}", f"lr{round(lr * 1e4):04d}e-4", "seed2") for lr in span for param, w in curves]
    c.eval_batches = 8
    c.cost_analysis = False
    c.compilation_cache = True
    return c

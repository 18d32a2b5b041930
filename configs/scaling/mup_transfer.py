"""muP learning-rate transfer (Yang et al. 2022, "Tensor Programs V", Figure 1): the same sweep of
learning rates at widths 32, 64 and 128 (4x), under the standard parametrisation (SP) and under
muP with base width 32.

Run:  omni sweep --config configs/scaling/mup_transfer.py --out runs/scaling/mup_transfer
      omni scaling lr-transfer runs/scaling/mup_transfer

Under muP the best learning rate should stay put as the width grows; under SP it should fall.
Depth 2, 2 heads (head_dim 16-64), text + image, 300 steps of batch 64 (warmup 30), learning
rates on a factor-2 grid; the loss is the held-out total over 8 batches. muP decays each hidden
matrix by lr x weight_decay per step at every width, as the mup package's MuAdamW does
(`train.mup_decay=width_independent`, docs/scaling.md).

This is the design the earlier sweeps converged on (docs/scaling.md): `mup_transfer_w16.py`
(widths 16-64, 100 steps) could not place one optimum more precisely than a factor-2 step,
`lr_noise.py` showed that 300 steps halve that noise, and `mup_decay.py` that with the mup
package's weight decay muP's optimum stays within half a factor-2 step from width 32 to 128.
Its muP runs are `mup_decay.py`'s, point for point.

At the base width muP is the standard model (tests/test_mup.py::test_mup_equals_sp_at_the_base_width),
so width 32 runs once, under SP, and `omni scaling lr-transfer` uses that curve for both. SP's
grid starts a step lower (1.41e-3), since SP's optimum falls with width, and at width 128 two
steps lower still (3.54e-4). The points run one seed at a time, so that a sweep cut short by
time still has whole curves: seeds 0 and 1 for every curve, then seed 2 for the base width and
muP (whose movement is the target), then seed 2 for SP. 96 runs, 77 min here (docs/scaling.md).
"""
import ml_collections

MUP_LRS = (0.00283, 0.00566, 0.0113, 0.0226, 0.0453, 0.0905)
SP_LRS = (0.00141, 0.00283, 0.00566, 0.0113, 0.0226, 0.0453)
SP_LOW_LRS = (0.000354, 0.000707)  # added after seed 0 put SP's width-128 minimum at the grid's bottom


def lr_name(lr: float) -> str:
    """The grid value's name: zero-padded, so that names sort as the learning rates do."""
    return f"lr{round(lr * 1e5):05d}e-5"


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "mup_transfer"
    c.base = "tiny.py"
    c.runner = "local"
    c.overrides = [
        "--config.modalities=text,image",
        "--config.loss.contrastive.kind=siglip",  # as mup_decay.py, whose muP runs these are
        "--config.data.group_size=0",
        "--config.train.mup_decay=width_independent",
        "--config.model.depth=2",
        "--config.model.heads=2",
        "--config.model.mup_base_width=32",
        "--config.train.steps=300",
        "--config.train.warmup_steps=30",
        "--config.train.eval_every=0",
        "--config.train.log_every=100",
        "--config.train.checkpoint_every=100000",
    ]
    c.grid = ml_collections.ConfigDict()
    c.grid.param = {"sp": ["--config.model.parametrization=sp"], "mup": ["--config.model.parametrization=mup"]}
    c.grid.width = {f"w{w:03d}": [f"--config.model.width={w}"] for w in (32, 64, 128)}
    c.grid.lr = {lr_name(lr): [f"--config.train.lr={lr}"] for lr in sorted(set(MUP_LRS + SP_LRS + SP_LOW_LRS))}
    c.grid.seed = {f"seed{k}": [f"--config.train.seed={k}"] for k in range(3)}
    c.axes = ("param", "width", "lr", "seed")
    base = [("sp", "w032", lr_name(lr)) for lr in MUP_LRS]
    mup = [("mup", w, lr_name(lr)) for w in ("w064", "w128") for lr in MUP_LRS]
    sp = [("sp", w, lr_name(lr)) for w in ("w064", "w128") for lr in SP_LRS]
    c.points = [(*point, f"seed{k}") for k in (0, 1) for point in base + mup + sp]
    c.points += [(*point, "seed2") for point in base + mup]
    c.points += [(*point, "seed2") for point in sp]
    # appended, so that the points above keep their indices (`--only I`)
    c.points += [("sp", "w128", lr_name(lr), f"seed{k}") for k in range(3) for lr in SP_LOW_LRS]
    c.eval_batches = 8
    c.cost_analysis = False
    c.compilation_cache = True
    return c

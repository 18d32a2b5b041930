"""muP's learning-rate transfer with the weight decay the mup package uses: `mup_wide.py`'s runs
(widths 32, 64 and 128, base width 32, depth 2, 2 heads, text + image, 300 steps of batch 64,
warmup 30, learning rates on a factor-2 grid; seeds 0-2), but each hidden matrix decays by
lr * weight_decay per step at every width (`train.mup_decay=width_independent`, tiny.py's default), where
`mup_wide.py` measured omni's earlier rule, which scaled the decay by 1/m with the Adam step, so
that wider models decayed less (docs/scaling.md).

Run:  omni sweep --config configs/scaling/mup_decay.py --out runs/scaling/mup_decay
      omni scaling lr-transfer runs/scaling/mup_decay
"""
import ml_collections

LRS = (0.00283, 0.00566, 0.0113, 0.0226, 0.0453, 0.0905)  # mup_wide.py's grid


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "mup_decay"
    c.base = "tiny.py"
    c.runner = "local"
    c.overrides = [
        "--config.modalities=text,image",
        "--config.loss.contrastive.kind=siglip",  # as mup_wide.py, so the two compare
        "--config.data.group_size=0",
        "--config.train.mup_decay=width_independent",
        "--config.model.depth=2",
        "--config.model.heads=2",
        "--config.model.mup_base_width=32",
        "--config.model.parametrization=mup",
        "--config.train.steps=300",
        "--config.train.warmup_steps=30",
        "--config.train.eval_every=0",
        "--config.train.log_every=100",
        "--config.train.checkpoint_every=100000",
    ]
    c.grid = ml_collections.ConfigDict()
    c.grid.curve = {f"mup-w{w:03d}": [f"--config.model.width={w}"] for w in (32, 64, 128)}
    c.grid.lr = {f"lr{round(lr * 1e5):05d}e-5": [f"--config.train.lr={lr}"] for lr in LRS}
    c.grid.seed = {f"seed{k}": [f"--config.train.seed={k}"] for k in range(3)}
    c.axes = ("curve", "lr", "seed")
    c.eval_batches = 8
    c.cost_analysis = False
    c.compilation_cache = True
    return c

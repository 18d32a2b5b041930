"""muP's learning-rate transfer at wider widths than `lr_noise.py`: widths 32, 64 and 128 (4x)
with base width 32 (where muP is the standard model), otherwise the same runs (depth 2, 2 heads,
text + image, 300 steps of batch 64, warmup 30), four seeds, learning rates on a factor-2 grid.
It asks whether the optimum's rise seen at widths 16-64 (docs/scaling.md) is a finite-width
effect that shrinks at larger widths.

Run:  omni sweep --config configs/scaling/mup_wide.py --out runs/scaling/mup_wide
      omni scaling lr-transfer runs/scaling/mup_wide
"""
import ml_collections

LRS = (0.00283, 0.00566, 0.0113, 0.0226, 0.0453, 0.0905)  # 2.83e-3 added: width 64 had its minimum at 5.66e-3


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "mup_wide"
    c.base = "tiny.py"
    c.runner = "local"
    c.overrides = [
        "--config.modalities=text,image",
        "--config.loss.contrastive.kind=siglip",  # as lr_noise.py, so the two compare
        "--config.data.group_size=0",
        "--config.train.mup_decay=with_lr",       # as measured (tiny.py decays as the mup package since)
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
    c.grid.seed = {f"seed{k}": [f"--config.train.seed={k}"] for k in range(4)}
    c.axes = ("curve", "lr", "seed")
    c.eval_batches = 8
    c.cost_analysis = False
    c.compilation_cache = True
    return c

"""How precisely one sweep can place a learning-rate optimum, and muP's transfer at that
precision: the base width of `mup_transfer_w16.py` (width 16, where SP and muP are one model) trained
for 300 steps instead of 100, four seeds, learning rates 2.83e-3 .. 2.26e-2 on a factor-sqrt(2)
grid; then muP at widths 32 and 64 on the same grid and above it (3.2e-2, 4.53e-2), where those
widths' minima turned out to lie: first two seeds, then (later the same day) a third and a
fourth, so that every width has four (docs/scaling.md).

Run:  omni sweep --config configs/scaling/lr_noise.py --out runs/scaling/lr_noise
      omni scaling lr-transfer runs/scaling/lr_noise

`optimum_seed_spread_factor2_steps` in the output says how far apart the four seeds' own optima
lie. At 100 steps three seeds put it 1.09 factor-2 steps apart (docs/scaling.md), more than the
half step that muP's transfer is judged by; this sweep measures whether longer runs, whose loss
near the optimum is less spiky, place it more tightly. The common overrides are the base
width's, so a muP curve's overrides come after them and win.
"""
import ml_collections

LRS = (0.00283, 0.004, 0.00566, 0.008, 0.0113, 0.016, 0.0226)
HIGH_LRS = (0.032, 0.0453)  # added: at 300 steps muP's wider widths had their minima at 2.26e-2
SEEDS = 4


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "lr_noise"
    c.base = "tiny.py"
    c.runner = "local"
    c.overrides = [
        "--config.modalities=text,image",
        "--config.loss.contrastive.kind=siglip",  # as measured (tiny.py has used InfoNCE since)
        "--config.data.group_size=0",             # as measured (tiny.py batches a voice together since)
        "--config.train.mup_decay=with_lr",       # as measured (tiny.py decays as the mup package since)
        "--config.model.depth=2",
        "--config.model.heads=2",
        "--config.model.width=16",
        "--config.model.mup_base_width=16",
        "--config.model.parametrization=sp",
        "--config.train.steps=300",
        "--config.train.warmup_steps=30",
        "--config.train.eval_every=0",
        "--config.train.log_every=100",
        "--config.train.checkpoint_every=100000",
    ]
    c.grid = ml_collections.ConfigDict()
    c.grid.curve = {"sp-w016": [],
                    "mup-w032": ["--config.model.parametrization=mup", "--config.model.width=32"],
                    "mup-w064": ["--config.model.parametrization=mup", "--config.model.width=64"]}
    c.grid.lr = {f"lr{round(lr * 1e5):05d}e-5": [f"--config.train.lr={lr}"] for lr in LRS + HIGH_LRS}
    c.grid.seed = {f"seed{k}": [f"--config.train.seed={k}"] for k in range(SEEDS)}
    c.axes = ("curve", "lr", "seed")
    lr_names = [f"lr{round(lr * 1e5):05d}e-5" for lr in LRS]
    c.points = [("sp-w016", lr, f"seed{k}") for k in range(SEEDS) for lr in lr_names]
    c.points += [(curve, lr, f"seed{k}") for k in range(3) for lr in lr_names for curve in ("mup-w064", "mup-w032")]
    c.points += [(curve, f"lr{round(lr * 1e5):05d}e-5", f"seed{k}")
                 for k in range(3) for lr in HIGH_LRS for curve in ("mup-w064", "mup-w032")]
    # a fourth seed of the muP curves, appended so that the points above keep their indices
    c.points += [(curve, f"lr{round(lr * 1e5):05d}e-5", "seed3")
                 for lr in LRS + HIGH_LRS for curve in ("mup-w064", "mup-w032")]
    c.eval_batches = 8
    c.cost_analysis = False
    c.compilation_cache = True
    return c

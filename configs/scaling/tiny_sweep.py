"""A CPU-sized scaling sweep: 4 model sizes x 2 token budgets of configs/tiny.py (text + image on
the embedded default dataset), run one after another.

Run:  omni sweep --config configs/scaling/tiny_sweep.py --out runs/scaling/tiny
      omni scaling fit runs/scaling/tiny

Fields:
  base       the config every run starts from (a path, a name in configs/, or a path beside this file)
  overrides  `--config.KEY=VALUE` applied to every run
  grid       {axis: {value name: [override, ...]}}; every combination is one run, named
             "<value>-<value>" in axis order (values in name order: zero-pad numbers)
  axes       the order of the axes (ConfigDict sorts keys)
  runner     "local": one after another in this process
  eval_batches   held-out loss over this many batches of eval.split (0: the final training row)
  cost_analysis  also record XLA's cost analysis of the compiled step (cheap with the cache below)
  compilation_cache  a JAX persistent compilation cache in OUT/jax_cache

Token budgets change train.steps at a fixed batch size, so the cosine schedule of every run
decays over its own budget (as Chinchilla's approach 3 requires).

Modality mixtures (for the Aghajanyan et al. interaction fit) are one more axis, e.g.
    c.grid.mix = {"image": ["--sweep.modalities=image"], "text": ["--sweep.modalities=text"],
                  "image+text": []}
with "mix" added to c.axes.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "tiny_sweep"
    c.base = "tiny.py"
    c.runner = "local"
    c.overrides = [
        "--config.modalities=text,image",     # the sweep whose fit docs/scaling.md reports
        "--config.loss.contrastive.kind=siglip",  # as measured (tiny.py has used InfoNCE since)
        "--config.data.group_size=0",             # as measured (tiny.py batches a voice together since)
        "--config.train.eval_every=0",        # retrieval eval is not needed for the fit
        "--config.train.log_every=25",
        "--config.train.checkpoint_every=100",
        # tiny.py's 2e-3 suits its 600 steps; at these short budgets it leaves the widest model
        # behind on the contrastive loss (total loss then does not fall with N)
        "--config.train.lr=0.001",
    ]
    c.grid = ml_collections.ConfigDict()
    c.grid.size = {
        "w032": ["--config.model.width=32", "--config.model.depth=2", "--config.model.heads=2"],
        "w064": ["--config.model.width=64", "--config.model.depth=2", "--config.model.heads=4"],
        "w096": ["--config.model.width=96", "--config.model.depth=3", "--config.model.heads=4"],
        "w128": ["--config.model.width=128", "--config.model.depth=4", "--config.model.heads=4"],
    }
    c.grid.budget = {
        "s0150": ["--config.train.steps=150"],
        "s0300": ["--config.train.steps=300"],
    }
    c.axes = ("size", "budget")
    c.eval_batches = 8
    c.cost_analysis = True
    c.compilation_cache = True
    return c

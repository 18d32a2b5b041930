"""The training loop, top to bottom: mesh -> data -> model and shardings -> update step -> loop.

The update step is one pure function `train_step(state, batch) -> (state, metrics)` compiled once
with `jax.jit` (in/out shardings on the data x fsdp x tensor mesh, the old state donated). Random
keys are derived from (seed, step), and data order from (seed, position), so a run resumed from
a checkpoint continues exactly as if it had never stopped.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from omni import config as config_lib
from omni import mup, objectives, parallel
from omni.checkpoint import Checkpoints, abstract_like
from omni.data import pipeline
from omni.data.records import open_split
from omni.model import Omni, count_params
from omni.modalities import registry
from omni.modalities.text import BPETokenizer

ASSETS_FILE = "assets.json"  # fitted modality assets (JSON), in a workdir and in a bundle
ASSET_FIT_RECORDS = 200_000


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stderr, flush=True)


# ==============================================================================================
# Model, optimizer and their shardings
# ==============================================================================================

def make_optimizer(config, params=None):
    """AdamW with warmup + cosine and clipping; under muP (params given) the hidden matrices'
    updates are scaled by base_width / width."""
    t = config.train
    warmup = min(int(t.warmup_steps), int(t.steps) // 2)  # short test runs still decay
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=t.lr, warmup_steps=warmup,
        decay_steps=max(int(t.steps), warmup + 1), end_value=t.lr * t.min_lr_ratio)
    # Weight decay on matrices only: not on biases, norms, or scalars like the temperature.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    tx = optax.chain(
        optax.clip_by_global_norm(t.grad_clip),
        optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=decay_mask))
    if mup.is_mup(config):
        tx = optax.chain(tx, mup.scale_updates(mup.learning_rate_multipliers(params, config)))
    return tx, schedule


def _set_path(tree: dict, path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def param_shardings(abstract_state, mesh) -> dict:
    """Pure dict (same structure as the params) of NamedShardings from each Param's logical names."""
    out: dict = {}
    for path, var in nnx.to_flat_state(abstract_state):
        names = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
        _set_path(out, path, NamedSharding(mesh, parallel.logical_to_spec(names, var.shape, mesh)))
    return out


def batch_spec(config) -> dict[str, tuple[tuple, np.dtype]]:
    """Global batch arrays: key -> (shape, dtype)."""
    batch = int(config.train.batch_size)
    spec = {}
    for name in config.modalities:
        for key, (shape, dtype) in registry.get(name).array_spec(config).items():
            spec[key] = ((batch, *shape), dtype)
        spec[f"{name}/present"] = ((batch,), np.bool_)
    return spec


@dataclass
class Setup:
    """Everything compiled code needs: the model's graph, state shardings, the step functions."""
    config: object
    mesh: object
    graphdef: object
    state_shardings: dict
    abstract_state: dict
    tx: object
    schedule: object

    def init_state(self):
        config = self.config

        def init():
            model = Omni(config, nnx.Rngs(params=int(config.train.seed)))
            params = nnx.to_pure_dict(nnx.split(model)[1])
            return {"step": jnp.zeros((), jnp.int32), "params": params,
                    "opt_state": self.tx.init(params), "bad_steps": jnp.zeros((), jnp.int32)}

        return jax.jit(init, out_shardings=self.state_shardings)()

    def batch_shardings(self):
        return {k: parallel.batch_sharding(self.mesh, len(shape)) for k, (shape, _) in batch_spec(self.config).items()}

    def compile_train_step(self):
        step_fn = make_train_step(self.config, self.graphdef, self.tx)
        return jax.jit(step_fn, in_shardings=(self.state_shardings, self.batch_shardings()),
                       out_shardings=(self.state_shardings, None), donate_argnums=0)

    def embed_fn(self, name: str):
        """params, numpy batch -> numpy normalised embeddings of one modality (unimodal pass).
        The batch is replicated on every device (each process passes the same full batch), so
        evaluation also works when the params live on devices of several processes."""
        graphdef = self.graphdef
        replicated = NamedSharding(self.mesh, P())
        embed = jax.jit(lambda params, batch: nnx.merge(graphdef, params).embed(name, batch),
                        out_shardings=replicated)

        def run(params, batch):
            batch = {k: jax.make_array_from_process_local_data(replicated, v) for k, v in batch.items()}
            with jax.set_mesh(self.mesh):
                return np.asarray(embed(params, batch))

        return run


def build_setup(config, mesh) -> Setup:
    """Call outside `jax.set_mesh`: the abstract model must not pick up flax's own sharding."""
    abstract_model = nnx.eval_shape(lambda: Omni(config, nnx.Rngs(params=0)))
    graphdef, abstract_vars = nnx.split(abstract_model)
    shardings = param_shardings(abstract_vars, mesh)
    abstract_params = nnx.to_pure_dict(abstract_vars)
    tx, schedule = make_optimizer(config, abstract_params)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    replicated = NamedSharding(mesh, P())
    opt_shardings = optax.tree_map_params(
        tx, lambda _, s: s, abstract_opt, shardings, transform_non_params=lambda _: replicated)
    state_shardings = {"step": replicated, "params": shardings, "opt_state": opt_shardings,
                       "bad_steps": replicated}
    abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
                      "opt_state": abstract_opt, "bad_steps": jax.ShapeDtypeStruct((), jnp.int32)}
    return Setup(config, mesh, graphdef, state_shardings, abstract_like(abstract_state, state_shardings),
                 tx, schedule)


def make_train_step(config, graphdef, tx):
    seed = int(config.train.seed)

    def train_step(state, batch):
        rng = jax.random.fold_in(jax.random.key(seed), state["step"])

        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            return objectives.total_loss(model, batch, rng, config)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # A non-finite loss or gradient skips the update (the data still moves on) and is counted.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        new_state = {
            "step": state["step"] + 1,
            "params": keep_if_finite(params, state["params"]),
            "opt_state": keep_if_finite(opt_state, state["opt_state"]),
            "bad_steps": jnp.where(finite, 0, state["bad_steps"] + 1),
        }
        metrics = dict(metrics, grad_norm=grad_norm, skipped=(~finite).astype(jnp.int32))
        return new_state, metrics

    return train_step


# ==============================================================================================
# FLOPs and the device's measured peak, for MFU
# ==============================================================================================

def model_flops_per_step(config) -> float:
    """Analytic training FLOPs per step = 3 x forward (backward costs twice the forward).

    Forward per layer, for a sequence of T tokens of width D, MLP width F = mlp_ratio*D:
      projections 2*T*(4*D^2) (q, k, v, out) + MLP 2*T*(2*D*F) + attention scores and mixing 2*2*T^2*D.
    The step runs the transformer once per modality on its own tokens (unimodal pass, when the
    contrastive loss is on) and once on their concatenation (fused pass, when a masked objective
    is on); plus each modality's stem (in every pass) and reconstruction head (`stem_flops`: e.g.
    the image patch projection and pixel head, the text output layer), and the contrastive
    projections.
    """
    m = config.model
    width, hidden = m.width, m.width * m.mlp_ratio
    lengths = {n: registry.get(n).num_tokens(config) + 1 for n in config.modalities}
    stems = {n: registry.get(n).stem_flops(config) for n in config.modalities}

    def transformer(tokens):
        per_layer = 2 * tokens * (4 * width ** 2 + 2 * width * hidden) + 4 * tokens ** 2 * width
        return m.depth * per_layer

    weights = registry.active_objectives(config)
    contrastive = "contrastive" in weights
    masked = any(name != "contrastive" for name in weights)
    forward = 0.0
    if contrastive:  # the unimodal pass, one per modality, and the projections
        forward += sum(transformer(t) for t in lengths.values()) + 2 * len(lengths) * width * m.embed_dim
        forward += sum(embed for embed, _ in stems.values())
    if masked:  # the fused pass and the reconstruction heads
        forward += transformer(sum(lengths.values()))
        forward += sum(embed + head for embed, head in stems.values())
    return 3.0 * forward * config.train.batch_size


def measure_peak_flops(dtype: str, size: int | None = None, repeats: int = 10,
                       warmup_s: float = 2.0, cpu_measure_s: float = 2.0) -> float:
    """FLOP/s of a large matmul in the compute dtype (bf16 inputs accumulate in f32), best of N,
    on random operands (constant ones or zeros can run faster on a GPU than real data does).
    2048^3 saturates a CPU; accelerators need 8192^3 to reach their peak. Such a product takes
    only milliseconds there, so each timing covers 20 back-to-back calls: one call's dispatch and
    sync would otherwise count against the peak (and flatter the MFU). The products first run for
    `warmup_s`, and a CPU keeps timing for `cpu_measure_s` (40 bf16 products here): on this 2-core
    CPU the first timings of a process ran up to 10% below later ones, and the best of 10 after no
    warm-up ranged over 320-380 GFLOP/s between processes (with the warm-up and the best of 40,
    366-386 in 12 measurements; an hour later the whole machine was slower, 276-356)."""
    on_cpu = jax.devices()[0].platform == "cpu"
    size = size or (2048 if on_cpu else 8192)
    calls = 1 if on_cpu else 20
    dt = jnp.dtype(dtype)
    a = jax.random.normal(jax.random.key(1), (size, size), dt)
    b = jax.random.normal(jax.random.key(2), (size, size), dt)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    warm_until = time.perf_counter() + warmup_s
    while time.perf_counter() < warm_until:
        f(a, b).block_until_ready()
    best = math.inf
    timings, measure_until = 0, time.perf_counter() + (cpu_measure_s if on_cpu else 0.0)
    while timings < repeats or time.perf_counter() < measure_until:
        timings += 1
        t0 = time.perf_counter()
        for _ in range(calls):
            out = f(a, b)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t0) / calls)
    return 2 * size ** 3 / best


def tokens_per_step(config) -> int:
    return config.train.batch_size * sum(registry.get(n).num_tokens(config) for n in config.modalities)


# ==============================================================================================
# Assets: the tokenizer belongs to the run
# ==============================================================================================

def load_or_train_tokenizer(config, workdir: Path, checkpoints: Checkpoints | None, source) -> BPETokenizer:
    """The run's tokenizer: from the newest checkpoint, else workdir/tokenizer.json, else the
    bundle named by init_from, else trained on the training corpus by process 0 and broadcast,
    so every process of a multi-host run holds exactly the same vocabulary."""
    if checkpoints is not None and checkpoints.latest_step() is not None:
        assets = checkpoints.restore_assets(checkpoints.latest_step())
        return BPETokenizer.from_json(assets["tokenizer"])
    path = workdir / "tokenizer.json"
    if path.exists():
        return BPETokenizer.load(path)
    if config.init_from:
        return BPETokenizer.load(Path(config.init_from) / "tokenizer.json")
    text = ""
    if jax.process_index() == 0:
        log("training the BPE tokenizer on the training corpus")
        tokenizer = BPETokenizer.train(pipeline.corpus_lines(source), config.modalities.text.vocab_size)
        text = tokenizer.to_json()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    if jax.process_count() > 1:
        text = broadcast_text(text, "tokenizer")
    return BPETokenizer.from_json(text)


def load_or_fit_assets(config, workdir: Path, checkpoints: Checkpoints | None, source) -> tuple[dict, dict]:
    """The run's assets -> (assets for the encoders, their JSON form saved with every checkpoint):
    the tokenizer, plus each modality's fitted asset (e.g. the smell SVD basis). Like the
    tokenizer, an asset comes from the newest checkpoint, else workdir/assets.json, else the
    bundle named by init_from, else it is fitted on the training split by process 0 and broadcast."""
    tokenizer = load_or_train_tokenizer(config, workdir, checkpoints, source)
    fitted = _load_or_fit_modality_assets(config, workdir, checkpoints, source)
    return {"tokenizer": tokenizer, **fitted}, {"tokenizer": tokenizer.to_json(), **fitted}


def _load_or_fit_modality_assets(config, workdir, checkpoints, source) -> dict:
    if checkpoints is not None and checkpoints.latest_step() is not None:
        saved = checkpoints.restore_assets(checkpoints.latest_step())
        return {k: v for k, v in saved.items() if k != "tokenizer"}
    candidates = [workdir / ASSETS_FILE] + ([Path(config.init_from) / ASSETS_FILE] if config.init_from else [])
    for path in candidates:
        if path.exists():
            return json.loads(path.read_text())
    text = "{}"
    if jax.process_index() == 0:
        fitted = {}
        for name in config.modalities:
            # at most ASSET_FIT_RECORDS records: a basis needs a sample, not a web-scale pass
            values = (source[i].get(name) for i in range(min(len(source), ASSET_FIT_RECORDS)))
            asset = registry.get(name).fit_asset((v for v in values if v), config)
            if asset is not None:
                log(f"fitted the {name} asset on the training split")
                fitted[name] = asset
        text = json.dumps(fitted)
        tmp = (workdir / ASSETS_FILE).with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, workdir / ASSETS_FILE)
    if jax.process_count() > 1:
        text = broadcast_text(text, "assets")
    return json.loads(text)


def broadcast_text(text: str, key: str) -> str:
    """Process 0's string, on every process, through the coordination service's key-value store:
    the other processes wait as long as process 0 needs (training a tokenizer on a big corpus can
    take minutes), where a collective would give up (XLA CPU's Gloo context after 30 s). Sent in
    chunks below gRPC's message limit (an SVD basis is megabytes of JSON)."""
    from jax._src import distributed  # the client jax.distributed.initialize made
    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("several processes but no jax.distributed client: call jax.distributed.initialize")
    prefix = f"omni/broadcast/{key}"
    if jax.process_index() == 0:
        data = text.encode()
        chunks = [data[i:i + BROADCAST_CHUNK] for i in range(0, len(data), BROADCAST_CHUNK)] or [b""]
        for i, chunk in enumerate(chunks):
            client.key_value_set_bytes(f"{prefix}/{i}", chunk)
        client.key_value_set(f"{prefix}/count", str(len(chunks)))
        return text
    count = int(client.blocking_key_value_get(f"{prefix}/count", BROADCAST_TIMEOUT_MS))
    return b"".join(client.blocking_key_value_get_bytes(f"{prefix}/{i}", BROADCAST_TIMEOUT_MS)
                    for i in range(count)).decode()


BROADCAST_CHUNK = 1 << 20
BROADCAST_TIMEOUT_MS = 60 * 60 * 1000


# ==============================================================================================
# Metrics output
# ==============================================================================================

class MetricsWriter:
    """metrics.jsonl and TensorBoard, process 0 only."""

    def __init__(self, workdir: Path):
        self.enabled = jax.process_index() == 0
        if self.enabled:
            from tensorboardX import SummaryWriter
            self.jsonl = open(workdir / "metrics.jsonl", "a")
            self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for key, value in row.items():
            if key != "step":
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


class Progress:
    """A rich progress bar on stderr: step, loss, steps/s, ETA."""

    def __init__(self, total: int, start: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress
        from rich.progress import TextColumn, TimeRemainingColumn
        self.enabled = jax.process_index() == 0
        console = Console(stderr=True)
        # Not a terminal (a cluster log file): plain lines at each log step instead of a bar.
        self.plain = not console.is_terminal
        self.total = total
        self.started = time.perf_counter()
        self.start_step = start
        if self.enabled and not self.plain:
            self.bar = RichProgress(
                TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                TextColumn("loss {task.fields[loss]}  {task.fields[rate]} steps/s  mfu {task.fields[mfu]}"),
                TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False)
            self.task = self.bar.add_task("train", total=total, completed=start, loss="-", rate="-", mfu="-")
            self.bar.start()

    def update(self, step: int, **fields) -> None:
        if not self.enabled:
            return
        if not self.plain:
            self.bar.update(self.task, completed=step, **fields)
        elif fields:
            rate = (step - self.start_step) / (time.perf_counter() - self.started)
            eta = (self.total - step) / max(rate, 1e-9)
            print(f"step {step}/{self.total}  loss {fields['loss']}  {fields['rate']} steps/s  "
                  f"mfu {fields['mfu']}  ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and not self.plain:
            self.bar.stop()


# ==============================================================================================
# The run
# ==============================================================================================

class Preempted(Exception):
    pass


class PreemptionSignal:
    """Turns SIGTERM (how clusters preempt) into a flag that the loop checks after each step."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_):
        self.received = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(config, workdir: str | Path) -> dict:
    """Train (or resume) the run in workdir. Returns the last logged metrics."""
    with PreemptionSignal() as preemption:
        return _train(config, Path(workdir), preemption)


def _train(config, workdir: Path, preemption: PreemptionSignal) -> dict:
    from omni import evaluate

    # ---- Set up the mesh ---------------------------------------------------------------------
    parallel.maybe_initialize_distributed()
    config_lib.validate(config, jax.device_count())
    mesh = parallel.make_mesh(config_lib.resolve_mesh_shape(config, jax.device_count()))
    check_resume_compatible(config, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config_lib.to_json(config))
    log(f"mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{jax.process_count()} process(es); workdir {workdir}")

    # ---- Input pipeline and the run's assets ------------------------------------------------
    data_dir = pipeline.resolve_data_dir(config)
    source = open_split(data_dir, "train")
    checkpoints = Checkpoints(workdir / "checkpoints", keep=int(config.train.keep_checkpoints))
    assets, saved_assets = load_or_fit_assets(config, workdir, checkpoints, source)

    # ---- Model, optimizer, shardings; restore or initialise -----------------------------------
    setup = build_setup(config, mesh)
    with jax.set_mesh(mesh):
        start = checkpoints.latest_step()
        if start is not None:
            state = checkpoints.restore_state(start, setup.abstract_state)
            log(f"resumed from step {start}")
        else:
            state = setup.init_state()
            if config.init_from:
                from omni.export import load_bundle_params
                state["params"] = jax.device_put(load_bundle_params(config.init_from, state["params"]),
                                                 setup.state_shardings["params"])
                log(f"initialised from bundle {config.init_from}")
            start = 0
        log(f"{count_params(state['params']):,} parameters")
        train_step = setup.compile_train_step()
        batch_shardings = setup.batch_shardings()

    # ---- Periodic evaluation (on the held-out split, when the dataset has one) -------------------
    evaluating = config.train.eval_every > 0 and config.eval.split in pipeline_splits(data_dir)
    if evaluating:
        evaluate.eval_tasks(config)  # a typo in eval.tasks fails now, not at the first evaluation

    # ---- Train loop ------------------------------------------------------------------------------
    flops = model_flops_per_step(config)
    # flops are for the global batch; a quicker peak than `omni bench` takes (it starts every run,
    # tests included), so this MFU may read a few percent high
    peak = measure_peak_flops(config.model.dtype, warmup_s=0.5, cpu_measure_s=0.0) * jax.device_count()
    tokens = tokens_per_step(config)
    writer = MetricsWriter(workdir)
    progress = Progress(int(config.train.steps), start)
    batches = pipeline.training_batches(source, config, assets, start_step=start)
    skipped_examples = 0
    bad_steps = BadStepWatch(config, start)
    last = {}
    window_start, window_steps = time.perf_counter(), 0
    try:
        with jax.set_mesh(mesh):
            for step in range(start, int(config.train.steps)):
                local_batch, problems = next(batches)
                for problem in problems:
                    log(f"skipped input: {problem}")
                skipped_examples += len(problems)
                batch = {k: jax.make_array_from_process_local_data(batch_shardings[k], v)
                         for k, v in local_batch.items()}
                state, metrics = train_step(state, batch)
                bad_steps.check(metrics, checkpoints)
                window_steps += 1
                done = step + 1
                if done % config.train.log_every == 0 or done == config.train.steps:
                    # The only host sync of the loop: once per log interval.
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    elapsed = (time.perf_counter() - window_start) / window_steps
                    last = {**metrics, "lr": float(setup.schedule(step)), "step_time_s": elapsed,
                            "tokens_per_s": tokens / elapsed, "mfu": flops / elapsed / peak,
                            "skipped_examples": skipped_examples}
                    writer.write(done, last)
                    progress.update(done, loss=f"{last['loss']:.4f}", rate=f"{1 / elapsed:.2f}",
                                    mfu=f"{last['mfu']:.2f}")
                    window_start, window_steps = time.perf_counter(), 0
                else:
                    progress.update(done)
                if done % config.train.checkpoint_every == 0 or done == config.train.steps:
                    checkpoints.save(done, state, saved_assets)
                if evaluating and (done % config.train.eval_every == 0 or done == config.train.steps):
                    results = evaluate.periodic_evaluations(setup, state["params"], config, assets, data_dir)
                    writer.write(done, results)
                    last.update(results)
                    log(" ".join(f"{k}={v:.3f}" for k, v in results.items() if k.endswith("R@1")))
                    window_start, window_steps = time.perf_counter(), 0
                if preemption.received:
                    if checkpoints.latest_step() != done:
                        checkpoints.save(done, state, saved_assets, force=True)
                    raise Preempted(f"SIGTERM: saved a checkpoint at step {done}; rerun the same command to resume")
    finally:
        progress.close()
        checkpoints.close()
        writer.close()
    return last


# Sections that decide the shapes of the checkpointed state: they must not change on resume.
SHAPE_SECTIONS = ("model", "modalities")


def check_resume_compatible(config, workdir: Path) -> None:
    """Resuming a workdir with a config of another shape would fail deep inside the restore;
    say which key differs instead, before anything compiles."""
    saved_path = workdir / "config.json"
    if not saved_path.exists() or not (workdir / "checkpoints").exists():
        return
    saved = json.loads(saved_path.read_text())
    current = json.loads(config_lib.to_json(config))

    def flat(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    for section in SHAPE_SECTIONS:
        old, new = flat(saved.get(section, {}), f"{section}."), flat(current.get(section, {}), f"{section}.")
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key) and not key.endswith(("dtype", "remat", "scan_layers", "attention")):
                raise config_lib.ConfigError(
                    f"{workdir} holds checkpoints of a run with {key}={old.get(key)!r}, but this config has "
                    f"{key}={new.get(key)!r}; use another --workdir (or the same {key})")


def pipeline_splits(data_dir) -> list[str]:
    from omni.data.records import split_names
    return split_names(data_dir)


class BadStepWatch:
    """Stops the run after train.max_bad_steps consecutive skipped (non-finite) steps, naming the
    objectives (and so the modalities) whose loss was non-finite. It reads the flag of the step
    dispatched BEFORE the current one, which has finished or is about to while the current one
    is queued, so the check never stalls the device. 0 disables it. Skipped steps never touch the
    weights, so every checkpoint holds finite weights."""

    def __init__(self, config, start_step: int):
        self.limit = int(config.train.max_bad_steps)
        self.step = start_step  # the step whose metrics are pending
        self.pending = None
        self.streak = []

    def check(self, metrics, checkpoints) -> None:
        if not self.limit:
            return
        previous, self.pending = self.pending, metrics
        self.step += 1
        if previous is None:
            return
        if not int(previous["skipped"]):
            self.streak = []
            return
        self.streak.append(self.step - 1)
        culprits = [describe_loss(k) for k, v in jax.device_get(previous).items()
                    if k.startswith("loss/") and not np.isfinite(v)]
        log(f"step {self.step - 1}: non-finite {', '.join(culprits) or 'gradients'}; update skipped")
        if len(self.streak) >= self.limit:
            last = checkpoints.latest_step()
            raise FloatingPointError(
                f"steps {self.streak[0]}-{self.streak[-1]}: {len(self.streak)} consecutive steps had a non-finite "
                f"loss or gradient (train.max_bad_steps={self.limit}; non-finite: {', '.join(culprits) or 'gradients only'}); "
                f"stopped. The weights were not updated by those steps"
                + (f"; the last checkpoint is step {last}" if last is not None else ""))


def describe_loss(key: str) -> str:
    """'loss/mam' -> 'loss/mam (audio)'; 'loss/contrastive/audio-text' stays as it is (it names them)."""
    modality = registry.masked_objectives().get(key.split("/", 1)[1])
    return f"{key} ({modality})" if modality else key

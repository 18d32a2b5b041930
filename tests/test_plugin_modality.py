"""A sixth modality, defined entirely here: IMU accelerometer windows (one of ImageBind's six).

It is a separate installed "package" (a folder on PYTHONPATH with its own dist-info) that declares
the entry point `omni.modalities: imu`, as a real plugin would. Nothing in omni/ is edited: the
manifest, the record format, the batch, the model and the loss all pick it up from the registry.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.conftest import REPO, omni_command

PLUGIN = textwrap.dedent('''
    """IMU: 3-axis accelerometer windows stored as .npy files, cut into patches of time steps."""
    import io

    import jax.numpy as jnp
    import numpy as np

    from omni.errors import ConfigError
    from omni.modalities.base import Modality, ReconstructingStem, random_token_mask, read_file_field
    from omni.nn import Dense, param


    def load_window(data: bytes, steps: int) -> np.ndarray:
        try:
            window = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as e:
            raise ValueError(f"not a .npy array ({e})") from None
        if window.ndim != 2 or window.shape[1] != 3:
            raise ValueError(f"expected [time, 3] accelerometer samples, got shape {window.shape}")
        out = np.zeros((steps, 3), np.float32)
        out[: min(steps, len(window))] = window[:steps]
        return out


    class IMUStem(ReconstructingStem):
        def __init__(self, config, rngs):
            cfg = config.modalities.imu
            self.patch = cfg.patch
            self.mask_ratio = float(config.loss.mimu.mask_ratio)
            self.proj = Dense(rngs, cfg.patch * 3, config.model.width, names=("patch", "embed"))
            self.positions = param(rngs, (cfg.steps // cfg.patch, config.model.width), ("length", "embed"))
            self.init_reconstruction(rngs, config, cfg.patch * 3)

        def _patches(self, inputs):
            signal = inputs["imu/signal"]
            return signal.reshape(signal.shape[0], -1, self.patch * 3)

        def _valid(self, patches):
            return jnp.ones(patches.shape[:2], bool)

        def embed(self, inputs, dtype):
            patches = self._patches(inputs)
            return self.proj(patches, dtype) + self.positions[...][None], self._valid(patches)

        def masked_embed(self, inputs, rng, dtype):
            patches = self._patches(inputs)
            batch, num = patches.shape[:2]
            masked = random_token_mask(rng, batch, num, int(round(self.mask_ratio * num)))
            tokens = jnp.where(masked[..., None], self.mask_token[...], self.proj(patches, dtype))
            return tokens + self.positions[...][None], self._valid(patches), patches, masked.astype(jnp.float32)


    class IMU(Modality):
        name = "imu"
        objective = "mimu"
        file_field = True

        def validate(self, config):
            cfg = config.modalities.imu
            if cfg.steps % cfg.patch:
                raise ConfigError(f"modalities.imu.steps={cfg.steps} is not divisible by modalities.imu.patch={cfg.patch}")

        def num_tokens(self, config):
            return config.modalities.imu.steps // config.modalities.imu.patch

        def array_spec(self, config):
            return {"imu/signal": ((config.modalities.imu.steps, 3), np.float32)}

        def prepare(self, value, root):
            data = read_file_field(value, root, "imu")
            load_window(data, 1)
            return data

        def encode(self, value, config, assets):
            return {"imu/signal": load_window(value, config.modalities.imu.steps)}

        def make_stem(self, config, rngs, built=None):
            return IMUStem(config, rngs)
''')

CONFIG = textwrap.dedent('''
    """text + the IMU plugin, tiny."""
    import ml_collections

    from omni.config import load_config


    def get_config():
        c = load_config(None, [
            "--config.modalities=text", "--config.model.width=32", "--config.model.depth=2",
            "--config.model.heads=2", "--config.model.embed_dim=32", "--config.train.batch_size=8",
            "--config.modalities.text.max_len=12", "--config.modalities.text.vocab_size=300",
            "--config.data.num_threads=1", "--config.train.eval_every=0"])
        with c.unlocked():
            c.name = "imu"
            c.modalities.imu = ml_collections.ConfigDict(dict(steps=32, patch=8))
            c.loss.mimu = ml_collections.ConfigDict(dict(weight=1.0, mask_ratio=0.5))
        return c
''')

MOVES = {"walking": 1.0, "running": 3.0, "sitting": 0.0, "jumping": 6.0}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """A folder holding the plugin package and its dist-info (entry point), on PYTHONPATH."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "omni_imu").mkdir()
    (root / "omni_imu" / "__init__.py").write_text(PLUGIN)
    info = root / "omni_imu-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: omni-imu\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[omni.modalities]\nimu = omni_imu:IMU\n")
    (root / "imu_config.py").write_text(CONFIG)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(REPO)]))
    return root, env


def write_manifest(folder):
    rng = np.random.default_rng(0)
    (folder / "imu").mkdir(parents=True)
    lines = []
    for i in range(40):
        move = list(MOVES)[i % 4]
        t = np.arange(32) / 8.0
        window = np.stack([np.sin(MOVES[move] * t), np.cos(MOVES[move] * t), MOVES[move] * np.ones(32)], 1)
        np.save(folder / "imu" / f"{i}.npy", (window + 0.1 * rng.standard_normal(window.shape)).astype(np.float32))
        lines.append(json.dumps({"id": f"w{i}", "text": f"someone {move}", "imu": f"imu/{i}.npy",
                                 "split": "test" if i % 8 == 0 else "train"}))
    (folder / "imu" / "broken.npy").write_bytes(b"not an array")
    lines.append(json.dumps({"id": "bad", "text": "someone falling", "imu": "imu/broken.npy"}))
    (folder / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "manifest.jsonl"


def test_the_plugin_is_found_through_its_entry_point(plugin_env):
    root, env = plugin_env
    code = ("from omni.modalities import registry; from omni.data import records; "
            "print(list(registry.MODALITIES)[-1], 'imu' in records.fields(), 'imu' in registry.file_fields())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["imu", "True", "True"]
    # Without the plugin on the path, omni knows only its own five.
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.stdout.split() == ["smell", "False", "False"]


def test_a_sixth_modality_builds_and_trains_with_text(plugin_env, tmp_path):
    root, env = plugin_env
    manifest = write_manifest(tmp_path / "files")
    data = tmp_path / "data"
    built = subprocess.run(omni_command("data", "build", str(manifest), "--out", str(data)), env=env,
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    summary = json.loads(built.stdout)
    assert sum(summary["splits"].values()) == 41  # the broken line keeps its caption
    assert summary["dropped_fields"] == 1  # broken.npy: dropped with its path, the caption kept
    assert "broken.npy" in built.stderr
    workdir = tmp_path / "run"
    trained = subprocess.run(omni_command("train", "--config", str(root / "imu_config.py"), "--workdir", str(workdir),
                                          f"--config.data.path={data}", "--config.train.steps=6",
                                          "--config.train.log_every=1", "--config.train.checkpoint_every=6",
                                          # IMU alone in a row is what trains mimu: every pair here holds text
                                          "--config.data.modality_dropout=0.5"),
                             env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss/mimu", "loss/mlm", "loss/mmm", "loss/contrastive/imu-text"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert any(r["loss/mimu"] > 0 for r in rows) and rows[-1]["loss/contrastive/imu-text"] > 0


ABSENT_COST = textwrap.dedent('''
    """One text+image step with and without the IMU plugin configured (no IMU in the data):
    slot FLOPs, XLA's FLOPs and the size of the compiled program."""
    import json, sys
    import ml_collections
    from omni import parallel
    from omni.bench import synthetic_batch
    from omni.bench.plan import compiled_flops
    from omni.data import pipeline
    from omni.flops import model_flops_per_step
    from omni.run.setup import build_setup
    from tests.conftest import small_config

    config = small_config("--config.data.mixture=image+text=4,text=4", "--config.model.scan_layers=false")
    if sys.argv[1] == "imu":
        with config.unlocked():
            config.modalities.imu = ml_collections.ConfigDict(dict(steps=32, patch=8))
            config.loss.mimu = ml_collections.ConfigDict(dict(weight=1.0, mask_ratio=0.5))
    setup = build_setup(config, parallel.make_mesh((1, 1, 1)))
    lowered = setup.compile_train_step().lower(setup.abstract_state, synthetic_batch(config, setup), setup.step_args)
    compiled = lowered.compile()
    print(json.dumps({"slot_flops": model_flops_per_step(config, pipeline.slot_layout(config)),
                      "xla_flops": compiled_flops(compiled), "program": len(compiled.as_text())}))
''')


def test_an_absent_sixth_modality_costs_a_text_image_step_nothing(plugin_env):
    """Configured but absent from every example, IMU adds no sub-batch and no pass, and its
    parameters no optimizer update (omni.run.frozen): the step's FLOPs are the same, and its
    compiled program is within 5%."""
    _, env = plugin_env
    results = {}
    for variant in ("plain", "imu"):
        out = subprocess.run([sys.executable, "-c", ABSENT_COST, variant], env=env, capture_output=True, text=True,
                             timeout=600, cwd=REPO)
        assert out.returncode == 0, out.stderr[-3000:]
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    plain, imu = results["plain"], results["imu"]
    assert imu["slot_flops"] == plain["slot_flops"]
    assert abs(imu["xla_flops"] / plain["xla_flops"] - 1) <= 0.05, results
    assert abs(imu["program"] / plain["program"] - 1) <= 0.05, results

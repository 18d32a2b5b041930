"""Shared test helpers: a very small model config, and a private dataset cache."""
import os
import sys
from pathlib import Path

import pytest

# Keep compiled bytecode: with PYTHONDONTWRITEBYTECODE set, each of the many Python processes the
# tests start (omni commands, workers) compiled its imports from source again, 2.5 s of CPU apiece.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
# Tests must not depend on (or pollute) the user's cache.
os.environ.setdefault("OMNI_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "omni"))
# Many tests (and the `omni` processes they start) compile the same small steps: XLA's persistent
# compilation cache, private to this checkout, lets them share the compiled programs.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax-compilation"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# LLVM's optimisation level changes how fast the compiled code runs, not what it computes (XLA
# CPU does not enable fast-math): at level 0 the five-modality test step compiles in half the
# time (19 s against 38 s here), and the tests' tiny steps run as fast. Every process the tests
# start inherits it; tests that set their own XLA_FLAGS add to BASE_XLA_FLAGS.
BASE_XLA_FLAGS = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
os.environ["XLA_FLAGS"] = BASE_XLA_FLAGS

REPO = Path(__file__).resolve().parent.parent

# A model small enough that a step compiles in seconds on 2 CPU cores.
MODEL_SMALL = [
    "--config.model.width=32", "--config.model.depth=2", "--config.model.heads=2",
    "--config.model.embed_dim=32", "--config.train.batch_size=8",
    "--config.modalities.text.max_len=12", "--config.modalities.text.vocab_size=400",
    "--config.modalities.image.size=16", "--config.modalities.image.patch=8",
    "--config.eval.batch_size=32", "--config.eval.max_examples=64",
    "--config.data.num_threads=1",
    # token compaction off: the tests that compile a step compile one branch, not two;
    # tests/test_capacity.py turns it on
    "--config.model.token_capacity=1.0",
    # Every `omni train` would otherwise time a 2048^3 matmul for its MFU: seconds per run here.
    "--config.train.peak_flops_per_device=100e9",
]
# Most tests need only text and images; SMALL_ALL keeps all five modalities, each tiny.
SMALL = ["--config.modalities=text,image", *MODEL_SMALL]
SMALL_ALL = [
    *MODEL_SMALL,
    "--config.modalities.audio.clip_seconds=0.32", "--config.modalities.audio.patch_frames=4",  # 4 tokens
    "--config.modalities.video.num_frames=2",  # 2 frames x 4 patches
    "--config.modalities.smell.svd_dim=16", "--config.modalities.smell.tokens=2",
]


def small_config(*overrides):
    from omni.config import load_config
    return load_config(None, SMALL + list(overrides))


def omni_command(*args):
    """The `omni` command of the environment running the tests."""
    return [sys.executable, "-m", "omni.cli", *args]


@pytest.fixture(scope="session")
def default_data():
    from omni.data.default import ensure_default_dataset
    return ensure_default_dataset()


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject's addopts): one worker more than the cores. Many tests wait on the
    processes they start (SLURM jobs, launchers, servers), which leaves cores idle with one worker
    per core. On the 2-core CI machine, three workers ran the clean-clone suite in 12 min 33 s;
    `time bash .ci/run` gave 13 min 37 s and 21.4 CPU-minutes, install included: 79% of the two
    cores."""
    return (os.cpu_count() or 1) + 1


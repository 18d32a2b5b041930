"""`omni bench`: the figures it reports follow from each other as documented, and `--profile`
leaves a trace a profiler can open."""
import json
import subprocess

import numpy as np
import pytest

from omni.bench import bench
from omni.data.pipeline import slot_layout
from omni.flops import model_flops_per_step, token_slots_per_step
from tests.conftest import REPO, SMALL_ALL, omni_command, small_config


def test_bench_reports_consistent_figures_and_writes_a_profile(tmp_path):
    config = small_config()
    result = bench(config, steps=2, warmup=1, synthetic=True, profile_dir=str(tmp_path / "trace"))

    step = result["step_time_s"]
    assert step > 0 and result["compile_time_s"] > 0 and result["peak_flops_per_s"] > 0
    # a synthetic batch holds the data's modality sets with every token real: real = slots
    slots = slot_layout(config)
    assert len(slots) == 2 and result["token_fill"] == 1.0
    assert result["padded_flops_per_step"] == model_flops_per_step(config, slots)
    assert result["model_flops_per_step"] == pytest.approx(result["padded_flops_per_step"], rel=1e-6)
    # the mixture's slots are fewer than every modality in every row
    assert result["padded_flops_per_step"] < model_flops_per_step(config)
    # MFU = achieved FLOP/s over the peak of every device; tokens/s from the step time.
    assert result["mfu"] == pytest.approx(result["model_flops_per_step"] / step / result["peak_flops_per_s"])
    assert 0 < result["mfu"] <= 1
    assert result["tokens_per_s"] == pytest.approx(token_slots_per_step(config, slots) / step)
    assert result["examples_per_s"] == pytest.approx(config.train.batch_size / step)

    traces = list((tmp_path / "trace").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_bench_on_real_data_fits_the_run_assets(default_data):
    """`omni bench` as interface.md documents it (not --synthetic): the batch comes from the
    default dataset, encoded with the assets a run fits, the smell SVD basis among them (this
    crashed when bench trained only a tokenizer)."""
    # text up to 32 tokens: SMALL_ALL's 12 would cut most captions to the same length, and then a
    # batch without modality dropout would pad nothing
    # three of the five modalities (smell's asset among them): three sub-batches compile faster
    out = subprocess.run(omni_command("bench", "--steps", "1", *SMALL_ALL, "--config.modalities.text.max_len=32",
                                      "--config.modalities=text,image,smell"),
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "fitted the smell asset on the training split" in out.stderr
    assert result["config"] == "tiny" and result["batch_size"] == 8
    assert np.isfinite(result["loss"]) and result["loss"] > 0
    assert result["step_time_s"] > 0 and 0 < result["mfu"] <= 1
    # real batches pad text and hold each example's own modalities only
    assert 0 < result["token_fill"] < 1 and result["padded_mfu"] > result["mfu"]
    assert result["model_flops_per_step"] < result["padded_flops_per_step"]

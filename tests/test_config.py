"""Bad configs fail before anything compiles, with one line that names the key."""
import subprocess

import pytest

from omni.config import ConfigError, load_config, resolve_mesh_shape
from omni.validation import validate
from tests.conftest import omni_command


def test_overrides_are_typed():
    config = load_config(None, ["--config.train.steps=7", "--config.train.lr=0.5",
                                "--config.model.scan_layers=false", "--config.loss.contrastive.kind=infonce"])
    assert config.train.steps == 7 and isinstance(config.train.steps, int)
    assert config.train.lr == 0.5 and config.model.scan_layers is False
    assert config.loss.contrastive.kind == "infonce"


def test_base_config_loads_and_is_about_100m():
    from omni.model import Omni
    import jax
    from flax import nnx
    config = load_config("base")
    validate(config, 1)
    model = nnx.eval_shape(lambda: Omni(config, nnx.Rngs(params=0)))
    count = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    assert 80e6 < count < 150e6, count


@pytest.mark.parametrize("override, message", [
    ("--config.train.stepz=3", "unknown config key 'train.stepz'"),
    ("--config.nosuch.key=3", "unknown config key 'nosuch'"),
    ("--config.train.steps=abc", "config key 'train.steps'"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("overrides, devices, message", [
    (["--config.train.batch_size=10", "--config.mesh.data=4"], 4, "not divisible by the data-parallel size"),
    (["--config.mesh.data=16"], 8, "needs 16 devices but only 8"),
    (["--config.mesh.data=-1", "--config.mesh.fsdp=-1"], 8, "only one of"),
    ([f"--config.loss.{k}.weight=0" for k in ("mlm", "mim", "mam", "mvm", "msm", "mmm", "contrastive")], 1,
     "every loss"),
    # audio, video and smell objectives still weigh, but those modalities are not configured
    (["--config.modalities=text,image", "--config.loss.mlm.weight=0", "--config.loss.mim.weight=0",
      "--config.loss.mmm.weight=0", "--config.loss.contrastive.weight=0"], 1, r"every loss.*\(image, text\)"),
    (["--config.modalities=text", "--config.loss.mlm.weight=0"], 1, "every loss"),  # one modality: no pairs
    (["--config.modalities.audio.clip_seconds=0.01"], 1, "modalities.audio"),  # not one token of audio
    (["--config.modalities.smell.tokens=0"], 1, "modalities.smell.tokens"),
    (["--config.modalities.video.num_frames=0"], 1, "modalities.video.num_frames"),
    (["--config.modalities.text.max_len=0"], 1, "modalities.text.max_len"),
    (["--config.model.heads=3"], 1, "not divisible by model.heads"),
    (["--config.modalities.image.patch=7"], 1, "modalities.image.size"),
    (["--config.loss.contrastive.kind=hinge"], 1, "siglip or infonce"),
    (["--config.loss.itm.rows=100"], 1, "loss.itm.rows=100"),                        # over the batch of 64
    (["--config.loss.itm.rows=6", "--config.mesh.data=4"], 4, "loss.itm.rows=6"),     # 6 rows on 4 shards
    (["--config.data.group_size=-2"], 1, "data.group_size=-2"),
    (["--config.model.token_capacity=1.5"], 1, "model.token_capacity=1.5"),
    # parameters the mesh would copy whole on every device of an axis (tiny: width 128, 4 heads)
    (["--config.mesh.data=1", "--config.mesh.tensor=8"], 8, r"model.heads=4 is not divisible by mesh.tensor=8"),
    (["--config.mesh.data=1", "--config.mesh.fsdp=256", "--config.train.batch_size=256"], 256,
     r"model.width=128 is not divisible by mesh.fsdp=256"),
    (["--config.mesh.data=1", "--config.mesh.tensor=2", "--config.mesh.fsdp=4",
      "--config.modalities.text.vocab_size=1020"], 8, r"modalities.text.vocab_size=1020 is not divisible by mesh.tensor\*mesh.fsdp=8"),
    (["--config.mesh.dcn_data=3"], 8, r"mesh.dcn_data=3: the part of mesh.data=8 across processes"),
    (["--config.mesh.fsdp=2", "--config.mesh.dcn_fsdp=0"], 8, r"mesh.dcn_fsdp=0"),
])
def test_validation_errors(overrides, devices, message):
    config = load_config(None, overrides)
    with pytest.raises(ConfigError, match=message):
        validate(config, devices)


def test_base_heads_on_tensor_8_are_refused_in_one_line_unless_replication_is_allowed():
    """base's 12 heads on mesh.tensor=8 once ran with the attention weights copied on every device."""
    mesh = ["--config.mesh.data=1", "--config.mesh.tensor=8"]
    with pytest.raises(ConfigError) as refused:
        validate(load_config("base", mesh), 8)
    assert str(refused.value) == (
        "model.heads=12 is not divisible by mesh.tensor=8: the attention weights would be copied whole on every "
        "device of the axis; choose mesh sizes that divide it, or set mesh.allow_replication=true")
    validate(load_config("base", [*mesh, "--config.mesh.allow_replication=true"]), 8)


def test_mesh_shape_carries_the_axes_across_processes():
    config = load_config(None, ["--config.mesh.data=2", "--config.mesh.fsdp=-1", "--config.mesh.dcn_data=2"])
    shape = resolve_mesh_shape(config, 8)
    assert shape == (2, 4, 1) and shape.dcn == (2, 1, 1)
    assert resolve_mesh_shape(load_config(None), 8).dcn == (1, 1, 1)


def test_unknown_modality():
    import ml_collections
    config = load_config(None)
    with config.unlocked():
        config.modalities.smellovision = ml_collections.ConfigDict({"size": 1})
    with pytest.raises(ConfigError, match="modalities.smellovision: unknown modality"):
        validate(config, 1)


def test_unknown_objective_and_modality_subset():
    import ml_collections
    config = load_config(None)
    with config.unlocked():
        config.loss.mxm = ml_collections.ConfigDict({"weight": 1.0})
    with pytest.raises(ConfigError, match="loss.mxm: unknown objective"):
        validate(config, 1)
    with pytest.raises(ConfigError, match="modalities=text,sonar"):
        load_config(None, ["--config.modalities=text,sonar"])
    assert list(load_config(None, ["--config.modalities=smell,text"]).modalities) == ["smell", "text"]


def test_mesh_minus_one_takes_the_rest():
    config = load_config(None, ["--config.mesh.data=2", "--config.mesh.fsdp=-1", "--config.mesh.tensor=2"])
    assert resolve_mesh_shape(config, 8) == (2, 2, 2)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    result = subprocess.run(omni_command("train", "--workdir", str(tmp_path), "--config.mesh.data=4"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "omni: config error: mesh 4x1x1 needs 4 devices but only 1 are present")
    assert not (tmp_path / "checkpoints").exists()


def test_resuming_with_another_model_shape_is_refused(tmp_path):
    """A workdir's checkpoints fix the model's shapes: a different width is one clear line, and
    compute-only keys (dtype, remat) may change on resume."""
    from omni.train.guards import check_resume_compatible
    from omni import config as config_lib
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(config_lib.to_json(load_config(None)))
    check_resume_compatible(load_config(None, ["--config.model.dtype=bfloat16", "--config.train.steps=5"]), tmp_path)
    with pytest.raises(ConfigError, match="model.width=128, but this config has model.width=256"):
        check_resume_compatible(load_config(None, ["--config.model.width=256"]), tmp_path)

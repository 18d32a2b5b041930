"""Validate a config against the mesh, the registered modalities and the objectives, before
anything compiles: every check fails with one line that names the key and what is wrong."""
from __future__ import annotations

from omni import config as config_lib
from omni import mae
from omni.errors import ConfigError
from omni.modalities import registry


def validate(config, num_devices: int) -> None:
    """Raise ConfigError (one line) for any config that cannot work."""
    data, fsdp, tensor = config_lib.resolve_mesh_shape(config, num_devices)
    batch = int(config.train.batch_size)
    if batch <= 0:
        raise ConfigError(f"train.batch_size={batch} must be positive")
    if batch % (data * fsdp):
        raise ConfigError(
            f"train.batch_size={batch} is not divisible by the data-parallel size "
            f"mesh.data*mesh.fsdp={data * fsdp}")
    if config.model.width % config.model.heads:
        raise ConfigError(
            f"model.width={config.model.width} is not divisible by model.heads={config.model.heads}")
    validate_sharding(config, fsdp, tensor)
    for name in config.modalities:
        if name not in registry.MODALITIES:
            raise ConfigError(
                f"modalities.{name}: unknown modality (known: {', '.join(sorted(registry.MODALITIES))})")
        registry.MODALITIES[name].validate(config)
    known_objectives = set(registry.masked_objectives()) | {"mmm", "contrastive", "itm"}
    for name in config.loss:
        if name not in known_objectives:
            raise ConfigError(f"loss.{name}: unknown objective (known: {', '.join(sorted(known_objectives))})")
    if not registry.active_objectives(config):
        raise ConfigError("every loss.<objective>.weight of the configured modalities "
                          f"({', '.join(config.modalities.keys())}) is zero: nothing would be trained")
    for pair in str(config.loss.get("itm", {}).get("pairs", "") or "").split(","):
        names = [n.strip() for n in pair.split("-")] if pair.strip() else []
        if names and (len(names) != 2 or any(n not in config.modalities for n in names)):
            raise ConfigError(f"loss.itm.pairs: '{pair.strip()}' is not two configured modalities joined by '-' "
                              f"(configured: {', '.join(config.modalities.keys())})")
    rows = int(config.loss.get("itm", {}).get("rows", 0))
    if rows < 0 or rows > batch or rows % (data * fsdp):
        raise ConfigError(f"loss.itm.rows={rows}: the rows per pair that matching scores must be 0 (the whole "
                          f"batch) or at most train.batch_size={batch} and divisible by the data-parallel "
                          f"size mesh.data*mesh.fsdp={data * fsdp}")
    if config.loss.contrastive.kind not in ("siglip", "infonce"):
        raise ConfigError(f"loss.contrastive.kind='{config.loss.contrastive.kind}': use siglip or infonce")
    if config.model.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"model.dtype='{config.model.dtype}': use float32 or bfloat16")
    if config.model.get("residual_dtype", "float32") not in ("float32", "bfloat16"):
        raise ConfigError(f"model.residual_dtype='{config.model.residual_dtype}': use float32 or bfloat16")
    if config.model.remat not in ("none", "full", "dots"):
        raise ConfigError(f"model.remat='{config.model.remat}': use none, full or dots")
    if config.model.parametrization not in ("sp", "mup"):
        raise ConfigError(f"model.parametrization='{config.model.parametrization}': use sp or mup")
    if config.model.attention not in ("einsum", "blocked", "xla", "cudnn", "fused"):
        raise ConfigError(f"model.attention='{config.model.attention}': "
                          "use einsum, blocked, xla, cudnn or fused")
    validate_mae(config)
    capacity = config.model.get("token_capacity", 1.0)
    if not isinstance(capacity, (int, float)) or not 0 <= capacity <= 1:
        raise ConfigError(f"model.token_capacity={capacity!r}: use a share of the encoder's token slots "
                          "in (0, 1], or 0 to measure it on the run's first batches")
    if config.data.on_error not in ("skip", "raise"):
        raise ConfigError(f"data.on_error='{config.data.on_error}': use skip or raise")
    group_size = config.data.get("group_size", 0)
    if not isinstance(group_size, int) or group_size < 0:
        raise ConfigError(f"data.group_size={group_size!r}: use a whole number >= 0 (runs of this many "
                          "records of one group; 0 or 1 = no grouping)")
    multiple = config.data.get("rows_multiple", 0)
    if not isinstance(multiple, int) or multiple < 0 or (multiple and batch % multiple):
        raise ConfigError(f"data.rows_multiple={multiple!r}: use 0 (auto) or a whole number that divides "
                          f"train.batch_size={batch} (rows per modality set come in multiples of it)")
    if config.train.steps < 1:
        raise ConfigError(f"train.steps={config.train.steps} must be at least 1")


def validate_sharding(config, fsdp: int, tensor: int) -> None:
    """The model's main sizes divide the mesh axes that shard them (omni.parallel.AXIS_RULES), so
    that no parameter is silently copied whole on every device of an axis (base's 12 heads on
    mesh.tensor=8 were). Named by config key here; omni.parallel.parameter_specs checks every
    parameter by name when the shardings are built. mesh.allow_replication=true accepts it."""
    if config.mesh.get("allow_replication", False):
        return
    m = config.model
    sizes = [("model.heads", m.heads, "mesh.tensor", tensor, "the attention weights"),
             ("model.width", m.width, "mesh.fsdp", fsdp, "the weights of the width"),
             ("model.width*model.mlp_ratio", m.width * m.mlp_ratio, "mesh.tensor*mesh.fsdp", tensor * fsdp,
              "the MLP biases"),
             ("model.embed_dim", m.embed_dim, "mesh.fsdp", fsdp, "the contrastive projections")]
    if "text" in config.modalities:
        sizes.append(("modalities.text.vocab_size", config.modalities.text.vocab_size, "mesh.tensor*mesh.fsdp",
                      tensor * fsdp, "the token embedding and the vocabulary bias"))
    if m.get("mae", False) and m.get("decoder_width", 0):
        sizes.append(("model.decoder_width", m.decoder_width, "mesh.fsdp", fsdp, "the MAE decoder's weights"))
    for key, size, axes, shards, what in sizes:
        if size % shards:
            raise ConfigError(f"{key}={size} is not divisible by {axes}={shards}: {what} would be copied whole "
                              "on every device of the axis; choose mesh sizes that divide it, or set "
                              "mesh.allow_replication=true")


def validate_mae(config) -> None:
    """model.mae and its decoder (omni.mae): checked only when it is on, as only then are they used."""
    m = config.model
    if not isinstance(m.get("mae", False), bool):
        raise ConfigError(f"model.mae={m.mae!r}: use true or false")
    if not m.get("mae", False):
        return
    depth, width = m.get("decoder_depth", 1), m.get("decoder_width", 0)
    if not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"model.decoder_depth={depth!r}: use a whole number >= 1 (the MAE decoder's layers)")
    if not isinstance(width, int) or width < 0:
        raise ConfigError(f"model.decoder_width={width!r}: use a whole number >= 0 (0 = model.width)")
    for name in mae.mae_modalities(config):
        if mae.visible_count(config, name) < 1:
            objective = registry.get(name).objective
            raise ConfigError(f"loss.{objective}.mask_ratio={config.loss[objective].mask_ratio} masks every "
                              f"{name} patch: under model.mae the encoder would see none")

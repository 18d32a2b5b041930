"""Export a run as a portable bundle (`omni export`) and embed with a bundle alone (`omni embed`)."""
from omni.export.bundle import export_bundle, preprocessing_constants
from omni.export.embed import cli_embed, embed_files, smell_input
from omni.run.bundle import Bundle, flatten_params, load_bundle, load_bundle_params

__all__ = ["Bundle", "cli_embed", "embed_files", "export_bundle", "flatten_params", "load_bundle",
           "load_bundle_params", "preprocessing_constants", "smell_input"]

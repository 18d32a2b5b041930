"""Export a run as a portable bundle (omni.export.bundle: `omni export`) and embed with a bundle
alone (omni.export.embed: `omni embed`). The package imports nothing itself, so that embedding
never loads the model or training code."""

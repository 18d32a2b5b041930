"""omni: one early-fusion transformer for every modality, in JAX."""

__version__ = "0.1.0"

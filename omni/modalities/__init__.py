"""One file per modality; registry.py maps names to them."""

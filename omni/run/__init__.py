"""What training, evaluation and export all need: a run's state, its assets, loading a run, reading bundles."""

"""Linear probe: frozen embeddings -> L2-regularised multinomial logistic regression. The
regularisation strength C is chosen on a validation split carved deterministically out of the
training examples, then the probe is refitted on all of them."""
from __future__ import annotations

import warnings

import numpy as np

from omni.eval.embedding import check_modality, embed_records, labelled

PROBE_CS = tuple(float(c) for c in 10.0 ** np.arange(-2, 5))  # 0.01 .. 10,000 (inverse L2 strength)


def validation_split(n: int, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (fit, validation) index arrays over n training examples."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(val_fraction * n))), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def fit_linear_probe(train_x, train_y, test_x, test_y, Cs=PROBE_CS, val_fraction: float = 0.2,
                     seed: int = 0) -> dict:
    """Multinomial logistic regression with an L2 penalty (scikit-learn, lbfgs) on fixed features.
    Each C of `Cs` (inverse regularisation strength) is fitted on the fit part of a deterministic
    split of the training examples and scored on its validation part; the best C (ties: the
    smallest, i.e. the strongest regularisation) is refitted on all training examples and scored on
    the test examples. Test labels unseen in training count as errors."""
    # deferred: slow to import
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    classes = sorted(set(train_y.tolist()))
    if len(classes) < 2:
        raise ValueError(f"the linear probe needs at least 2 distinct labels in training, found {len(classes)}")
    if len(train_y) < 4:
        raise ValueError(f"the linear probe needs at least 4 labelled training examples, found {len(train_y)}")
    if len(test_y) == 0:
        raise ValueError("the linear probe has no labelled test examples")
    fit, val = validation_split(len(train_y), val_fraction, seed)

    def train(C, rows):
        model = LogisticRegression(C=C, max_iter=2000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return model.fit(train_x[rows], train_y[rows])

    if len(set(train_y[fit].tolist())) < 2:
        raise ValueError("the fit part of the training examples holds a single label")
    validation = {}
    for C in Cs:
        validation[float(C)] = float(np.mean(train(C, fit).predict(train_x[val]) == train_y[val]))
    best = max(validation.values())
    chosen = min(C for C, acc in validation.items() if acc == best)
    model = train(chosen, np.arange(len(train_y)))
    accuracy = float(np.mean(model.predict(test_x) == test_y))
    return {"accuracy": accuracy, "n": int(len(test_y)), "classes": len(classes), "C": chosen,
            "val_accuracy": best, "n_train": int(len(fit)), "n_val": int(len(val)),
            "validation": {f"{C:g}": acc for C, acc in validation.items()}}


def linear_probe(setup, params, train_source, test_source, config, assets, modality: str,
                 max_train=None, max_test=None, Cs=PROBE_CS, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Linear probe on frozen `modality` embeddings: train on the labelled examples of
    train_source (C chosen on a deterministic validation split of them), test on test_source.
    -> {"accuracy", "n" (test examples), "classes", "C", ...} (see fit_linear_probe)."""
    check_modality(config, modality)
    train_x, train_y = labelled(*embed_records(setup, params, train_source, config, assets, modality, max_train))
    test_x, test_y = labelled(*embed_records(setup, params, test_source, config, assets, modality, max_test))
    return fit_linear_probe(train_x, train_y, test_x, test_y, Cs, val_fraction, seed)

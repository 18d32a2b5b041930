import numpy as np

from omni.evaluate import recall_at_k


def test_recall_on_a_hand_made_matrix():
    similarity = np.array([
        [0.9, 0.1, 0.0, 0.2],   # query 0: correct target 0 ranked 1st
        [0.8, 0.1, 0.7, 0.6],   # query 1: correct target 1 ranked 4th
        [0.1, 0.2, 0.3, 0.9],   # query 2: correct target 2 ranked 2nd
        [0.5, 0.4, 0.3, 0.2],   # query 3: correct target 3 ranked 4th
    ])
    correct = np.eye(4, dtype=bool)
    assert recall_at_k(similarity, correct, ks=(1, 2, 4)) == {"R@1": 0.25, "R@2": 0.5, "R@4": 1.0}


def test_several_correct_targets_per_query():
    similarity = np.array([[0.1, 0.9, 0.5], [0.9, 0.1, 0.5]])
    correct = np.array([[True, False, True], [False, True, False]])
    # query 0: best correct is target 2 at rank 2; query 1: target 1 at rank 3.
    assert recall_at_k(similarity, correct, ks=(1, 2, 3)) == {"R@1": 0.0, "R@2": 0.5, "R@3": 1.0}

"""The MSDS loss terms on hand-made probability vectors, against values computed here by hand."""

import pytest
import torch

from msds_lightning.losses import anti_consistency_loss, brier_loss, majority_vote, msds_loss

# two images, M = 2 copies, K = 3 classes
PROBS = torch.tensor(
    [
        [[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]],  # image 0, label 0
        [[0.1, 0.1, 0.8], [0.2, 0.2, 0.6]],  # image 1, label 1 (copies agree on the wrong class 2)
    ]
)
LABELS = torch.tensor([0, 1])


def test_brier_by_hand():
    # image 0: copy 1: (0.3² + 0.2² + 0.1²) = 0.14; copy 2: 0.5² + 0.4² + 0.1² = 0.42 -> mean 0.28
    # image 1: copy 1: 0.1² + 0.9² + 0.8² = 1.46; copy 2: 0.2² + 0.8² + 0.6² = 1.04 -> mean 1.25
    assert brier_loss(PROBS, LABELS).tolist() == pytest.approx([0.28, 1.25])


def test_anti_consistency_by_hand():
    # mean probs: image 0 (0.6, 0.3, 0.1); image 1 (0.15, 0.15, 0.7)
    # off-class: image 0: 0.3² + 0.1² = 0.10; image 1: 0.15² + 0.7² = 0.5125
    assert anti_consistency_loss(PROBS, LABELS).tolist() == pytest.approx([0.10, 0.5125])
    # full: image 0: 0.36 + 0.09 + 0.01 = 0.46; image 1: 0.0225 + 0.0225 + 0.49 = 0.535
    assert anti_consistency_loss(PROBS, LABELS, include_true_class=True).tolist() == pytest.approx(
        [0.46, 0.535]
    )


def test_msds_loss_combines_terms_by_recoverability():
    dm = torch.tensor([0.02, 0.04])
    parts = msds_loss(PROBS, LABELS, torch.tensor([True, False]), dm, lambda_ac=2.0, lambda_dm=0.5)
    # image 0 recoverable: 0.28 + 0.5·0.02 = 0.29; image 1 not: 2·0.5125 + 0.5·0.04 = 1.045
    assert parts["loss"].tolist() == pytest.approx([0.29, 1.045])
    assert parts["brier"].tolist() == pytest.approx([0.28, 1.25])


def test_diverse_wrong_copies_cost_less_than_agreeing_wrong_copies():
    agree = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    spread = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    assert anti_consistency_loss(spread, torch.tensor([1])) < anti_consistency_loss(agree, torch.tensor([1]))


def test_majority_vote_ties_to_lowest_class():
    predictions = torch.tensor([[2, 2, 1, 1], [0, 3, 3, 1], [4, 4, 4, 0]])
    assert majority_vote(predictions, 5).tolist() == [1, 3, 4]

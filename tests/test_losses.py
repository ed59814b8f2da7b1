"""GCL / CSFT / combined loss against hand-computed values."""

import math

import pytest
import torch

from notellm.losses import CollaborativeSFTLoss, GenerativeContrastiveLoss, NoteLLMLoss


def test_gcl_equals_hand_computed_value():
    # 2 pairs: (a0, b0), (a1, b1). Scale 1 (log-scale 0) keeps the arithmetic readable.
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    loss = GenerativeContrastiveLoss(init_log_scale=0.0)(a, b)
    # cosines: a0.b0=.6 a0.a1=0 a0.b1=-1 b0.a1=.8 b0.b1=-.6 a1.b1=0; each row: -pos + log sum_{j != i} e^{s_ij}
    rows = [
        -0.6 + math.log(math.exp(0.6) + math.exp(0.0) + math.exp(-1.0)),   # a0: partner b0
        -0.6 + math.log(math.exp(0.6) + math.exp(0.8) + math.exp(-0.6)),   # b0: partner a0
        -0.0 + math.log(math.exp(0.0) + math.exp(0.0) + math.exp(0.8)),    # a1: partner b1
        -0.0 + math.log(math.exp(0.0) + math.exp(-1.0) + math.exp(-0.6)),  # b1: partner a1
    ]
    expected = sum(rows) / 4
    assert expected == pytest.approx(0.8942642, abs=1e-6)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_gcl_masks_other_copies_of_a_note_by_key():
    # Same vectors as above, but a1 is another copy of note a0 (keys interleaved a0, b0, a1, b1 = 7, 8, 7, 9).
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    keys = torch.tensor([7, 8, 7, 9])
    loss = GenerativeContrastiveLoss(init_log_scale=0.0)(a, b, keys)
    # a0 and a1 hold the same note: neither is the other's negative; b0 (partner of a0) does not see a1 either,
    # and b1 (partner of a1) does not see a0. Columns per row: a0 {b0, b1}, b0 {a0, b1}, a1 {b1, b0}, b1 {a1, b0}.
    rows = [
        -0.6 + math.log(math.exp(0.6) + math.exp(-1.0)),
        -0.6 + math.log(math.exp(0.6) + math.exp(-0.6)),
        -0.0 + math.log(math.exp(0.0) + math.exp(0.8)),
        -0.0 + math.log(math.exp(0.0) + math.exp(-0.6)),
    ]
    assert loss.item() == pytest.approx(sum(rows) / 4, abs=1e-6)
    unmasked = GenerativeContrastiveLoss(init_log_scale=0.0)(a, b, torch.tensor([1, 2, 3, 4]))
    assert unmasked.item() == pytest.approx(0.8942642, abs=1e-6)  # distinct keys: the plain GCL value


def test_gcl_hard_negatives_are_extra_columns_masked_where_they_are_a_rows_own_note():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    h = torch.tensor([[0.0, 2.0], [1.0, 0.0]])  # h0 = (0, 1) is a new note; h1 = (1, 0) is another copy of a0
    keys, h_keys = torch.tensor([1, 2, 3, 4]), torch.tensor([5, 1])
    loss = GenerativeContrastiveLoss(init_log_scale=0.0)(a, b, keys, negatives=h, negative_keys=h_keys)
    # every row gets h0 as an extra negative; h1 (note 1 = a0) is masked for a0 and for its partner b0 only.
    # cosines with h0: a0 0, b0 .8, a1 1, b1 0; with h1: a1 0, b1 -1
    rows = [
        -0.6 + math.log(math.exp(0.6) + math.exp(0.0) + math.exp(-1.0) + math.exp(0.0)),
        -0.6 + math.log(math.exp(0.6) + math.exp(0.8) + math.exp(-0.6) + math.exp(0.8)),
        -0.0 + math.log(math.exp(0.0) + math.exp(0.0) + math.exp(0.8) + math.exp(1.0) + math.exp(0.0)),
        -0.0 + math.log(math.exp(0.0) + math.exp(-1.0) + math.exp(-0.6) + math.exp(0.0) + math.exp(-1.0)),
    ]
    assert loss.item() == pytest.approx(sum(rows) / 4, abs=1e-6)
    h.requires_grad_(True)
    GenerativeContrastiveLoss()(a, b, keys, negatives=h, negative_keys=h_keys).backward()
    assert h.grad.abs().sum() > 0  # the mined negatives are trained against, not only counted


def test_gcl_false_negative_margin_masks_negatives_closer_than_the_positive():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    # margin .1: a0 (positive .6) keeps all (0, -1); b0 (positive .6) masks a1 (.8 > .7); a1 (positive 0) masks
    # b0 (.8); b1 (positive 0) keeps all (-1, -.6)
    loss = GenerativeContrastiveLoss(init_log_scale=0.0)(a, b, false_negative_margin=0.1)
    rows = [
        -0.6 + math.log(math.exp(0.6) + math.exp(0.0) + math.exp(-1.0)),
        -0.6 + math.log(math.exp(0.6) + math.exp(-0.6)),
        -0.0 + math.log(math.exp(0.0) + math.exp(0.0)),
        -0.0 + math.log(math.exp(0.0) + math.exp(-1.0) + math.exp(-0.6)),
    ]
    assert loss.item() == pytest.approx(sum(rows) / 4, abs=1e-6)
    wide = GenerativeContrastiveLoss(init_log_scale=0.0)(a, b, false_negative_margin=5.0)
    assert wide.item() == pytest.approx(0.8942642, abs=1e-6)  # nothing is that close: plain GCL


def test_gcl_is_symmetric_and_scale_is_learnable_and_clamped():
    torch.manual_seed(0)
    a, b = torch.randn(4, 8), torch.randn(4, 8)
    gcl = GenerativeContrastiveLoss()
    assert gcl.scale.item() == pytest.approx(math.exp(3.0), rel=1e-6)
    assert gcl(a, b).item() == pytest.approx(gcl(b, a).item(), rel=1e-6)
    gcl(a, b).backward()
    assert gcl.log_scale.grad is not None and gcl.log_scale.grad.abs() > 0
    clamped = GenerativeContrastiveLoss(init_log_scale=10.0, max_scale=100.0)
    assert clamped.scale.item() == pytest.approx(100.0, rel=1e-5)


def test_gcl_ignores_vector_norms_and_prefers_aligned_pairs():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    good = GenerativeContrastiveLoss()(a, a * 3.0)
    bad = GenerativeContrastiveLoss()(a, a.flip(0))
    assert good < 0.01 < bad


def test_csft_counts_answer_tokens_only():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    labels = torch.tensor([0, -100, 1])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(math.exp(5) / (math.exp(5) + 2))) / 2
    assert CollaborativeSFTLoss()(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_combined_loss_weights():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    logits, labels = torch.tensor([[0.0, 0.0]]), torch.tensor([1])
    out = NoteLLMLoss(gen_weight=0.5, init_log_scale=0.0)(a, b, logits, labels)
    assert out["generative"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert out["loss"].item() == pytest.approx((0.8942642 + 0.5 * math.log(2)) / 1.5, abs=1e-5)

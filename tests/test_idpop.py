"""IDPOP / DPOP / DPO loss (MultiSmpLLM eq. 7, 12-14) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from notellm.losses.preference import PreferenceLoss, answer_weights, error_range, idpop_mu

# A 2-pair batch. Absolute errors (chosen, rejected): pair 1 (0.2, 1.0), pair 2 (0.5, 0.7).
ERR_C = torch.tensor([0.2, 0.5])
ERR_R = torch.tensor([1.0, 0.7])
# Summed answer log-probabilities. Pair 1: the policy LOWERED the chosen answer (-2.0 < -1.5);
# pair 2: the policy raised it (-1.0 > -1.2).
POL_C, REF_C = torch.tensor([-2.0, -1.0]), torch.tensor([-1.5, -1.2])
POL_R, REF_R = torch.tensor([-3.0, -1.5]), torch.tensor([-2.0, -1.0])
BETA, LAM, ALPHA, DELTA = 0.5, 1.0, 1.0, 0.1

# M_min = 0.2, M_max = 1.0 over all four answers, so M_max - M_min = 0.8 and W = 10 exp(-M / 0.8):
#   W(0.2) = 10 e^-0.25  = 7.788008   W(1.0) = 10 e^-1.25  = 2.865048
#   W(0.5) = 10 e^-0.625 = 5.352614   W(0.7) = 10 e^-0.875 = 4.168620
# mu_1 = 1 / (7.788008 - 2.865048 + 0.1) = 0.199086 ; mu_2 = 1 / (5.352614 - 4.168620 + 0.1) = 0.778820
# h_1 = (-2.0 + 1.5) - (-3.0 + 2.0) = 0.5 ; h_2 = (-1.0 + 1.2) - (-1.5 + 1.0) = 0.7
# DPO terms: log(1 + e^-0.25) = 0.575939 ; log(1 + e^-0.35) = 0.533382
# penalties: mu_1 * max(0, -1.5 + 2.0) = 0.199086 * 0.5 = 0.099543 ; pair 2: max(0, -1.2 + 1.0) = 0
# IDPOP loss = (0.575939 + 0.099543 + 0.533382) / 2 = 0.604432
W_EXPECTED = [7.788008, 2.865048, 5.352614, 4.168620]
MU_EXPECTED = [0.199086, 0.778820]
IDPOP_EXPECTED = 0.604432
DPO_EXPECTED = (0.575939 + 0.533382) / 2          # 0.554661
DPOP_EXPECTED = (0.575939 + 1.0 * 0.5 + 0.533382) / 2  # fixed lambda = 1: 0.804661


def test_weights_and_mu_match_hand_computed_values():
    m_min, m_max = error_range((ERR_C.tolist() + ERR_R.tolist()))
    assert (m_min, m_max) == pytest.approx((0.2, 1.0))
    w = answer_weights(torch.tensor([0.2, 1.0, 0.5, 0.7]), ALPHA, m_min, m_max)
    assert w.tolist() == pytest.approx(W_EXPECTED, abs=1e-6)
    mu = idpop_mu(ERR_C, ERR_R, LAM, ALPHA, DELTA, m_min, m_max)
    assert mu.tolist() == pytest.approx(MU_EXPECTED, abs=1e-6)
    # Closer answers (pair 2) get the stronger penalty.
    assert mu[1] > mu[0]


def test_idpop_loss_on_two_pairs():
    mu = idpop_mu(ERR_C, ERR_R, LAM, ALPHA, DELTA, 0.2, 1.0)
    out = PreferenceLoss("idpop", beta=BETA, lam=LAM)(POL_C, POL_R, REF_C, REF_R, mu)
    assert out.loss.item() == pytest.approx(IDPOP_EXPECTED, abs=1e-5)
    assert out.penalty.tolist() == pytest.approx([0.099543, 0.0], abs=1e-5)
    assert out.dpo_term.tolist() == pytest.approx([0.575939, 0.533382], abs=1e-5)


def test_dpo_and_dpop_on_the_same_pairs():
    assert PreferenceLoss("dpo", beta=BETA)(POL_C, POL_R, REF_C, REF_R).loss.item() == pytest.approx(DPO_EXPECTED, abs=1e-5)
    assert PreferenceLoss("dpop", beta=BETA, lam=1.0)(POL_C, POL_R, REF_C, REF_R).loss.item() == pytest.approx(
        DPOP_EXPECTED, abs=1e-5)
    # Smaug's placement inside the sigmoid: pair 1 becomes log(1 + e^{-0.5 (0.5 - 1 * 0.5)}) = log 2.
    inside = PreferenceLoss("dpop", beta=BETA, lam=1.0, placement="inside")(POL_C, POL_R, REF_C, REF_R)
    assert inside.loss.item() == pytest.approx((math.log(2) + 0.533382) / 2, abs=1e-5)


def test_penalty_is_zero_when_policy_keeps_the_chosen_answer_likely():
    pol_c = torch.tensor([-1.0, -0.5, -2.0], requires_grad=True)
    ref_c = torch.tensor([-1.0, -0.9, -2.5])  # policy >= reference on every pair
    pol_r, ref_r = torch.tensor([-2.0, -3.0, -1.0]), torch.tensor([-1.5, -2.0, -1.2])
    mu = torch.tensor([5.0, 5.0, 5.0])
    idpop = PreferenceLoss("idpop", beta=0.3)(pol_c, pol_r, ref_c, ref_r, mu)
    dpo = PreferenceLoss("dpo", beta=0.3)(pol_c, pol_r, ref_c, ref_r)
    assert idpop.penalty.tolist() == [0.0, 0.0, 0.0]
    assert idpop.loss.item() == pytest.approx(dpo.loss.item(), abs=1e-7)
    # ...and below the reference it pushes the chosen log-probability up harder than DPO alone.
    low = torch.tensor([-1.5, -0.5, -2.0], requires_grad=True)
    PreferenceLoss("idpop", beta=0.3)(low, pol_r, ref_c, ref_r, mu).loss.backward()
    low_dpo = low.detach().clone().requires_grad_(True)
    PreferenceLoss("dpo", beta=0.3)(low_dpo, pol_r, ref_c, ref_r).loss.backward()
    assert low.grad[0].item() == pytest.approx(low_dpo.grad[0].item() - 5.0 / 3, abs=1e-6)
    assert low.grad[1].item() == pytest.approx(low_dpo.grad[1].item(), abs=1e-7)


def test_dpo_equals_textbook_formula():
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(4, 8, generator=gen) * 0.9 + 0.05  # probabilities of whole answers
    pol_c, pol_r, ref_c, ref_r = p.log()
    beta = 0.2
    textbook = -torch.log(torch.sigmoid(beta * torch.log(p[0] / p[2]) - beta * torch.log(p[1] / p[3]))).mean()
    ours = PreferenceLoss("dpo", beta=beta)(pol_c, pol_r, ref_c, ref_r).loss
    assert ours.item() == pytest.approx(textbook.item(), rel=1e-5)
    # IDPOP with lambda = 0 is DPO too.
    zero_mu = idpop_mu(torch.rand(8, generator=gen), torch.rand(8, generator=gen) + 1, 0.0, 1.0, 0.1, 0.0, 2.0)
    assert PreferenceLoss("idpop", beta=beta)(pol_c, pol_r, ref_c, ref_r, zero_mu).loss.item() == pytest.approx(
        textbook.item(), rel=1e-5)


def test_unparseable_answer_has_zero_weight_and_bad_settings_fail():
    w = answer_weights(torch.tensor([math.inf, 0.0]), 1.0, 0.0, 1.0)
    assert w.tolist() == [0.0, 10.0]
    with pytest.raises(ValueError):
        answer_weights(torch.tensor([1.0]), 1.0, 0.5, 0.5)
    with pytest.raises(ValueError):
        PreferenceLoss("ipo")
    with pytest.raises(ValueError):
        PreferenceLoss("idpop")(POL_C, POL_R, REF_C, REF_R)  # IDPOP without mu

"""Gradient reversal and its schedule: driven by the iteration counter, never by forward passes."""

from __future__ import annotations

import math

import pytest
import torch

from uda.baselines import CDAN, UDABatch
from uda.harmonizers import GH, harmonized_backward
from uda.models import LeNet, WarmStartSchedule, grad_reverse


def test_schedule_matches_cdan_formula() -> None:
    schedule = WarmStartSchedule()
    for i in [0, 1, 10, 1000, 5000, 100000]:
        assert schedule(i) == pytest.approx(2 / (1 + math.exp(-i / 1000)) - 1)
    assert schedule(0) == 0.0
    assert WarmStartSchedule(high=0.1)(10**7) == pytest.approx(0.1)


def test_grad_reverse_is_identity_forward_and_negated_scaled_backward() -> None:
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = grad_reverse(x, 0.25)
    torch.testing.assert_close(y, x.detach())
    (y * torch.tensor([3.0, 5.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([-0.75, -1.25]))


def test_probing_gradients_and_extra_forwards_do_not_move_the_coefficient() -> None:
    torch.manual_seed(0)
    model = CDAN(LeNet(), num_classes=10, discriminator_hidden=32)
    batch = UDABatch(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)), torch.randn(4, 1, 28, 28))
    coeffs = []
    for _ in range(3):  # three forwards and two gradient probes per forward at the same iteration
        out = model.compute_losses("main", batch, iteration=700)
        harmonized_backward(
            [out.losses["align"], out.losses["cls"]],
            model.parameters(),
            GH(),
            gram_params=model.scope_parameters("official"),
        )
        coeffs.append(out.metrics["grl_coeff"])
    assert coeffs == [WarmStartSchedule()(700)] * 3

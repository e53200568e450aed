"""Losses' gradients against the closed-form derivatives of scipy's documented rho functions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradfit.losses import LEAST_SQUARES_LOSSES, pointwise_loss

R = np.array([-4.0, -1.5, -0.3, 0.0, 0.2, 1.0, 2.5, 7.0])

#: rho'(z) of scipy.optimize.least_squares' losses (its documentation's formulas, differentiated)
DRHO = {
    "mse": lambda z: np.ones_like(z),
    "soft_l1": lambda z: 1.0 / np.sqrt(1.0 + z),
    "huber": lambda z: np.where(z <= 1.0, 1.0, 1.0 / np.sqrt(np.maximum(z, 1.0))),
    "cauchy": lambda z: 1.0 / (1.0 + z),
}


@pytest.mark.parametrize("name", LEAST_SQUARES_LOSSES)
def test_gradients_are_finite_at_zero_residuals_and_equal_the_closed_form(name):
    # d/dr s² ρ((r/s)²) = 2 r ρ'(z); at r = 0 it is 0 (padding and held-out points have r = 0)
    scale = 1.5
    r = torch.tensor(R, requires_grad=True)
    pointwise_loss(name, scale)(r).sum().backward()
    np.testing.assert_allclose(r.grad.numpy(), 2.0 * R * DRHO[name]((R / scale) ** 2), rtol=1e-13, atol=0)

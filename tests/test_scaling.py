"""Whitening of the gradient solvers' parameters: well-determined directions equalised, null ones left alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradfit
from gradfit.scaling import SINGULAR_FLOOR, whitening


def test_whitening_equalises_the_determined_directions():
    rng = np.random.default_rng(0)
    jac = torch.as_tensor(rng.normal(size=(30, 3)) * [1.0, 10.0, 0.1])
    p = whitening(jac, 2.0)
    np.testing.assert_allclose((p.T @ (jac.T @ jac / 30) @ p).numpy(), 4.0 * np.eye(3), atol=1e-12)


def test_whitening_leaves_a_direction_the_data_do_not_determine_at_the_scale_of_the_largest():
    column = torch.linspace(1.0, 3.0, 20, dtype=torch.float64)
    jac = torch.stack([column, 2.0 * column], 1)  # rank 1: (2, -1) changes nothing
    p = whitening(jac, 1.0)
    largest = torch.linalg.svdvals(jac / 20**0.5)[0]
    null = torch.tensor([2.0, -1.0], dtype=torch.float64) / 5**0.5
    determined = torch.tensor([1.0, 2.0], dtype=torch.float64) / 5**0.5
    assert float(torch.linalg.norm(p @ null)) == pytest.approx(1.0 / float(largest), rel=1e-12)  # not 1/(floor·largest)
    assert float(torch.linalg.norm(p @ determined)) == pytest.approx(1.0 / float(largest), rel=1e-12)
    ill = torch.stack([column, 2.0 * column + 1e-6 * column**2], 1)  # determined, barely: floored, amplified
    s = torch.linalg.svdvals(ill / 20**0.5)
    assert float(torch.linalg.matrix_norm(whitening(ill, 1.0), ord=2)) == pytest.approx(1.0 / max(float(s[1]), SINGULAR_FLOOR * float(s[0])), rel=1e-6)


def test_gradient_descent_on_a_model_with_a_redundant_parameter_converges_and_says_so():
    # a*sqrt(k*t): only a*sqrt(k) is determined; Adam in whitened coordinates used to race along the
    # undetermined direction (amplified 1/SINGULAR_FLOOR times) into overflow within three epochs
    t = np.linspace(0.5, 4.0, 12)
    result = gradfit.fit("a*sqrt(k*t)", {"t": t}, 2.0 * np.sqrt(0.7 * t), params={"a": 1.0, "k": 1.0}, solver="gradient")
    assert result.success and result.status == "max_epochs"
    assert result.params["a"] * np.sqrt(result.params["k"]) == pytest.approx(2.0 * np.sqrt(0.7), rel=1e-6)
    assert any("cannot be determined" in w for w in result.warnings)


def test_column_scaling_is_diagonal_and_gives_each_parameter_the_output_spread():
    import torch

    from gradfit.scaling import column_scaling

    t = torch.linspace(0, 1, 50, dtype=torch.float64)
    jac = torch.stack([t, 1e6 * torch.ones_like(t), torch.zeros_like(t)], 1)  # a, b, and a parameter with no effect
    p = column_scaling(jac, 2.0)
    assert torch.equal(p, torch.diag(torch.diagonal(p)))
    rms = torch.linalg.vector_norm(jac @ p, dim=0) / 50**0.5
    torch.testing.assert_close(rms[:2], torch.full((2,), 2.0, dtype=torch.float64))
    assert float(p[2, 2]) == pytest.approx(2.0 / 1e6, rel=1e-12)  # no effect: the largest column's scale, not an amplified one

"""Batched LM / GN against independent references: numpy lstsq, scipy curve_fit and least_squares."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import curve_fit, least_squares

from gradfit.errors import ModelError, OptionError
from gradfit.solvers.least_squares import (
    LeastSquaresOptions,
    Status,
    autograd_jacobian,
    damped_coefficients,
    decompose,
    robust_system,
    solve_least_squares,
    step_from_coefficients,
    trust_region_damping,
    update_radius,
)

X = np.linspace(0.0, 4.0, 25)
TRUE = np.array([2.5, 1.3, 0.4])
NOISE = np.random.default_rng(0).normal(0.0, 0.05, X.size)
Y = TRUE[0] * np.exp(-TRUE[1] * X) + TRUE[2] + NOISE


def decay_residuals(x: np.ndarray, y: np.ndarray):
    """Residual function for K exponential decays; ``x``, ``y`` are ``(n,)`` or ``(K, n)``."""
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)

    def residual_fn(theta: torch.Tensor) -> torch.Tensor:
        return theta[:, 0:1] * torch.exp(-theta[:, 1:2] * xt) + theta[:, 2:3] - yt

    def jacobian_fn(theta: torch.Tensor) -> torch.Tensor:
        e = torch.exp(-theta[:, 1:2] * xt) * torch.ones_like(yt)
        return torch.stack([e, -theta[:, 0:1] * xt * e, torch.ones_like(e)], -1)

    return residual_fn, jacobian_fn


def decay_np(x, a, k, c):
    return a * np.exp(-k * x) + c


START = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64)  # torch functions: torch starts


def test_linear_model_matches_numpy_lstsq():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(40, 4))
    b = rng.normal(size=40)
    at, bt = torch.as_tensor(a), torch.as_tensor(b)
    sol = solve_least_squares(lambda th: th @ at.T - bt, torch.zeros(1, 4, dtype=torch.float64))
    expected = np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(sol.theta[0].numpy(), expected, rtol=1e-12, atol=1e-13)
    assert sol.status[0].converged
    np.testing.assert_allclose(2 * sol.cost[0].item(), np.sum((a @ expected - b) ** 2), rtol=1e-12)


@pytest.mark.parametrize("use_jacobian", [False, True])
def test_exponential_decay_matches_curve_fit(use_jacobian):
    residual_fn, jacobian_fn = decay_residuals(X, Y)
    sol = solve_least_squares(residual_fn, START, jacobian_fn=jacobian_fn if use_jacobian else None)
    popt, _ = curve_fit(decay_np, X, Y, p0=START[0].numpy(), xtol=1e-15, ftol=1e-15, gtol=1e-15, maxfev=10000)
    np.testing.assert_allclose(sol.theta[0].numpy(), popt, rtol=1e-8)
    assert sol.status[0].converged
    assert sol.theta.dtype == torch.float64 and sol.theta.shape == (1, 3)
    assert sol.residuals.shape == (1, X.size) and sol.jacobian.shape == (1, X.size, 3)
    np.testing.assert_allclose(sol.residuals[0].numpy(), decay_np(X, *sol.theta[0].numpy()) - Y, atol=1e-13)


def test_autograd_jacobian_equals_closed_form():
    residual_fn, jacobian_fn = decay_residuals(X, np.stack([Y, 2 * Y]))
    theta = torch.tensor([[2.0, 1.1, 0.3], [-1.0, 0.2, 4.0]], dtype=torch.float64)
    res, jac = autograd_jacobian(residual_fn, theta)
    torch.testing.assert_close(res, residual_fn(theta), rtol=0, atol=0)
    torch.testing.assert_close(jac, jacobian_fn(theta), rtol=1e-14, atol=1e-14)


def test_autograd_jacobian_of_parameter_free_and_unused_parameters_is_zero():
    y = torch.ones(1, 5, dtype=torch.float64)
    _, jac = autograd_jacobian(lambda th: y * 1.0 + 0 * th[:, :1].detach(), torch.ones(1, 2, dtype=torch.float64))
    assert torch.all(jac == 0)
    _, jac = autograd_jacobian(lambda th: th[:, :1] * y, torch.ones(1, 2, dtype=torch.float64))
    assert torch.all(jac[..., 0] == 1) and torch.all(jac[..., 1] == 0)


def test_batch_equals_single_solves():
    rng = np.random.default_rng(2)
    k = 6
    truth = np.column_stack([rng.uniform(1, 3, k), rng.uniform(0.5, 2, k), rng.uniform(-1, 1, k)])
    ys = np.array([decay_np(X, *t) + rng.normal(0, 0.05, X.size) for t in truth])
    starts = START.repeat(k, 1)
    batch = solve_least_squares(decay_residuals(X, ys)[0], starts)
    for i in range(k):
        single = solve_least_squares(decay_residuals(X, ys[i])[0], starts[i : i + 1])
        np.testing.assert_allclose(batch.theta[i].numpy(), single.theta[0].numpy(), rtol=1e-10, atol=1e-12)
        assert batch.status[i] == single.status[0]
        assert int(batch.n_iter[i]) == int(single.n_iter[0])


@pytest.mark.parametrize(("loss", "bounds"), [("linear", None), ("cauchy", None), ("linear", (0.0, 1.2))])
def test_fits_still_running_go_on_alone_with_the_same_arithmetic(monkeypatch, loss, bounds):
    # starts near and far: most fits finish in a few iterations, some need many, and the batch
    # shrinks to those (several times); each fit must end exactly as in a batch that never shrinks
    import gradfit.solvers.least_squares as lsq

    rng = np.random.default_rng(4)
    k = 40
    truth = np.column_stack([rng.uniform(1, 3, k), rng.uniform(0.5, 1.1, k), rng.uniform(-1, 1, k)])
    ys = np.array([decay_np(X, *t) + rng.normal(0, 0.05, X.size) for t in truth])
    starts = np.where(np.arange(k)[:, None] % 5 == 0, truth * [30.0, 8.0, -20.0], truth * 1.05)
    residual_fn, jacobian_fn = decay_residuals(X, ys)
    lower, upper = (None, None) if bounds is None else ([-np.inf, bounds[0], -np.inf], [np.inf, bounds[1], np.inf])

    def solve():
        return solve_least_squares(residual_fn, torch.as_tensor(starts), jacobian_fn=jacobian_fn, loss=loss, lower=lower, upper=upper)

    shrunk = []
    rows_of = lsq._rows_of
    monkeypatch.setattr(lsq, "_rows_of", lambda state, rows: shrunk.append(rows.size) or rows_of(state, rows))
    shrinking = solve()
    monkeypatch.setattr(lsq, "COMPACT_BELOW", 0.0)
    whole = solve()
    assert len(shrunk) >= 2 and shrunk[0] <= k // 2  # the batch did shrink, more than once
    assert shrinking.status == whole.status and torch.equal(shrinking.n_iter, whole.n_iter)
    for name in ("theta", "residuals", "jacobian", "cost"):
        assert torch.equal(getattr(shrinking, name), getattr(whole, name)), name


def test_a_rows_function_evaluates_only_the_fits_still_running_and_changes_no_result(monkeypatch):
    import gradfit.solvers.least_squares as lsq

    rng = np.random.default_rng(5)
    k = 60
    truth = np.column_stack([rng.uniform(1, 3, k), rng.uniform(0.5, 1.1, k), rng.uniform(-1, 1, k)])
    ys = np.array([decay_np(X, *t) + rng.normal(0, 0.05, X.size) for t in truth])
    starts = np.where(np.arange(k)[:, None] % 7 == 0, truth * [30.0, 8.0, -20.0], truth * 1.05)
    asked = []

    def functions(y):  # numpy residuals and Jacobian of the decays whose data are y (m, n)
        def combined(theta):
            e = np.exp(-theta[:, 1:2] * X)
            res = theta[:, 0:1] * e + theta[:, 2:3] - y
            return res, np.stack([e, -theta[:, 0:1] * X * e, np.ones_like(e)], -1)
        return {"residual_and_jacobian_fn": combined}

    def rows_fn(rows):
        asked.append(rows)
        return functions(ys[rows])

    alone = solve_least_squares(None, starts, **functions(ys), rows_fn=rows_fn, loss="soft_l1", f_scale=0.05)
    monkeypatch.setattr(lsq, "COMPACT_BELOW", 0.0)
    whole = solve_least_squares(None, starts, **functions(ys), loss="soft_l1", f_scale=0.05)
    assert len(asked) >= 2 and all(np.isin(later, earlier).all() for earlier, later in zip(asked, asked[1:]))
    assert alone.status == whole.status and np.array_equal(alone.n_iter, whole.n_iter)
    np.testing.assert_allclose(alone.theta, whole.theta, rtol=1e-12)
    np.testing.assert_allclose(alone.jacobian, whole.jacobian, rtol=1e-12, atol=1e-300)


def test_a_nan_fit_does_not_disturb_the_others():
    rng = np.random.default_rng(3)
    ys = np.array([decay_np(X, 2.0, 1.0, 0.5) + rng.normal(0, 0.05, X.size) for _ in range(3)])
    xt, yt = torch.as_tensor(X), torch.as_tensor(ys)

    def residual_fn(theta):  # fit 1 is log of a negative number everywhere: NaN from the start
        base = theta[:, 0:1] * torch.exp(-theta[:, 1:2] * xt) + theta[:, 2:3] - yt
        poison = torch.log(torch.tensor([1.0, -1.0, 1.0], dtype=theta.dtype))[:, None]
        return base + poison

    starts = START.repeat(3, 1)
    batch = solve_least_squares(residual_fn, starts)
    assert batch.status[1] is Status.NON_FINITE and not batch.status[1].converged
    assert "not finite at the starting values" in batch.status[1].value
    for i in (0, 2):
        alone = solve_least_squares(decay_residuals(X, ys[i])[0], START)
        np.testing.assert_allclose(batch.theta[i].numpy(), alone.theta[0].numpy(), rtol=1e-10)
        assert batch.status[i].converged
    assert not batch.success


def test_non_finite_trial_steps_are_rejected_not_accepted():
    # sqrt(k) is NaN for k < 0: big steps that cross zero must be rejected, the fit still converges
    xt = torch.as_tensor(X)
    yt = torch.as_tensor(np.sqrt(0.05) * X + 1.0)

    def residual_fn(theta):
        return torch.sqrt(theta[:, 0:1]) * xt + theta[:, 1:2] - yt

    sol = solve_least_squares(residual_fn, [[4.0, 0.0]])
    assert sol.status[0].converged
    np.testing.assert_allclose(sol.theta[0].numpy(), [0.05, 1.0], rtol=1e-9)
    assert torch.isfinite(sol.residuals).all()


def test_fixed_parameters_never_move():
    residual_fn, _ = decay_residuals(X, Y)
    start = torch.tensor([[1.0, 0.5, 0.25]], dtype=torch.float64)
    sol = solve_least_squares(residual_fn, start, fixed=[False, False, True])
    assert sol.theta[0, 2].item() == 0.25
    popt, _ = curve_fit(lambda x, a, k: decay_np(x, a, k, 0.25), X, Y, p0=[1.0, 0.5], xtol=1e-15, ftol=1e-15)
    np.testing.assert_allclose(sol.theta[0, :2].numpy(), popt, rtol=1e-8)
    assert sol.status[0].converged


def test_all_parameters_fixed_is_converged_and_unchanged():
    residual_fn, _ = decay_residuals(X, Y)
    sol = solve_least_squares(residual_fn, START, fixed=True)
    np.testing.assert_array_equal(sol.theta.numpy(), START.numpy())
    assert sol.status[0].converged and int(sol.n_iter[0]) == 0


@pytest.mark.parametrize(
    ("lower", "upper"),
    [([0.0, 1.5, -np.inf], [np.inf, 5.0, np.inf]), ([0.0, 0.0, 0.6], [2.0, 5.0, 1.0]), ([-10, -10, -10], [10, 10, 10])],
)
def test_bounds_match_scipy_trf(lower, upper):
    residual_fn, jacobian_fn = decay_residuals(X, Y)
    sol = solve_least_squares(residual_fn, [[1.0, 2.0, 0.7]], lower=lower, upper=upper)
    ref = least_squares(
        lambda p: decay_np(X, *p) - Y, [1.0, 2.0, 0.7], bounds=(lower, upper), method="trf", xtol=1e-15, ftol=1e-15, gtol=1e-15
    )
    assert sol.status[0].converged, sol.status[0]
    theta = sol.theta[0].numpy()
    assert np.all(theta >= np.array(lower)) and np.all(theta <= np.array(upper))
    np.testing.assert_allclose(theta, ref.x, rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(sol.at_bound[0].numpy(), ref.active_mask != 0)
    assert sol.cost[0].item() <= ref.cost * (1 + 1e-10)


def test_start_outside_bounds_is_moved_inside():
    residual_fn, _ = decay_residuals(X, Y)
    sol = solve_least_squares(residual_fn, [[5.0, 9.0, 0.5]], lower=[0, 0, 0], upper=[3, 3, 3])
    assert sol.status[0].converged
    assert torch.all(sol.theta >= 0) and torch.all(sol.theta <= 3)


@pytest.mark.parametrize("loss", ["huber", "soft_l1", "cauchy"])
@pytest.mark.parametrize("f_scale", [0.1, 1.0])
def test_robust_losses_match_scipy(loss, f_scale):
    y = Y.copy()
    y[[3, 11, 19]] += np.array([2.0, -1.5, 3.0])  # outliers
    residual_fn, _ = decay_residuals(X, y)
    sol = solve_least_squares(residual_fn, START, loss=loss, f_scale=f_scale)
    ref = least_squares(
        lambda p: decay_np(X, *p) - y, START[0].numpy(), loss=loss, f_scale=f_scale, method="trf", xtol=1e-15, ftol=1e-15, gtol=1e-15
    )
    assert sol.status[0].converged
    np.testing.assert_allclose(sol.theta[0].numpy(), ref.x, rtol=1e-7)
    np.testing.assert_allclose(sol.cost[0].item(), ref.cost, rtol=1e-10)


def test_robust_system_is_scipys_rescaling():
    rng = np.random.default_rng(4)
    r = rng.normal(size=(1, 7)) * 3
    j = rng.normal(size=(1, 7, 2))
    for loss in ("huber", "soft_l1", "cauchy"):
        # scipy: cost = ½ Σ ρ, gradient = Jᵀ (ρ' r); the rescaled system must give the same gradient
        r_t, j_t = robust_system(loss, r, j, 1.5)
        z = (r / 1.5) ** 2
        from gradfit.solvers.least_squares import robust_rho

        rho1 = robust_rho(loss, z)[1]
        np.testing.assert_allclose(np.swapaxes(j_t, 1, 2) @ r_t[..., None], np.swapaxes(j, 1, 2) @ (rho1 * r)[..., None], rtol=1e-13)


def test_gauss_newton_method_matches_lm():
    residual_fn, _ = decay_residuals(X, Y)
    lm = solve_least_squares(residual_fn, START)
    gn = solve_least_squares(residual_fn, START, method="gn")
    assert gn.status[0].converged
    np.testing.assert_allclose(gn.theta.numpy(), lm.theta.numpy(), rtol=1e-9)


def test_iteration_limit_never_reports_convergence():
    residual_fn, _ = decay_residuals(X, Y)
    sol = solve_least_squares(residual_fn, [[1.0, 5.0, -3.0]], options=LeastSquaresOptions(max_iter=2, restarts=0))
    assert sol.status[0] is Status.MAX_ITER
    assert not sol.status[0].converged and not sol.success
    assert "iteration limit" in sol.message[0] and "max_iter" in sol.message[0]
    assert int(sol.n_iter[0]) == 2


def test_model_independent_of_parameters_is_singular():
    y = torch.ones(1, 5, dtype=torch.float64)
    sol = solve_least_squares(lambda th: y - 2.0 + 0.0 * th[:, :1], [[1.0]], options=LeastSquaresOptions(restarts=0))
    assert sol.status[0] is Status.SINGULAR and not sol.status[0].converged


def test_exact_fit_reports_zero_residuals():
    xt = torch.as_tensor(X)
    sol = solve_least_squares(lambda th: th[:, 0:1] * xt - 2.0 * xt, [[2.0]])
    assert sol.status[0] is Status.EXACT and sol.status[0].converged


def test_restarts_rescue_a_far_start():
    # BoxBOD-like: from b = (1, 100) exp(-b x) is flat at zero; restarts from jittered points recover
    x = torch.tensor([1.0, 2.0, 3.0, 5.0, 7.0, 10.0], dtype=torch.float64)
    y = torch.tensor([109.0, 149.0, 149.0, 191.0, 213.0, 224.0], dtype=torch.float64)
    fn = lambda th: th[:, 0:1] * (1 - torch.exp(-th[:, 1:2] * x)) - y  # noqa: E731
    without = solve_least_squares(fn, [[1.0, 100.0]], options=LeastSquaresOptions(restarts=0))
    with_restarts = solve_least_squares(fn, [[1.0, 100.0]])
    assert with_restarts.status[0].converged
    np.testing.assert_allclose(with_restarts.theta[0].numpy(), [213.80940889, 0.54723748542], rtol=1e-8)
    assert with_restarts.cost[0] < without.cost[0]


def test_float32_is_respected():
    residual_fn, _ = decay_residuals(X.astype(np.float32), Y.astype(np.float32))
    sol = solve_least_squares(residual_fn, START.to(torch.float32))
    assert sol.theta.dtype == torch.float32 and sol.jacobian.dtype == torch.float32
    popt, _ = curve_fit(decay_np, X, Y, p0=START[0].numpy())
    np.testing.assert_allclose(sol.theta[0].numpy(), popt, rtol=2e-4)
    assert sol.status[0].converged


def test_vector_start_counts_as_one_fit():
    residual_fn, _ = decay_residuals(X, Y)
    sol = solve_least_squares(residual_fn, START[0])
    assert sol.theta.shape == (1, 3)


def test_bad_arguments_are_clear_errors():
    residual_fn, _ = decay_residuals(X, Y)
    with pytest.raises(OptionError, match="loss"):
        solve_least_squares(residual_fn, START, loss="l1")
    with pytest.raises(OptionError, match="method"):
        solve_least_squares(residual_fn, START, method="bfgs")
    with pytest.raises(OptionError, match="f_scale"):
        solve_least_squares(residual_fn, START, f_scale=0.0)
    with pytest.raises(ModelError, match="lower bound"):
        solve_least_squares(residual_fn, START, lower=[1, 1, 1], upper=[0, 0, 0])
    with pytest.raises(ModelError, match="broadcast"):
        solve_least_squares(residual_fn, START, lower=[1, 1])
    with pytest.raises(ModelError, match=r"\(K, n\)"):
        solve_least_squares(lambda th: th.sum(), START)
    with pytest.raises(ModelError, match=r"\(K, n, p\)"):
        solve_least_squares(residual_fn, START, jacobian_fn=lambda th: th)
    with pytest.raises(ModelError, match="theta0"):
        solve_least_squares(residual_fn, np.zeros((0, 3)))
    with pytest.raises(OptionError, match="max_iter"):
        LeastSquaresOptions(max_iter=0)
    with pytest.raises(OptionError, match="ftol"):
        LeastSquaresOptions(ftol=-1.0)


def numpy_decay(x, y):
    """``residual_and_jacobian_fn`` of the decay model on numpy arrays (no torch)."""

    def combined(theta):
        a, k, c = theta[:, 0:1], theta[:, 1:2], theta[:, 2:3]
        e = np.exp(-k * x)
        return a * e + c - y, np.stack([e, -a * x * e, np.ones_like(e)], -1)

    return combined


def test_numpy_functions_give_the_torch_answer_as_numpy():
    rng = np.random.default_rng(21)
    ys = np.array([decay_np(X, 2.0, 1.0, 0.5) + rng.normal(0, 0.05, X.size) for _ in range(3)])
    starts = START.numpy().repeat(3, axis=0)
    on_numpy = solve_least_squares(None, starts, residual_and_jacobian_fn=numpy_decay(X, ys))
    on_torch = solve_least_squares(decay_residuals(X, ys)[0], START.repeat(3, 1))
    assert isinstance(on_numpy.theta, np.ndarray) and isinstance(on_numpy.converged, np.ndarray)
    np.testing.assert_allclose(on_numpy.theta, on_torch.theta.numpy(), rtol=1e-10)
    assert on_numpy.status == on_torch.status and on_numpy.converged.all()
    assert on_numpy.jacobian.shape == (3, X.size, 3) and on_numpy.n_iter.dtype == np.int64


def test_numpy_functions_need_a_jacobian():
    with pytest.raises(ModelError, match="Jacobian"):
        solve_least_squares(lambda th: th @ np.ones((3, 4)), START.numpy())


def test_status_values_are_messages_and_codes_are_stable():
    assert Status.CONVERGED.value.startswith("converged")
    assert all(not s.value.startswith("converged") for s in Status if not s.converged)
    assert [s.code for s in Status] == list(range(len(Status)))


# ------------------------------------------------------------------------------ pure functions


def _random_decomposition(rng, k=3, n=9, p=4):
    jac = rng.normal(size=(k, n, p)) * np.array([1.0, 10.0, 0.01, 3.0])
    res = rng.normal(size=(k, n))
    return jac, res, decompose(jac, res, np.zeros((k, p)))


def test_damped_step_solves_the_regularised_normal_equations():
    rng = np.random.default_rng(5)
    jac, res, dec = _random_decomposition(rng)
    lam = np.array([0.0, 0.3, 7.0])
    step = step_from_coefficients(dec, damped_coefficients(dec, lam))
    for i in range(3):
        d2 = np.diag(dec.d[i] ** 2)
        expected = np.linalg.solve(jac[i].T @ jac[i] + lam[i] * d2, -jac[i].T @ res[i])
        np.testing.assert_allclose(step[i], expected, rtol=1e-9)


def test_trust_region_damping_hits_the_radius():
    rng = np.random.default_rng(6)
    _, _, dec = _random_decomposition(rng)
    radius = 0.05 * dec.gn_norm
    lam = trust_region_damping(dec, radius, np.zeros(3))
    norm = np.linalg.norm(damped_coefficients(dec, lam), axis=-1)
    np.testing.assert_allclose(norm, radius, rtol=0.1)
    big = trust_region_damping(dec, 10 * dec.gn_norm, np.ones(3))
    assert np.all(big == 0)


def test_each_fits_damping_is_what_it_would_be_alone():
    # fits that reach the radius early stop iterating, whatever the others still need
    rng = np.random.default_rng(6)
    jac, res, dec = _random_decomposition(rng)
    radius = dec.gn_norm * np.array([0.9, 0.05, 1e-4])  # near, far and very far inside the GN step
    together = trust_region_damping(dec, radius, np.zeros(3))
    for i in range(3):
        alone = decompose(jac[i : i + 1], res[i : i + 1], np.zeros((1, jac.shape[-1])))
        assert trust_region_damping(alone, radius[i : i + 1], np.zeros(1))[0] == together[i]


def test_radius_update_rules():
    radius, norm = np.array([1.0, 1.0, 1.0, 1.0]), np.array([0.5, 0.5, 1.0, 1.0])
    ratio = np.array([0.1, -np.inf, 0.9, 0.5])
    out = update_radius(radius, norm, ratio, np.array([1.0, 1.0, 1.0, 1.0]))
    np.testing.assert_allclose(out, [0.25, 0.25, 2.0, 1.0])


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    a=st.floats(1.0, 5.0),
    k=st.floats(0.5, 3.0),
    c=st.floats(-2.0, 2.0),
    seed=st.integers(0, 10_000),
)
def test_never_worse_than_scipy_on_random_decays(a, k, c, seed):
    rng = np.random.default_rng(seed)
    y = decay_np(X, a, k, c) + rng.normal(0, 0.1, X.size)
    residual_fn, _ = decay_residuals(X, y)
    sol = solve_least_squares(residual_fn, START)
    ref = least_squares(
        lambda p: decay_np(X, *p) - y, START[0].numpy(), method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=100_000
    )
    assert sol.status[0].converged
    assert sol.cost[0].item() <= ref.cost * (1 + 1e-9)
    assert math.isfinite(sol.cost[0].item())


def test_optimum_at_infinity_is_not_reported_as_converged():
    # a nearly straight decay: a -> inf, k -> 0, c -> -inf keeps lowering the cost (a line fits best)
    rng = np.random.default_rng(7162)
    y = decay_np(X, 0.5, 0.203125, -0.625) + rng.normal(0, 0.1, X.size)
    residual_fn, _ = decay_residuals(X, y)
    sol = solve_least_squares(residual_fn, START, options=LeastSquaresOptions(restarts=1))
    ref = least_squares(lambda p: decay_np(X, *p) - y, START[0].numpy(), method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert sol.status[0] is Status.MAX_ITER and not sol.success
    assert sol.cost[0].item() <= ref.cost * (1 + 1e-9)
    line = np.polyfit(X, y, 1)
    assert 2 * sol.cost[0].item() >= np.sum((np.polyval(line, X) - y) ** 2) * (1 - 1e-6)


# --------------------------------------------------------------------------- linear least squares


def test_linear_least_squares_matches_lstsq_and_batches():
    from gradfit.solvers.least_squares import linear_least_squares

    rng = np.random.default_rng(8)
    a = rng.normal(size=(2, 30, 4)) * np.array([1.0, 1e3, 1e-3, 10.0])
    b = rng.normal(size=(2, 30))
    sol = linear_least_squares(a, b)
    for k in range(2):
        expected = np.linalg.lstsq(a[k], b[k], rcond=None)[0]
        np.testing.assert_allclose(sol.theta[k], expected, rtol=1e-10)
        res = a[k] @ expected - b[k]
        cov = np.linalg.inv(a[k].T @ a[k]) * (res @ res) / (30 - 4)
        np.testing.assert_allclose(sol.covariance()[k], cov, rtol=1e-9)
    assert sol.rank.tolist() == [4, 4]
    scaled = a / np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(sol.condition, [np.linalg.cond(m) for m in scaled], rtol=1e-10)
    from_tensors = linear_least_squares(torch.as_tensor(a), torch.as_tensor(b))  # tensors are read too
    np.testing.assert_array_equal(from_tensors.theta, sol.theta)


def test_polynomial_least_squares_matches_weighted_polyfit():
    from gradfit.solvers.least_squares import polynomial_least_squares

    rng = np.random.default_rng(9)
    x = np.linspace(-3.0, 5.0, 40)
    sigma = 0.1 + 0.05 * np.abs(x)
    y = 1 - 2 * x + 0.3 * x**2 + 0.01 * x**3 + rng.normal(0, 1, x.size) * sigma
    sol = polynomial_least_squares(x, y, 3, weights=1 / sigma)
    coef, cov = np.polyfit(x, y, 3, w=1 / sigma, cov="unscaled")
    np.testing.assert_allclose(sol.theta[0], coef[::-1], rtol=1e-12)
    np.testing.assert_allclose(sol.covariance(absolute_sigma=True)[0], cov[::-1, ::-1], rtol=1e-10)
    np.testing.assert_allclose(sol.residuals[0], (np.polyval(coef, x) - y) / sigma, atol=1e-12)


def test_problem_on_torch_is_the_same_problem_as_tensors():
    import gradfit
    from gradfit.fitting import _problem, prepare

    model, data = prepare("a*exp(-k*x) + c", {"x": X}, Y, sigma=0.1 + 0 * X)
    problem = _problem(model, data, None, gradfit.FitOptions(dtype="float32"))
    tensors = problem.on_torch()
    assert tensors is problem.on_torch()  # built once
    assert tensors.train.y.dtype == torch.float32 and tensors.free.dtype == torch.bool
    np.testing.assert_array_equal(tensors.train.inputs["x"].numpy(), problem.train.inputs["x"])
    np.testing.assert_array_equal(tensors.train.weights.numpy(), problem.train.weights)
    np.testing.assert_array_equal(tensors.theta0.numpy(), problem.theta0)


@pytest.mark.parametrize("method", ["lm", "gn"])
@pytest.mark.parametrize("batched", [False, True])
def test_noise_free_data_converges_at_the_truth(method, batched):
    # data computed in another order than the model: the residuals at the truth are rounding errors,
    # not zeros, and no step can lower them; that is convergence, not a stall
    rng = np.random.default_rng(4)
    truth = np.column_stack([rng.uniform(1, 3, 12), rng.uniform(0.3, 1.5, 12), rng.uniform(-1, 1, 12)])
    for block in [truth] if batched else np.split(truth, len(truth)):
        y = block[:, [2]] + np.exp(-X * block[:, [1]]) * block[:, [0]]
        sol = solve_least_squares(decay_residuals(X, y)[0], START.expand(len(block), 3).clone(), method=method)
        assert all(status.converged for status in sol.status), sol.status
        np.testing.assert_allclose(sol.theta.numpy(), block, rtol=1e-9)


# ------------------------------------------- parameters that move by many orders of magnitude


def _power_law() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.logspace(0.0, 6.0, 30)
    y = 2.5e-3 * x**1.7 * np.exp(0.03 * rng.standard_normal(30))
    optimum, _ = curve_fit(lambda x, a, b: a * x**b, x, y, p0=[2.5e-3, 1.7])
    return x, y, optimum


@pytest.mark.parametrize("start", [(1e-20, 4.0), (1e-3, 10.0), (1e-3, 40.0)])
def test_a_power_law_from_a_start_decades_away_reaches_the_optimum_and_says_so(start):
    # the column of a shrinks by 1e10-1e50 on the way: Moré's scale remembered its largest norm, so
    # the SVD dropped a's direction and the fit stopped 1400 times above the optimum ("singular"),
    # or reached the optimum and was relabelled singular, or stopped 1.6e4 times above it "converged"
    import gradfit

    x, y, optimum = _power_law()
    result = gradfit.fit("a*x**b", {"x": x}, y, params={"a": start[0], "b": start[1]})
    assert result.status == "converged" and result.success
    np.testing.assert_allclose(result.values, optimum, rtol=1e-6)


def test_a_rate_constant_from_a_start_thirteen_decades_off_is_converged_not_singular():
    # A grows from 1 to 1e13 and its column shrinks by as much: it still moves the model (A·∂f/∂A = f)
    import gradfit

    rng = np.random.default_rng(5)
    temperature = np.linspace(280.0, 400.0, 15)
    rate = 1e13 * np.exp(-8e4 / (8.314 * temperature)) * np.exp(0.02 * rng.standard_normal(15))
    optimum, _ = curve_fit(lambda t, a, e: a * np.exp(-e / (8.314 * t)), temperature, rate, p0=[1.0, 1.0])
    result = gradfit.fit("A*exp(-Ea/(8.314*T))", {"T": temperature}, rate, params={"A": 1.0, "Ea": 1.0})
    assert result.status == "converged" and result.success
    np.testing.assert_allclose(result.values, optimum, rtol=1e-7)


def test_a_start_where_an_exponential_is_huge_is_not_called_converged_far_from_the_minimum():
    # from k = 1, exp(500 k) ~ 1e217: the remembered scale hid k, and "converged" came back with
    # c = -3e14 and a sum of squares of 7e31 (the minimum's is 2.6)
    import gradfit

    t = np.linspace(0.0, 500.0, 40)
    y = 2.0 * np.exp(-t / 100.0) + 0.1
    reference = least_squares(lambda p: np.exp(p[0] * t) + p[1] - y, [-0.01, 0.0], method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    result = gradfit.fit("exp(k*t) + c", {"t": t}, y)
    assert result.status == "converged"
    assert result.train_loss == pytest.approx(np.mean(reference.fun**2), rel=1e-12)
    np.testing.assert_allclose(result.values, reference.x, rtol=1e-6)


@pytest.mark.parametrize("options", [{}, {"starts": 3}, {"bounds": "c>=-10"}, {"solver": "gn"}])
def test_a_large_residual_fit_whose_gauss_newton_steps_overshoot_converges(options):
    # the model cannot fit the data (amplitude 1 for 2), and its residual curvature makes full
    # Gauss-Newton steps overshoot 2.6-fold: taking every step the rounding noise of the cost let
    # through, the fit wandered around the minimum for 1000 iterations and reported max_iter
    import gradfit

    t = np.linspace(0.0, 500.0, 40)
    y = 2.0 * np.exp(-t / 100.0) + 0.1
    result = gradfit.fit("exp(k*t) + c", {"t": t}, y, params={"k": -0.0080915, "c": 0.2634}, **options)
    assert result.status == "converged" and result.iterations < 200
    k, c = result.values
    residuals = np.exp(k * t) + c - y
    jacobian = np.column_stack([t * np.exp(k * t), np.ones_like(t)])
    cosines = np.abs(jacobian.T @ residuals) / (np.linalg.norm(jacobian, axis=0) * np.linalg.norm(residuals))
    assert cosines.max() < 1e-10  # a stationary point to rounding (it wandered at 1e-7)


def test_parameters_at_scales_beyond_1e154_do_not_overflow_the_solver():
    # the trust region's ‖Dθ‖ was a sum of Python float squares: OverflowError
    import gradfit

    x = np.linspace(1.0, 10.0, 20)
    result = gradfit.fit("a*exp(-x/b)", {"x": x}, 1e200 * np.exp(-x / 1e180), params={"a": 1e200, "b": 1e180})
    # b is not determined (exp(-x/1e180) is 1 to rounding): its column is zero from the start, a
    # parameter the data never saw — converged, with the warning and an infinite standard error
    assert result.status == "converged" and result.stderr["b"] == np.inf
    assert any(w.startswith("parameter b cannot be determined") for w in result.warnings)


def test_a_small_parameter_above_a_bound_of_zero_is_not_at_the_bound():
    # a baseline of 0.1 pA, 16 standard errors above c >= 0, was flagged "at a bound" (1e-12 absolute)
    import gradfit

    rng = np.random.default_rng(7)
    t = np.linspace(0.0, 5e-9, 50)
    y = 2e-12 * np.exp(-t / 1.3e-9) + 1e-13 + 2e-14 * rng.standard_normal(50)
    start = {"a": 1e-12, "k": 1e9, "c": 1e-14}
    result = gradfit.fit("a*exp(-k*t) + c", {"t": t}, y, params=start, bounds="c>=0")
    optimum, _ = curve_fit(lambda t, a, k, c: a * np.exp(-k * t) + c, t, y, p0=[2e-12, 7.7e8, 1e-13])
    assert not any(p.at_bound for p in result.parameters) and not result.warnings
    np.testing.assert_allclose(result.values, optimum, rtol=1e-5)
    pinned = gradfit.fit("a*exp(-k*t) + c", {"t": t}, y - 2e-13, params=start, bounds="c>=0")
    assert [p.name for p in pinned.parameters if p.at_bound] == ["c"] and pinned.params["c"] == 0.0


class _Stop(Exception):
    pass


def test_on_iteration_runs_before_each_batch_iteration_and_can_abandon_the_solve():
    y = np.stack([Y, 2 * Y, Y + 1])
    residual_fn, jacobian_fn = decay_residuals(X, y)
    start = START.repeat(3, 1)
    calls: list[int] = []
    solution = solve_least_squares(residual_fn, start, jacobian_fn=jacobian_fn, on_iteration=lambda: calls.append(1))
    assert all(s.converged for s in solution.status) and len(calls) == int(solution.n_iter.max())

    def stop() -> None:
        raise _Stop

    with pytest.raises(_Stop):
        solve_least_squares(residual_fn, start, jacobian_fn=jacobian_fn, on_iteration=stop)


@pytest.mark.parametrize("formula", ["sqrt(a*x)", "(a*x)**0.5"])
def test_a_square_root_model_fits_data_that_include_x_zero(formula):
    """d sqrt(a*x)/da at x = 0 was 0 * inf = NaN: the fit ended non_finite whatever its start."""
    import gradfit

    x = np.linspace(0.0, 4.0, 21)
    y = np.sqrt(2.5 * x) + 0.02 * np.random.default_rng(3).normal(size=21)
    result = gradfit.fit(formula, {"x": x}, y)
    optimum, covariance = curve_fit(lambda x, a: np.sqrt(a * x), x, y, p0=[1.0])
    assert result.status == "converged"
    np.testing.assert_allclose(result.values, optimum, rtol=1e-7)
    np.testing.assert_allclose(result.stderr["a"], np.sqrt(covariance[0, 0]), rtol=1e-5)


def _michaelis_menten(seed: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 5.0, 40)
    return t, 4.0 * t / (1.2 + t) + 0.05 * np.random.default_rng(seed).normal(size=40)


@pytest.mark.parametrize("seed", [0, 11, 23])
def test_a_fit_that_converges_worse_than_a_constant_is_restarted_and_reaches_the_optimum(seed):
    """vmax*t/(km + t) from (1, 1): the second trial crosses the pole at km = -t and converges
    there, at R² = -2.3 ("converged", no warning), for every noise seed; curve_fit reaches the optimum."""
    import gradfit

    t, y = _michaelis_menten(seed)
    result = gradfit.fit("vmax*t/(km+t)", {"t": t}, y)
    optimum, covariance = curve_fit(lambda t, v, k: v * t / (k + t), t, y, p0=[1.0, 1.0])
    assert result.status == "converged" and not result.warnings
    np.testing.assert_allclose(result.values, optimum, rtol=1e-7)
    np.testing.assert_allclose([result.stderr["vmax"], result.stderr["km"]], np.sqrt(np.diag(covariance)), rtol=1e-5)


def test_a_fit_left_worse_than_a_constant_says_it_may_be_a_local_minimum():
    import gradfit

    t, y = _michaelis_menten(11)
    capped = gradfit.fit("vmax*t/(km+t)", {"t": t}, y, max_iter=100)  # a cap turns the restarts off
    assert capped.status == "converged" and capped.statistics["r2"] < 0
    assert any(w.startswith("the fit is worse than a constant (R² = -2.29): if the model can follow") for w in capped.warnings)
    line = gradfit.fit("a*x", {"x": np.arange(5.0)}, 10.0 - np.arange(5.0))  # exact: a global minimum, however poor
    assert line.statistics["r2"] < 0 and not any("worse than a constant" in w for w in line.warnings)


def test_flat_cost_is_the_best_constant_models_cost_with_weights_and_padding():
    from gradfit.solvers.least_squares import flat_cost

    y = np.array([[1.0, 2.0, 4.0, 99.0]])
    w = np.array([[1.0, 2.0, 0.5, 0.0]])  # the last point is padding
    mean = np.average(y[0, :3], weights=w[0, :3] ** 2)
    np.testing.assert_allclose(flat_cost(y, w), [0.5 * np.sum(w[0, :3] ** 2 * (y[0, :3] - mean) ** 2)], rtol=1e-15)
    np.testing.assert_allclose(flat_cost(np.array([1.0, 3.0])), [1.0], rtol=1e-15)

"""The fused batched LM against independent references: numpy linear algebra and scipy least_squares."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from gradfit.errors import ModelError, OptionError
from gradfit.model import make_model
from gradfit.solvers.batched import (
    CONVERGED,
    MAX_ITER,
    NON_FINITE,
    SINGULAR,
    STATUS_NAMES,
    BatchedOptions,
    cholesky_packed,
    formula_system,
    normal_covariance_diagonal,
    solve_batched,
    solve_linear_batched,
)

DECAY = make_model("a*exp(-k*t) + c", ["t"])
GAUSS = make_model("a*exp(-((x-x0)**2+(y-y0)**2)/(2*s**2)) + b", ["x", "y"])
T = np.linspace(0.0, 5.0, 20)


def decay_data(k: int, seed: int = 0, noise: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.column_stack([rng.uniform(1, 3, k), rng.uniform(0.3, 1.5, k), rng.uniform(-1, 1, k)])
    y = truth[:, [0]] * np.exp(-truth[:, [1]] * T) + truth[:, [2]] + noise * rng.standard_normal((k, T.size))
    return truth, y


def decay_inputs(y: np.ndarray) -> dict[str, torch.Tensor]:
    return {"t": torch.as_tensor(np.broadcast_to(T, y.shape).copy()), "__y": torch.as_tensor(y)}


def scipy_decay(y: np.ndarray, start: np.ndarray, free: tuple[bool, ...] = (True, True, True), bounds=None) -> np.ndarray:
    """scipy's MINPACK LM (or TRF with bounds) with the exact Jacobian, to tight tolerances."""
    free_index = [j for j, f in enumerate(free) if f]

    def full(theta):
        values = np.array(start, dtype=float)
        values[free_index] = theta
        return values

    def residuals(theta):
        a, k, c = full(theta)
        return a * np.exp(-k * T) + c - y

    def jacobian(theta):
        a, k, c = full(theta)
        e = np.exp(-k * T)
        return np.column_stack([e, -a * T * e, np.ones_like(e)])[:, free_index]

    options = {"method": "lm"} if bounds is None else {"method": "trf", "bounds": bounds, "x_scale": "jac"}
    fit = least_squares(residuals, np.asarray(start)[free_index], jac=jacobian, xtol=1e-15, ftol=1e-15, gtol=1e-15, **options)
    return full(fit.x)


# ----------------------------------------------------------------------------- small linear algebra


def _packed(matrices: np.ndarray) -> torch.Tensor:
    q = matrices.shape[-1]
    return torch.as_tensor(np.stack([matrices[:, i, j] for i in range(q) for j in range(i + 1)]))


def test_unrolled_cholesky_solves_like_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 7, 4))
    spd = a.transpose(0, 2, 1) @ a
    b = rng.normal(size=(50, 4))
    augmented = np.zeros((50, 5, 5))
    augmented[:, :4, :4], augmented[:, 4, :4] = spd, b
    factor, inverse, ok = cholesky_packed(_packed(augmented), 4, 1e-14, augmented=True)
    lower = np.linalg.cholesky(spd)
    assert ok.all()
    for i in range(4):
        np.testing.assert_allclose(1.0 / inverse[i].numpy(), lower[:, i, i], rtol=1e-12)
        for j in range(i):
            np.testing.assert_allclose(factor[(i, j)].numpy(), lower[:, i, j], rtol=1e-10, atol=1e-12)
    z = np.linalg.solve(lower, b[..., None])[..., 0]  # forward substitution for free
    np.testing.assert_allclose(np.stack([factor[(4, j)].numpy() for j in range(4)], -1), z, rtol=1e-10, atol=1e-12)


def test_covariance_diagonal_and_condition_bound_match_numpy():
    rng = np.random.default_rng(2)
    jac = rng.normal(size=(30, 12, 3)) * np.array([1.0, 1e3, 1e-2])  # badly scaled units
    jtj = jac.transpose(0, 2, 1) @ jac
    diagonal, condition = normal_covariance_diagonal(torch.as_tensor(jtj))
    np.testing.assert_allclose(diagonal.numpy(), np.diagonal(np.linalg.inv(jtj), axis1=1, axis2=2), rtol=1e-11)
    d = 1.0 / np.sqrt(np.diagonal(jtj, axis1=1, axis2=2))
    exact = np.linalg.cond(jtj * d[:, :, None] * d[:, None, :])
    assert np.all(condition.numpy() >= exact * (1 - 1e-12)) and np.all(condition.numpy() <= 9 * exact)


def test_singular_normal_matrix_gives_infinite_variances():
    jac = np.ones((2, 6, 2))  # two identical columns
    jac[1, :, 1] = np.arange(6.0)
    diagonal, condition = normal_covariance_diagonal(torch.as_tensor(jac.transpose(0, 2, 1) @ jac))
    assert np.all(np.isinf(diagonal[0].numpy())) and math.isinf(condition[0].item())
    assert np.all(np.isfinite(diagonal[1].numpy())) and math.isfinite(condition[1].item())


# ---------------------------------------------------------------------------------------- solutions


def test_exponential_decays_match_scipy_and_their_standard_errors_match_numpy():
    truth, y = decay_data(40)
    start = np.tile([1.0, 1.0, 0.0], (40, 1))
    sol = solve_batched(formula_system(DECAY, [True] * 3), torch.as_tensor(start), decay_inputs(y))
    assert sol.converged.all()
    theta = sol.theta.numpy()
    for i in range(0, 40, 7):
        np.testing.assert_allclose(theta[i], scipy_decay(y[i], start[i]), rtol=1e-8)
    e = np.exp(-theta[:, [1]] * T)
    jac = np.stack([e, -theta[:, [0]] * T * e, np.ones_like(e)], -1)
    residuals = theta[:, [0]] * e + theta[:, [2]] - y
    s2 = (residuals**2).sum(-1) / (T.size - 3)
    cov = np.linalg.inv(jac.transpose(0, 2, 1) @ jac) * s2[:, None, None]
    np.testing.assert_allclose(sol.inverse_diagonal.numpy() * s2[:, None], np.diagonal(cov, axis1=1, axis2=2), rtol=1e-9)
    np.testing.assert_allclose(sol.chisqr.numpy(), (residuals**2).sum(-1), rtol=1e-10)


def test_gpufit_settings_on_the_2d_gaussian_converge_within_ten_iterations():
    rng = np.random.default_rng(3)
    k = 200
    truth = np.column_stack([rng.uniform(500, 1000, k), rng.uniform(1.5, 2.5, k), rng.uniform(1.5, 2.5, k),
                             rng.uniform(0.8, 1.2, k), rng.uniform(5, 15, k)])
    x, y = np.tile(np.arange(5.0), 5), np.repeat(np.arange(5.0), 5)
    mean = truth[:, [0]] * np.exp(-((x - truth[:, [1]]) ** 2 + (y - truth[:, [2]]) ** 2) / (2 * truth[:, [3]] ** 2)) + truth[:, [4]]
    z = rng.poisson(mean).astype(float)
    start = truth * (1 + rng.uniform(-0.1, 0.1, truth.shape))
    data = {"x": torch.as_tensor(np.tile(x, (k, 1))), "y": torch.as_tensor(np.tile(y, (k, 1))), "__y": torch.as_tensor(z)}
    options = BatchedOptions(max_iter=10, ftol=1e-4, xtol=1e-4)
    sol = solve_batched(formula_system(GAUSS, [True] * 5), torch.as_tensor(start), data, options=options)
    assert sol.converged.all() and int(sol.n_iter.max()) <= 10
    tight = solve_batched(formula_system(GAUSS, [True] * 5), torch.as_tensor(start), data)
    assert tight.converged.all()
    # tolerance 1e-4 on the Gauss-Newton gain: within a few % of a standard error of the optimum
    stderr = np.sqrt(tight.inverse_diagonal.numpy() * tight.chisqr.numpy()[:, None] / 20)
    assert np.all(np.abs(sol.theta.numpy() - tight.theta.numpy()) <= 0.1 * stderr)

    def residuals(theta, i):
        return theta[0] * np.exp(-((x - theta[1]) ** 2 + (y - theta[2]) ** 2) / (2 * theta[3] ** 2)) + theta[4] - z[i]

    def jacobian(theta, i):
        e = np.exp(-((x - theta[1]) ** 2 + (y - theta[2]) ** 2) / (2 * theta[3] ** 2))
        r2, s2 = (x - theta[1]) ** 2 + (y - theta[2]) ** 2, theta[3] ** 2
        return np.column_stack([e, theta[0] * e * (x - theta[1]) / s2, theta[0] * e * (y - theta[2]) / s2,
                                theta[0] * e * r2 / (s2 * theta[3]), np.ones_like(e)])

    for i in range(0, k, 41):  # MINPACK with the exact Jacobian (scipy's default TRF stops a little early)
        reference = least_squares(residuals, start[i], jac=jacobian, args=(i,), method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15).x
        difference = np.abs(tight.theta[i].numpy() - reference)
        assert np.all(difference <= 1e-8 * np.abs(reference) + 1e-6 * stderr[i])


def test_results_do_not_depend_on_the_other_fits_in_the_batch():
    truth, y = decay_data(37, seed=4)
    start = torch.as_tensor(np.tile([1.0, 1.0, 0.0], (37, 1)))
    system = formula_system(DECAY, [True] * 3)
    whole = solve_batched(system, start, decay_inputs(y), options=BatchedOptions(block=8))
    part = solve_batched(system, start[5:19], {k: v[5:19] for k, v in decay_inputs(y).items()}, options=BatchedOptions(block=5))
    assert torch.equal(whole.theta[5:19], part.theta)
    assert torch.equal(whole.n_iter[5:19], part.n_iter)


def test_fixed_parameters_keep_their_values():
    truth, y = decay_data(5, seed=5)
    start = np.tile([1.0, 1.0, 0.25], (5, 1))
    sol = solve_batched(formula_system(DECAY, [True, True, False]), torch.as_tensor(start), decay_inputs(y), free=[True, True, False])
    assert sol.converged.all() and torch.all(sol.theta[:, 2] == 0.25) and sol.inverse_diagonal.shape == (5, 2)
    for i in range(5):  # a large-residual fit (c is wrong): Gauss-Newton converges linearly, MINPACK stops early
        np.testing.assert_allclose(sol.theta[i].numpy(), scipy_decay(y[i], start[i], free=(True, True, False)), rtol=1e-7)


def test_bounds_are_respected_and_an_active_bound_matches_scipy():
    truth, y = decay_data(6, seed=6)
    start = np.tile([1.0, 0.2, 0.0], (6, 1))
    upper = [np.inf, 0.25, np.inf]  # below every true rate: the bound is active
    sol = solve_batched(formula_system(DECAY, [True] * 3), torch.as_tensor(start), decay_inputs(y),
                        lower=[-np.inf, 0.0, -np.inf], upper=upper)
    assert sol.converged.all()
    np.testing.assert_array_equal(sol.theta[:, 1].numpy(), 0.25)
    for i in range(6):
        reference = scipy_decay(y[i], start[i], bounds=([-np.inf, 0.0, -np.inf], upper))
        np.testing.assert_allclose(sol.theta[i].numpy(), reference, rtol=1e-8)


def test_weights_and_padding():
    truth, y = decay_data(4, seed=7)
    sigma = np.random.default_rng(7).uniform(0.01, 0.05, y.shape)
    mask = np.ones_like(y)
    mask[1, 15:] = 0.0  # group 1 has 15 points; its padding holds garbage that must not count
    y_padded = np.where(mask > 0, y, 1e6)
    data = {**decay_inputs(y_padded), "__w": torch.as_tensor(mask / sigma)}
    start = np.tile([1.0, 1.0, 0.0], (4, 1))
    sol = solve_batched(formula_system(DECAY, [True] * 3), torch.as_tensor(start), data)
    for i in range(4):
        keep = mask[i] > 0

        def residuals(theta, i=i, keep=keep):
            return (theta[0] * np.exp(-theta[1] * T[keep]) + theta[2] - y[i, keep]) / sigma[i, keep]

        reference = least_squares(residuals, start[i], xtol=1e-15, ftol=1e-15, gtol=1e-15).x
        np.testing.assert_allclose(sol.theta[i].numpy(), reference, rtol=1e-8)


# --------------------------------------------------------------------------------------- statuses


def _exp_system(theta: torch.Tensor, data: dict) -> list[torch.Tensor]:
    """``a·exp(b·t)`` by hand (non-finite for large b·t), to steer the statuses."""
    t, y = data["t"], data["__y"]
    e = torch.exp(theta[1][:, None] * t)
    return [e, theta[0][:, None] * t * e, theta[0][:, None] * e - y]


def test_statuses_are_honest():
    t = torch.linspace(0, 1, 10, dtype=torch.float64).expand(4, 10)
    y = 2.0 * torch.exp(-1.0 * t)
    start = torch.tensor([[1.0, 0.0], [1.0, 800.0], [0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    sol = solve_batched(_exp_system, start, {"t": t, "__y": y}, options=BatchedOptions(max_iter=30))
    names = sol.status_names()
    assert names[0] == "converged" and names[3] == "converged"
    assert sol.code[1] == NON_FINITE  # exp(800) overflows at the start
    assert sol.code[2] == SINGULAR or names[2] == "converged"  # a = 0: the rate does not matter at first
    capped = solve_batched(_exp_system, start[:1], {"t": t[:1], "__y": y[:1]}, options=BatchedOptions(max_iter=1))
    assert capped.code[0] == MAX_ITER and int(capped.n_iter[0]) == 1
    np.testing.assert_allclose(sol.theta[0].numpy(), [2.0, -1.0], rtol=1e-10)


def test_zero_jacobian_is_singular_and_flat_valley_stops():
    t = torch.linspace(0, 1, 8, dtype=torch.float64).expand(2, 8)

    def system(theta, data):  # both parameters enter only as a sum: JᵀJ is singular everywhere
        ones = torch.ones_like(data["t"])
        return [ones * 0.0, ones * 0.0, (theta[0] + theta[1])[:, None] - data["__y"]] if data["zero"] else \
            [ones, ones, (theta[0] + theta[1])[:, None] * ones - data["__y"]]

    zero = solve_batched(lambda th, d: system(th, {**d, "zero": True}), torch.ones(2, 2, dtype=torch.float64), {"t": t, "__y": t})
    assert (zero.code == SINGULAR).all() and int(zero.n_iter.max()) == 0
    flat = solve_batched(lambda th, d: system(th, {**d, "zero": False}), torch.ones(2, 2, dtype=torch.float64), {"t": t, "__y": 3.0 + 0.1 * t})
    assert (flat.code == SINGULAR).all() and torch.isinf(flat.inverse_diagonal).all()
    np.testing.assert_allclose(flat.theta.sum(-1).numpy(), 3.05, rtol=1e-9)  # the valley's floor: the mean


def test_non_finite_trials_are_rejected():
    t = torch.linspace(0, 10, 12, dtype=torch.float64)[None]
    y = 3.0 * torch.exp(0.5 * t)
    calls = []

    def system(theta, data):
        rows = _exp_system(theta, data)
        calls.append(bool(torch.isfinite(theta).all()))
        bad = theta[1] > 0.6  # the model "overflows" beyond b = 0.6
        return [torch.where(bad[:, None], math.nan, r) for r in rows]

    sol = solve_batched(system, torch.tensor([[1.0, 0.58]], dtype=torch.float64), {"t": t, "__y": y})
    assert sol.code[0] == CONVERGED
    np.testing.assert_allclose(sol.theta[0].numpy(), [3.0, 0.5], rtol=1e-9)


def test_float32_runs_and_reaches_single_precision():
    truth, y = decay_data(20, seed=8)
    data = {k: v.float() for k, v in decay_inputs(y).items()}
    start = torch.tensor(np.tile([1.0, 1.0, 0.0], (20, 1)), dtype=torch.float32)
    sol = solve_batched(formula_system(DECAY, [True] * 3), start, data, options=BatchedOptions(ftol=1e-8, xtol=1e-5))
    assert sol.theta.dtype == torch.float32 and sol.converged.float().mean() >= 0.9
    ref = solve_batched(formula_system(DECAY, [True] * 3), start.double(), decay_inputs(y))
    ok = sol.converged.numpy()
    np.testing.assert_allclose(sol.theta.numpy()[ok], ref.theta.numpy()[ok], rtol=2e-3, atol=2e-3)


def test_bad_arguments():
    with pytest.raises(OptionError):
        BatchedOptions(max_iter=-1)
    with pytest.raises(OptionError):
        BatchedOptions(ftol=-1.0)
    truth, y = decay_data(2)
    with pytest.raises(ModelError):
        solve_batched(formula_system(DECAY, [True] * 3), torch.ones(3, 3, dtype=torch.float64), decay_inputs(y))
    with pytest.raises(ModelError):
        solve_batched(formula_system(DECAY, [True] * 3), torch.ones(2, 3, dtype=torch.float64), decay_inputs(y), lower=[0, 0, 2], upper=[1, 1, 1])
    with pytest.raises(ModelError):
        formula_system(DECAY, [True, True])
    assert STATUS_NAMES[CONVERGED] == "converged"


@pytest.mark.gpu
def test_same_code_on_cuda():
    truth, y = decay_data(64, seed=9)
    start = torch.as_tensor(np.tile([1.0, 1.0, 0.0], (64, 1)))
    cpu = solve_batched(formula_system(DECAY, [True] * 3), start, decay_inputs(y))
    gpu = solve_batched(formula_system(DECAY, [True] * 3), start.cuda(), {k: v.cuda() for k, v in decay_inputs(y).items()})
    assert gpu.theta.is_cuda and gpu.converged.all()
    np.testing.assert_allclose(gpu.theta.cpu().numpy(), cpu.theta.numpy(), rtol=1e-8)
    np.testing.assert_allclose(gpu.inverse_diagonal.cpu().numpy(), cpu.inverse_diagonal.numpy(), rtol=1e-8)


def test_linear_models_are_solved_by_their_normal_equations_in_one_step():
    rng = np.random.default_rng(11)
    k, t = 40, np.linspace(-2.0, 3.0, 15)
    y = rng.normal(size=(k, 1)) * t**2 + rng.normal(size=(k, 1)) * t + rng.normal(size=(k, 1)) + 0.1 * rng.standard_normal((k, t.size))
    y[7] = 0.0 * t  # zero data: still a fine least-squares problem
    model = make_model("w2*t**2 + w1*t + w0", ["t"])
    system = formula_system(model, [True, True, True])
    data = {"t": torch.as_tensor(np.broadcast_to(t, y.shape).copy()), "__y": torch.as_tensor(y)}
    start = torch.as_tensor(rng.normal(size=(k, 3)))  # any start: one Gauss-Newton step is exact
    solution = solve_linear_batched(system, start, data)
    assert (solution.code == CONVERGED).all() and (solution.n_iter == 1).all()
    design = np.column_stack([t**2, t, np.ones_like(t)])
    for i in range(k):
        expected, *_ = np.linalg.lstsq(design, y[i], rcond=None)
        np.testing.assert_allclose(solution.theta[i].numpy(), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(solution.inverse_diagonal[0].numpy(), np.diag(np.linalg.inv(design.T @ design)), rtol=1e-10)
    alone = solve_linear_batched(system, start[5:9], {name: v[5:9] for name, v in data.items()})
    assert torch.equal(alone.theta, solution.theta[5:9])  # a fit does not depend on its neighbours


def test_a_singular_linear_group_is_reported_not_solved():
    model = make_model("a*t + b*t", ["t"])  # a and b cannot be told apart
    system = formula_system(model, [True, True])
    t = torch.linspace(0, 1, 8, dtype=torch.float64).expand(2, 8).clone()
    solution = solve_linear_batched(system, torch.zeros(2, 2, dtype=torch.float64), {"t": t, "__y": 2 * t})
    assert (solution.code == SINGULAR).all()


def test_noise_free_data_converges_at_the_truth():
    # the data's arithmetic differs from the model's (another order of operations, numpy's exp):
    # the residuals at the truth are rounding errors that no step can lower — converged, not stalled
    truth, _ = decay_data(300, seed=5)
    y = truth[:, [2]] + np.exp(-T * truth[:, [1]]) * truth[:, [0]]
    start = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64).expand(300, 3)
    sol = solve_batched(formula_system(DECAY, [True] * 3), start, decay_inputs(y), options=BatchedOptions(max_iter=100))
    assert set(sol.status_names()) == {"converged"}
    np.testing.assert_allclose(sol.theta.numpy(), truth, rtol=1e-9)


class _Stop(Exception):
    pass


def test_on_iteration_is_called_every_iteration_and_what_it_raises_abandons_the_solve():
    _, y = decay_data(30)
    start = torch.as_tensor(np.tile([1.0, 1.0, 0.0], (30, 1)))
    calls: list[int] = []
    solution = solve_batched(formula_system(DECAY, [True] * 3), start, decay_inputs(y), on_iteration=lambda: calls.append(1))
    assert len(calls) == int(solution.n_iter.max()) + 1  # every iteration, and the last one that stops

    def stop_at_the_third() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise _Stop

    calls.clear()
    with pytest.raises(_Stop):
        solve_batched(formula_system(DECAY, [True] * 3), start, decay_inputs(y), on_iteration=stop_at_the_third)

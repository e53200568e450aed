"""gradfit.fit end to end against independent references: numpy lstsq/polyfit and scipy curve_fit."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import gradfit
from gradfit.errors import DataError, ModelError, OptionError


def test_default_linear_fit_is_the_least_squares_solution(thermometer):
    t_u, t_c = thermometer
    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c)
    expected, *_ = np.linalg.lstsq(np.column_stack([t_u, np.ones_like(t_u)]), t_c, rcond=None)
    np.testing.assert_allclose(result.values, expected, rtol=1e-8)
    assert result.solver == "linear" and "linear in its parameters" in result.solver_reason
    assert result.success and result.status == "converged"


def test_default_polynomial_fit_equals_polyfit():
    rng = np.random.default_rng(0)
    x = np.linspace(-2, 3, 30)
    y = 0.5 * x**3 - x**2 + 2 * x - 1 + 0.1 * rng.standard_normal(x.size)
    result = gradfit.fit("a3*x**3 + a2*x**2 + a1*x + a0", x, y)
    np.testing.assert_allclose(result.values, np.polyfit(x, y, 3), rtol=1e-8)


def test_multi_input_linear_model_from_a_polars_frame():
    rng = np.random.default_rng(1)
    frame = pl.DataFrame({"u": rng.normal(size=50), "v": rng.normal(size=50), "label": ["a"] * 50})
    frame = frame.with_columns((2 * pl.col("u") - 3 * pl.col("v") + 0.5 + 0.01 * pl.Series(rng.normal(size=50))).alias("z"))
    result = gradfit.fit("p*u + q*v + c", frame, "z")
    design = np.column_stack([frame["u"].to_numpy(), frame["v"].to_numpy(), np.ones(50)])
    expected, *_ = np.linalg.lstsq(design, frame["z"].to_numpy(), rcond=None)
    np.testing.assert_allclose(result.values, expected, rtol=1e-8)
    assert result.input_names == ("u", "v")


def test_nonlinear_formula_matches_curve_fit():
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(2)
    t = np.linspace(0, 5, 40)
    y = 3.0 * np.exp(-0.7 * t) + 0.5 + 0.02 * rng.standard_normal(t.size)
    result = gradfit.fit("a*exp(-k*t) + c", {"t": t}, y, params={"a": 1.0, "k": 1.0, "c": 0.0})
    popt, pcov = curve_fit(lambda t, a, k, c: a * np.exp(-k * t) + c, t, y, p0=[1.0, 1.0, 0.0])
    np.testing.assert_allclose(result.values, popt, rtol=1e-7)
    np.testing.assert_allclose([result.stderr[n] for n in "akc"], np.sqrt(np.diag(pcov)), rtol=1e-5)
    assert result.solver == "lm"


def test_a_saturating_model_written_with_minimum_matches_curve_fit():
    from scipy.optimize import curve_fit

    rng = np.random.default_rng(3)
    x = np.linspace(0.0, 4.0, 60)
    y = np.minimum(2.0 * x + 0.3, 5.0) + 0.05 * rng.standard_normal(x.size)
    result = gradfit.fit("minimum(a*x + b, c)", x, y, params={"a": 1.0, "b": 0.0, "c": 4.0})
    expected, cov = curve_fit(lambda x, a, b, c: np.minimum(a * x + b, c), x, y, p0=[1.0, 0.0, 4.0])
    assert result.solver == "lm" and result.status == "converged"
    np.testing.assert_allclose(result.values, expected, rtol=1e-7)
    np.testing.assert_allclose(list(result.stderr.values()), np.sqrt(np.diag(cov)), rtol=1e-5)
    floor = gradfit.fit("a*maximum(x, 1) + b", x, y)  # linear in a and b: one exact solve
    design = np.column_stack([np.maximum(x, 1.0), np.ones_like(x)])
    assert floor.solver == "linear"
    np.testing.assert_allclose(floor.values, np.linalg.lstsq(design, y, rcond=None)[0], rtol=1e-10)


def test_python_callable_model_reads_parameters_from_signature():
    import torch

    x = np.linspace(0.1, 4, 30)
    y = 2.0 * x / (0.8 + x)

    def michaelis(s, vmax=1.0, km=1.0):
        return vmax * s / (km + s)

    result = gradfit.fit(michaelis, x, y)
    assert result.param_names == ("vmax", "km")
    np.testing.assert_allclose(result.values, [2.0, 0.8], rtol=1e-8)
    np.testing.assert_allclose(result.predict(x), y, rtol=1e-8)
    assert isinstance(michaelis(torch.ones(1), 1.0, 1.0), torch.Tensor)


def test_torch_module_is_trained_by_gradient_descent():
    import torch

    torch.manual_seed(0)
    x = np.linspace(-2, 2, 64)
    y = np.tanh(2 * x)
    net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    result = gradfit.fit(net, x, y, epochs=1500, optimizer_options={"lr": 0.02})
    assert result.solver == "gradient" and result.model_kind == "module"
    assert result.train_loss < 0.01 * np.var(y)
    np.testing.assert_allclose(result.predict(x), y, atol=0.15)


def test_a_float32_module_stays_float32_and_keeps_its_training():
    """The fit runs in float64, but the user's module ends in its own dtype: calling it on float32
    tensors afterwards works, and without scaling it predicts what the result predicts."""
    import torch

    torch.manual_seed(0)
    x = np.linspace(-2, 2, 64)
    y = 0.5 * x + 1.0
    net = torch.nn.Linear(1, 1)
    result = gradfit.fit(net, x, y, epochs=400, optimizer_options={"lr": 0.05}, scale=False)
    assert result.settings["dtype"] == "float64"
    assert all(p.dtype == torch.float32 for p in net.parameters())
    with torch.no_grad():
        direct = net(torch.tensor(x, dtype=torch.float32)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(direct, result.predict(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.predict(x), y, atol=0.05)


def test_a_module_keeps_its_dtype_when_the_fit_stops_early_or_fails():
    import torch

    x = np.linspace(0, 1, 16)
    net = torch.nn.Linear(1, 1)

    def interrupt(epoch: int, *_: object) -> None:
        if epoch == 3:
            raise KeyboardInterrupt

    assert gradfit.fit(net, x, 2 * x, epochs=50, callback=interrupt).status == "interrupted"
    assert next(net.parameters()).dtype == torch.float32

    def fail(epoch: int, *_: object) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        gradfit.fit(net, x, 2 * x, epochs=50, callback=fail)
    assert next(net.parameters()).dtype == torch.float32


@pytest.mark.parametrize("user_mode", ["train", "eval"])
def test_a_module_trains_in_training_mode_and_is_evaluated_in_evaluation_mode(user_mode):
    """Dropout and batch norm act while training only: validation, statistics and predictions use the
    module as ``module.eval()`` has it, and the module ends in the mode the user gave it."""
    import torch

    torch.manual_seed(0)
    x, x_val = np.linspace(-2, 2, 40), np.linspace(-1.9, 1.9, 9)
    net = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.BatchNorm1d(16), torch.nn.Tanh(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 1))
    getattr(net, user_mode)()
    result = gradfit.fit(net, x, np.sin(x), epochs=200, scale=False, val_data=(x_val, np.sin(x_val)))
    assert all(m.training == (user_mode == "train") for m in net.modules())
    net.eval()
    with torch.no_grad():
        direct = net(torch.tensor(x_val, dtype=torch.float32)[:, None])[:, 0].double().numpy()
    np.testing.assert_allclose(result.predict(x_val), direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.predict(x_val[:1]), direct[:1], rtol=1e-5, atol=1e-6)  # one point: no batch statistics
    assert result.val_loss == pytest.approx(np.mean((direct - np.sin(x_val)) ** 2), rel=1e-4)
    assert result.history.val[0] != result.history.val[1]  # the running statistics moved as it trained


def test_tensor_inputs_and_float32():
    import torch

    x = torch.linspace(0, 1, 20)
    y = 3 * x + 1
    result = gradfit.fit("w*x + b", x, y, dtype="float32")
    np.testing.assert_allclose(result.values, [3.0, 1.0], rtol=1e-5)


def test_fixed_parameter_keeps_its_value(thermometer):
    t_u, t_c = thermometer
    params = [gradfit.Parameter("w", 0.5, fixed=True), gradfit.Parameter("b", 0.0)]
    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, params=params)
    assert result.params["w"] == 0.5
    assert result.params["b"] == pytest.approx(np.mean(t_c - 0.5 * t_u), rel=1e-10)


def test_explicit_validation_set_and_predict(thermometer):
    t_u, t_c = thermometer
    result = gradfit.fit("w*t_u + b", {"t_u": t_u[:8]}, t_c[:8], val_data=({"t_u": t_u[8:]}, t_c[8:]))
    assert result.n_train == 8 and result.n_val == 3
    predicted = result.predict({"t_u": t_u[8:]})
    assert result.val_loss == pytest.approx(np.mean((predicted - t_c[8:]) ** 2), rel=1e-12)


def test_a_weighted_fit_weighs_its_validation_loss_by_the_validation_sigma(thermometer):
    t_u, t_c = thermometer
    sigma = np.linspace(0.5, 2.0, t_u.size)
    train, val = {"t_u": t_u[:8]}, {"t_u": t_u[8:]}
    result = gradfit.fit("w*t_u + b", train, t_c[:8], sigma=sigma[:8], val_data=(val, t_c[8:], sigma[8:]))
    predicted = result.predict(val)
    assert result.val_loss == pytest.approx(np.mean(((predicted - t_c[8:]) / sigma[8:]) ** 2), rel=1e-12)
    assert result.train_loss == pytest.approx(np.mean(((result.predict(train) - t_c[:8]) / sigma[:8]) ** 2), rel=1e-12)
    assert not result.warnings
    unweighted = gradfit.fit("w*t_u + b", train, t_c[:8], sigma=sigma[:8], val_data=(val, t_c[8:]))
    assert any("not comparable" in w for w in unweighted.warnings)
    with pytest.raises(OptionError, match=r"val_data must be \(x, y\) or \(x, y, sigma\)"):
        gradfit.fit("w*t_u + b", train, t_c[:8], val_data=(val,))


def test_json_round_trip_predicts_without_the_model(thermometer):
    t_u, t_c = thermometer
    result = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, val=0.2)
    loaded = gradfit.FitResult.from_json(result.to_json())
    np.testing.assert_allclose(loaded.predict({"t_u": t_u}), result.predict({"t_u": t_u}), rtol=1e-12)
    assert loaded.params == result.params and loaded.history == result.history


@pytest.mark.parametrize(
    ("model", "error", "text"),
    [
        ("t_u + 1", ModelError, "no parameters"),
        (" + ".join(f"p{k}*t_u**{k}" for k in range(12)), DataError, "11 training rows for 12 parameters"),
    ],
)
def test_model_errors_are_clear(model, error, text, thermometer):
    t_u, t_c = thermometer
    with pytest.raises(error, match=text):
        gradfit.fit(model, {"t_u": t_u}, t_c)


def test_multistart_finds_the_global_optimum_from_a_poor_start():
    from scipy.optimize import curve_fit

    t = np.sort(np.random.default_rng(0).uniform(0, 10, 60))  # irregular: no aliased frequencies
    y = 2.0 * np.sin(1.7 * t) + 0.01 * np.cos(5 * t)
    single = gradfit.fit("a*sin(w*t)", {"t": t}, y, params={"a": 1.0, "w": 0.5}, starts=1)
    multi = gradfit.fit("a*sin(w*t)", {"t": t}, y, params={"a": 1.0, "w": 0.5}, starts=32)
    assert multi.train_loss <= single.train_loss
    popt, _ = curve_fit(lambda t, a, w: a * np.sin(w * t), t, y, p0=[2.1, 1.69])
    assert single.train_loss > 100 * multi.train_loss  # the single start stops in a local minimum
    np.testing.assert_allclose(np.abs(multi.values), np.abs(popt), rtol=1e-6)
    assert "best of 32 starting points" in multi.message


def test_formula_least_squares_fits_run_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, gradfit\n"
        "x = np.linspace(0, 3, 20); y = 2*np.exp(-1.3*x) + 0.5 + 0.01*np.sin(7*x)\n"
        "lm = gradfit.fit('a*exp(-k*x) + c', x, y, params={'a': 1, 'k': 1, 'c': 0})\n"
        "line = gradfit.fit('w*x + b', x, y)\n"
        "print(lm.solver, line.solver, lm.success, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["lm", "linear", "True", "False"]


def test_numpy_and_torch_evaluations_of_a_model_agree():
    import torch

    from gradfit.model import make_model

    formula = make_model("a*exp(-k*t) + c*t", ["t"])
    callable_model = make_model(lambda t, a, k, c: a * torch.exp(-k * t) + c * t, ["t"])
    t = np.linspace(0, 2, 7)
    theta = np.array([[1.5, 0.7, 0.2], [2.0, 1.1, -0.3]])
    for model in (formula, callable_model):
        on_numpy = model.predict_and_jacobian({"t": t}, theta)
        on_torch = model.predict_and_jacobian({"t": torch.tensor(t)}, torch.tensor(theta))
        assert all(isinstance(a, np.ndarray) for a in on_numpy)
        for a, b in zip(on_numpy, on_torch):
            np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-14)
        np.testing.assert_allclose(model.predict({"t": t}, theta[0]), on_numpy[0][0], rtol=1e-14)
    e = np.exp(-0.7 * t)
    np.testing.assert_allclose(on_numpy[1][0], np.column_stack([e, -1.5 * t * e, t]), rtol=1e-14)


def test_the_device_is_checked_resolved_and_recorded():
    import torch

    from gradfit.errors import OptionError

    with pytest.raises(OptionError, match="unknown device 'gpu0'"):
        gradfit.fit("w*x + b", [1.0, 2.0, 3.0], [2.0, 4.0, 6.1], device="gpu0")
    result = gradfit.fit("w*x + b", [1.0, 2.0, 3.0], [2.0, 4.0, 6.1], device="auto", solver="gradient", epochs=5)
    assert result.settings["device"] == "auto"
    if not torch.cuda.is_available():
        with pytest.raises(OptionError, match="no CUDA device"):
            gradfit.fit("w*x + b", [1.0, 2.0, 3.0], [2.0, 4.0, 6.1], device="cuda", solver="gradient", epochs=5)


def _decay_function(t, a=1.0, k=1.0, c=0.0):
    import torch

    return a * torch.exp(-k * t) + c


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("model", "options", "rtol"),
    [
        ("a*exp(-k*t) + c", {"solver": "gradient", "epochs": 300}, 1e-6),  # the compiled torch program
        (_decay_function, {"solver": "lm"}, 1e-8),  # a Python function: autograd Jacobians on the device
        (_decay_function, {"optimizer": "adam", "epochs": 300, "batch_size": 8, "val": 0.25}, 1e-6),  # minibatches
        ("mlp:4", {"epochs": 200}, 1e-5),  # a network
    ],
    ids=["formula-gradient", "callable-lm", "callable-minibatch", "mlp"],
)
def test_single_fits_on_cuda_equal_cpu(model, options, rtol):
    rng = np.random.default_rng(5)
    t = np.linspace(0.0, 4.0, 40)
    y = 2.0 * np.exp(-0.8 * t) + 0.3 + 0.01 * rng.standard_normal(t.size)
    cpu = gradfit.fit(model, {"t": t}, y, **options)
    gpu = gradfit.fit(model, {"t": t}, y, device="cuda", **options)
    assert gpu.status == cpu.status and gpu.iterations == cpu.iterations
    np.testing.assert_allclose(gpu.train_loss, cpu.train_loss, rtol=rtol)
    if cpu.parameters:
        np.testing.assert_allclose(gpu.values, cpu.values, rtol=rtol)
    np.testing.assert_allclose(gpu.predict({"t": t}), cpu.predict({"t": t}), rtol=rtol, atol=1e-9)


@pytest.mark.parametrize("solver", ["lm", "gn"])
def test_a_sum_of_squares_that_overflows_is_non_finite_not_converged(solver: str):
    """Residuals of 1e200 are finite, their squares are not: the fit must say so, never "converged"."""
    t = np.linspace(0, 5, 20)
    result = gradfit.fit("a*exp(-k*t) + c", {"t": t}, 1e200 * np.exp(-t), params={"a": 1, "k": 1, "c": 0}, solver=solver)
    assert result.status == "non_finite" and not result.success
    assert "overflow" in result.message and "rescale the data" in result.message


def test_a_constant_signal_fitted_exactly_warns_that_its_standard_errors_mean_nothing():
    t = np.linspace(0, 5, 20)
    result = gradfit.fit("a*exp(-k*t) + c", {"t": t}, np.full(20, 3.0), params={"a": 1, "k": 1, "c": 0})
    assert result.params["c"] == pytest.approx(3.0)
    assert any("residuals are exactly zero" in w for w in result.warnings)


def test_a_linear_model_undefined_on_some_points_says_where_not_huge_values(thermometer):
    """log(t_u - 40) is NaN for the three readings below 40: the exact solve must say that, and
    not blame huge values."""
    t_u, t_c = thermometer
    result = gradfit.fit("a*log(t_u - 40) + b", {"t_u": t_u}, t_c)
    assert result.solver == "linear" and result.status == "non_finite" and not result.success
    assert f"on {int((t_u <= 40).sum())} of {t_u.size} points" in result.message


def test_a_start_outside_the_bounds_moves_to_the_nearest_bound_and_finds_the_bounded_optimum():
    """k <= 0.3 with the optimum at k = 0.4: the answer sits on the bound (scipy's bounded trust
    region agrees). A start of k = 1 used to be moved to upper - 1 = -0.7, a growing exponential,
    from which the fit ran off to a spurious k -> 0, a -> -2e5 with 14 times the cost."""
    from scipy.optimize import least_squares

    rng = np.random.default_rng(0)
    x = np.linspace(0, 10, 40)
    y = 3 * np.exp(-0.4 * x) + 0.5 + 0.05 * rng.standard_normal(40)
    result = gradfit.fit("a*exp(-k*x) + c", x, y, params={"a": 1, "k": 1, "c": 0}, bounds="k<=0.3")
    reference = least_squares(lambda p: p[0] * np.exp(-p[1] * x) + p[2] - y, [1.0, 0.29, 0.0],
                              bounds=([-np.inf, -np.inf, -np.inf], [np.inf, 0.3, np.inf]), xtol=1e-15, ftol=1e-15, gtol=1e-15)
    np.testing.assert_allclose(result.values, reference.x, rtol=1e-8)
    assert result.success and next(p for p in result.parameters if p.name == "k").at_bound


def test_a_non_finite_start_reports_no_statistics_warnings_it_cannot_know():
    """The solver zeroes a non-finite fit's residuals internally: they must not read as an exact fit
    (zero residuals) or a rank-deficient Jacobian."""
    t = np.linspace(0, 5, 20)  # exp(800 t) overflows: the model is not finite at the start
    result = gradfit.fit("a*exp(-k*t) + c", {"t": t}, 2 * np.exp(-0.5 * t), params={"a": 1.0, "k": -800.0, "c": 0.0})
    assert result.status == "non_finite" and result.warnings == ()
    assert not np.isfinite(result.statistics["chisqr"])


def test_options_the_fit_cannot_honour_are_refused_in_plain_words(thermometer):
    t_u, t_c = thermometer
    data = {"t_u": t_u}
    with pytest.raises(OptionError, match="cannot keep parameters within bounds"):
        gradfit.fit("w*t_u + b", data, t_c, solver="linear", bounds={"b": (2, 3)})
    with pytest.raises(ModelError, match="fixed at 5, outside its bounds"):
        gradfit.fit("w*t_u + b", data, t_c, fix={"w": 5.0}, bounds={"w": (0, 1)})
    for bad in (0, 1.5, -2):
        with pytest.raises(OptionError, match="max_iter must be a whole number"):
            gradfit.fit("a*exp(-k*t_u) + c", data, t_c, max_iter=bad)


@pytest.mark.parametrize(
    ("model", "options", "named"),
    [
        ("w*t_u + b", {"epochs": 5000}, "linear solver \\(the model is linear in its parameters.*ignores epochs \\(--epochs\\)"),
        ("w*t_u + b", {"batch_size": 4, "patience": 3}, "ignores batch_size \\(--batch-size\\), patience .* drop them, or choose an optimizer"),
        ("w*t_u + b", {"starts": 4}, "linear solver .*ignores starts"),
        ("a*exp(-k*t_u) + c", {"scale": False, "solver": "lm"}, "lm solver \\(as asked\\), which ignores scale \\(--no-scale\\)"),
        ("a*exp(-k*t_u) + c", {"target": 1.0}, "lm solver .*ignores target"),
        ("w*t_u + b", {"optimizer": "adam", "starts": 3, "max_iter": 50}, "gradient solver .*ignores starts \\(--starts\\), max_iter .* fit with solver 'lm'"),
    ],
)
def test_a_setting_the_chosen_solver_would_ignore_is_refused_not_silently_dropped(thermometer, model, options, named):
    t_u, t_c = thermometer
    with pytest.raises(OptionError, match=named):
        gradfit.fit(model, {"t_u": t_u}, t_c, **options)


def test_settings_the_solver_reads_and_shared_settings_of_a_comparison_are_accepted(thermometer):
    t_u, t_c = thermometer
    data = {"t_u": t_u}
    assert gradfit.fit("w*t_u + b", data, t_c, optimizer="sgd", optimizer_options={"lr": 1e-4}, epochs=20, scale=False).iterations == 20
    assert gradfit.fit("w*t_u + b", data, t_c, solver="lm", starts=3, max_iter=50).success
    assert gradfit.fit("w*t_u + b", data, t_c, epochs=1000).solver == "linear"  # the default is no setting
    scores = gradfit.compare({"line": "w*t_u + b", "net": "mlp:4"}, data, t_c, val=0.3, epochs=30)
    assert scores["line"].result.solver == "linear" and scores["net"].result.iterations <= 30


def test_no_degrees_of_freedom_with_absolute_sigma_is_no_warning():
    x, y = np.array([0.0, 1.0]), np.array([1.0, 3.0])
    relative = gradfit.fit("w*x + b", x, y, sigma=[0.1, 0.1])
    absolute = gradfit.fit("w*x + b", x, y, sigma=[0.1, 0.1], absolute_sigma=True)
    assert any("no degrees of freedom" in w for w in relative.warnings)
    assert not any("no degrees of freedom" in w for w in absolute.warnings)
    np.testing.assert_allclose(absolute.covariance, [[0.02, -0.01], [-0.01, 0.01]], rtol=1e-12)


@pytest.mark.parametrize("model", ["w*t_u + b", "w*t_u + b*exp(0*t_u)"])
def test_every_parameter_fixed_evaluates_the_model_against_the_data(thermometer, model):
    """A known calibration (5/9 per degree, the °F→°C offset) checked against the readings: nothing to
    estimate, the statistics of the model as given."""
    t_u, t_c = thermometer
    result = gradfit.fit(model, {"t_u": t_u}, t_c, fix={"w": 0.5, "b": -17.0})
    residuals = 0.5 * t_u - 17.0 - t_c
    assert result.solver == "fixed" and result.success and result.iterations == 0
    assert result.params == {"w": 0.5, "b": -17.0} and result.stderr == {"w": None, "b": None}
    assert result.statistics["r2"] == pytest.approx(1 - residuals @ residuals / np.sum((t_c - t_c.mean()) ** 2), rel=1e-12)
    assert result.train_loss == pytest.approx(np.mean(residuals**2), rel=1e-12)


def test_a_python_function_that_works_along_the_data_sees_one_fit_at_a_time():
    """cumsum(a*x, 0) and x / x[0] run along the points: the function must see scalar parameters
    and 1-D columns (it saw (1, 1) parameters, summed over the batch and still said converged)."""
    import torch
    from scipy.optimize import curve_fit

    x = np.linspace(0.1, 2, 20)
    y = 3 * np.cumsum(x) + 1 + 0.01 * np.random.default_rng(0).standard_normal(20)

    def integrated(x, a=1.0, b=0.0):
        return torch.cumsum(a * x, 0) + b

    def relative(x, a=1.0, b=0.0):
        return a * x / x[0] + b

    for function, numpy_version in ((integrated, lambda x, a, b: np.cumsum(a * x) + b), (relative, lambda x, a, b: a * x / x[0] + b)):
        result = gradfit.fit(function, x, y)
        expected, _ = curve_fit(numpy_version, x, y, p0=[1.0, 0.0])
        assert result.success
        np.testing.assert_allclose(result.values, expected, rtol=1e-6)
        np.testing.assert_allclose(result.predict(x), numpy_version(x, *result.values), rtol=1e-12)


def test_an_ill_conditioned_polynomial_reports_intervals_and_warnings_that_agree_with_its_errors():
    # a cubic in x near 1e4: the monomial design is numerically singular, the centred basis is not.
    # Reference: the fit in u = x - x0, its covariance mapped to monomial coefficients (c = A c').
    from math import comb

    from scipy import stats as scipy_stats

    x0 = 1e4
    u = np.linspace(0.0, 1.0, 40)
    x, y = x0 + u, np.cos(3 * u) + 1e-3 * np.sin(7 * (x0 + u))
    result = gradfit.fit("c3*x**3 + c2*x**2 + c1*x + c0", x, y)
    design = np.vander(u, 4)  # u³, u², u, 1
    _, ssr, *_ = np.linalg.lstsq(design, y, rcond=None)
    cov_u = ssr[0] / (u.size - 4) * np.linalg.inv(design.T @ design)
    # c_k (power k of x) = Σ_j c'_j comb(j, k) (-x0)^(j-k), ordered high power first
    powers = [3, 2, 1, 0]
    a = np.array([[comb(j, k) * (-x0) ** (j - k) if j >= k else 0.0 for j in powers] for k in powers])
    stderr = np.sqrt(np.diag(a @ cov_u @ a.T))
    np.testing.assert_allclose([result.stderr[n] for n in ("c3", "c2", "c1", "c0")], stderr, rtol=1e-6)
    t = scipy_stats.t.ppf(0.975, u.size - 4)
    for p, se in zip(result.parameters, stderr):
        assert p.ci_low == pytest.approx(p.value - t * se, rel=1e-6) and p.ci_high == pytest.approx(p.value + t * se, rel=1e-6)
    assert not any("cannot be determined" in w for w in result.warnings)
    assert any("ill-conditioned" in w for w in result.warnings)  # strongly correlated monomials: true


def test_a_polynomial_with_no_degrees_of_freedom_has_infinite_variances_as_a_line_does():
    quadratic = gradfit.fit("a*x**2 + b*x + c", [0.0, 1.0, 2.0], [2.0, 0.1, 0.0])
    line = gradfit.fit("a*x + b", [0.0, 1.0], [2.0, 0.1])
    assert np.isinf(np.diag(quadratic.covariance)).all() and np.isinf(np.diag(line.covariance)).all()


def test_statistics_stay_counts_when_the_sum_of_squares_overflows():
    x = np.linspace(0, 10, 20)
    result = gradfit.fit("a*x + b", x, (2 * x + 1 + np.sin(x)) * 1e156)
    assert (result.statistics["n_points"], result.statistics["dof"], result.statistics["n_params"]) == (20, 18, 2)


@pytest.mark.parametrize("scale", [1e-150, 1e-100, 1e100, 1e150])
def test_a_fit_is_equivariant_under_extreme_scales_of_its_data_and_parameters(scale):
    # a*exp(-k*x) + c on (x·s, y·s) is the unscaled fit with a·s, k/s, c·s: squares of the
    # Jacobian's entries under- or overflow at these scales, its column norms must not
    rng = np.random.default_rng(0)
    x = np.linspace(0, 4, 25)
    y = 3 * np.exp(-0.7 * x) + 0.5 + rng.normal(0, 0.1, 25)
    start = {"a": 1.0, "k": 1.0, "c": 0.0}
    plain = gradfit.fit("a*exp(-k*x) + c", x, y, params=start)
    factors = np.array([scale, 1 / scale, scale])
    scaled = gradfit.fit("a*exp(-k*x) + c", x * scale, y * scale, params=dict(zip("akc", factors * [1.0, 1.0, 0.0])))
    assert scaled.status == "converged"
    np.testing.assert_allclose(scaled.values / factors, plain.values, rtol=1e-7)
    np.testing.assert_allclose([scaled.stderr[n] for n in "akc"] / factors, [plain.stderr[n] for n in "akc"], rtol=1e-6)


@pytest.mark.parametrize(("role", "options"), [("target", {"y": "x"}), ("sigma", {"y": "y", "sigma": "x"})])
def test_a_formula_reading_the_target_or_sigma_column_says_so(role, options):
    frame = {"x": np.arange(5.0), "y": 2 * np.arange(5.0), "s": np.ones(5)}
    with pytest.raises(ModelError, match=f"'x' is the {role} column, so the formula cannot also read it"):
        gradfit.fit("a*x + b", frame, options.pop("y"), **options)


def test_a_power_law_fits_data_that_start_at_zero():
    # d(a*x**b)/db = a*x**b*log(x) is 0 at x = 0: the fit used to refuse such data as "not finite"
    from scipy.optimize import curve_fit

    x = np.array([0.0, 1, 2, 3, 4, 5, 6])
    y = np.array([0.02, 1.1, 2.7, 5.3, 7.9, 11.3, 14.6])
    result = gradfit.fit("a*x**b", x, y, params={"a": 1.0, "b": 1.0})
    reference, covariance = curve_fit(lambda x, a, b: a * x**b, x, y, p0=[1.0, 1.0])
    assert result.success
    np.testing.assert_allclose(result.values, reference, rtol=1e-6)
    np.testing.assert_allclose([result.stderr["a"], result.stderr["b"]], np.sqrt(np.diag(covariance)), rtol=1e-5)


def test_a_bfloat16_module_predicts_after_its_fit(thermometer):
    import torch

    t_u, t_c = thermometer
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(torch.bfloat16)
    result = gradfit.fit(network, {"t_u": t_u}, t_c, optimizer="adam", epochs=50)
    prediction = result.predict({"t_u": [50.0]})  # numpy has no bfloat16: this raised a TypeError
    assert prediction.dtype == np.float64 and np.isfinite(prediction).all()


@pytest.mark.parametrize("options", [{"solver": "linear"}, {"solver": "lm"}, {"optimizer": "adam", "epochs": 3000}])
@pytest.mark.parametrize("weighted", [False, True])
def test_a_constant_fitted_to_data_with_no_input_column_is_the_mean_with_its_standard_error(options, weighted):
    # without sigma the model's single number met the solvers as a scalar: AxisError, a matmul
    # shape mismatch, LinAlgError; with sigma it was the weighted mean, as it should be
    y, sigma = np.array([1.0, 1.2, 0.9, 1.1]), np.array([0.1, 0.2, 0.1, 0.1])
    w = 1.0 / sigma**2 if weighted else np.ones_like(y)
    mean = np.sum(w * y) / np.sum(w)
    error = np.sqrt(np.sum(w * (y - mean) ** 2) / (y.size - 1) / np.sum(w))
    frame = pl.DataFrame({"y": y, "s": sigma}) if weighted else pl.DataFrame({"y": y})
    result = gradfit.fit("c", frame, "y", sigma="s" if weighted else None, **options)
    assert result.params["c"] == pytest.approx(mean, rel=1e-9)
    assert result.stderr["c"] == pytest.approx(error, rel=1e-9)


def test_a_group_fit_of_a_constant_gives_each_groups_mean():
    table = gradfit.fit_groups("c", pl.DataFrame({"g": [1, 1, 1, 2, 2, 2], "y": [1.0, 2.0, 3.0, 4.0, 5.0, 7.0]}), group="g", y="y").table
    np.testing.assert_allclose(table["c"].to_numpy(), [2.0, 16.0 / 3.0], rtol=1e-12)
    np.testing.assert_allclose(table["c_stderr"].to_numpy(), [np.std([1, 2, 3], ddof=1) / np.sqrt(3), np.std([4, 5, 7], ddof=1) / np.sqrt(3)], rtol=1e-9)


def test_a_step_in_a_fixed_parameter_is_evaluated_at_its_value_not_solved_as_linear():
    # arctan2(a, 0) is π/2 for a > 0; taken for linear, the offset was computed at a = 0 (b = 3.75)
    x = np.linspace(0.5, 3.0, 25)
    result = gradfit.fit("arctan2(a, 0)*x + b", {"x": x}, np.pi / 2 * x + 1.0, fix={"a": 1.0})
    assert result.params["b"] == pytest.approx(1.0, rel=1e-9)


def test_a_robust_fits_record_keeps_its_loss_scale():
    # the scale changes the estimate, but the result's settings did not say which one was used
    x = np.linspace(0.0, 1.0, 20)
    result = gradfit.fit("w*x + b", {"x": x}, 2.0 * x + np.sin(9.0 * x), loss="huber", loss_scale=0.3)
    assert result.settings["loss_scale"] == 0.3
    assert gradfit.FitResult.from_json(result.to_json()).settings["loss_scale"] == 0.3


def _least_absolute_deviations(design: np.ndarray, y: np.ndarray, bounds: list | None = None) -> np.ndarray:
    """The LAD solution as scipy's HiGHS linear program: min Σ(u + v) with X θ + u - v = y, u, v >= 0."""
    from scipy.optimize import linprog

    n, p = design.shape
    cost = np.concatenate([np.zeros(p), np.ones(2 * n)])
    equality = np.hstack([design, np.eye(n), -np.eye(n)])
    limits = (bounds or [(None, None)] * p) + [(0, None)] * (2 * n)
    return linprog(cost, A_eq=equality, b_eq=y, bounds=limits, method="highs").x[:p]


@pytest.mark.parametrize("weighted", [False, True])
def test_least_absolute_deviations_with_the_lm_solver_are_the_linear_programs_solution(weighted):
    rng = np.random.default_rng(5)
    x = np.linspace(0.0, 10.0, 150)
    y = 3.0 * x + 2.0 + rng.standard_cauchy(x.size)
    sigma = rng.uniform(0.5, 2.0, x.size) if weighted else np.ones_like(x)
    design = np.column_stack([x, np.ones_like(x)]) / sigma[:, None]
    result = gradfit.fit("a*x + b", x, y, sigma=sigma if weighted else None, loss="mae", solver="lm")
    assert result.status == "converged" and "least absolute deviations" in result.message
    np.testing.assert_allclose(result.values, _least_absolute_deviations(design, y / sigma), rtol=1e-9)
    bounded = gradfit.fit("a*x + b", x, y, sigma=sigma if weighted else None, loss="mae", solver="lm", bounds={"a": (0, 2.9)})
    optimum = _least_absolute_deviations(design, y / sigma, [(0, 2.9), (None, None)])
    assert bounded.values[0] == pytest.approx(2.9, abs=1e-12) and bounded.parameters[0].at_bound
    # with a at its bound, b is a (weighted) median of y - 2.9 x: any point between two middle values
    assert bounded.train_loss == pytest.approx(np.mean(np.abs(y / sigma - design @ optimum)), rel=1e-11)


def test_a_nonlinear_least_absolute_deviations_fit_reaches_the_optimum_gradient_descent_only_nears():
    from scipy.optimize import minimize

    rng = np.random.default_rng(6)
    x = np.linspace(0.0, 5.0, 100)
    y = 2.0 * np.exp(-0.7 * x) + 0.3 + 0.05 * rng.standard_t(1.5, x.size)
    start = {"a": 1.0, "k": 1.0, "c": 0.0}

    def mean_absolute(theta: np.ndarray) -> float:
        return float(np.mean(np.abs(theta[0] * np.exp(-theta[1] * x) + theta[2] - y)))

    exact = gradfit.fit("a*exp(-k*x) + c", x, y, loss="mae", solver="lm", params=start)
    polished = minimize(mean_absolute, exact.values, method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-15, "maxiter": 20000})
    np.testing.assert_allclose(exact.values, polished.x, rtol=1e-7)
    assert exact.train_loss == pytest.approx(mean_absolute(exact.values), rel=1e-12)
    assert exact.train_loss <= polished.fun * (1 + 1e-12)
    capped = gradfit.fit("a*exp(-k*x) + c", x, y, loss="mae", solver="lm", params=start, max_iter=3)
    assert capped.status == "max_iter" and not capped.success and "least absolute deviations" in capped.message
    descended = gradfit.fit("a*exp(-k*x) + c", x, y, loss="mae", params=start)
    assert descended.status == "max_epochs" and descended.train_loss > exact.train_loss
    assert any("solver='lm'" in warning for warning in descended.warnings)


def test_max_iter_is_a_hard_limit_without_restarts() -> None:
    rng = np.random.default_rng(1)
    x = np.linspace(0.0, 4.0, 40)
    y = 2.5 * np.exp(-1.3 * x) + 0.5 + rng.normal(0.0, 0.02, x.size)
    start = {"a": 1.0, "k": 5.0, "c": 0.0}
    free = gradfit.fit("a*exp(-k*x) + c", x, y, params=start)
    assert free.success and free.iterations > 5
    for cap in (2, 5):
        capped = gradfit.fit("a*exp(-k*x) + c", x, y, params=start, max_iter=cap)
        assert capped.status == "max_iter" and not capped.success and capped.iterations == cap
    best_of_starts = gradfit.fit("a*exp(-k*x) + c", x, y, params=start, max_iter=3, starts=4)
    assert best_of_starts.iterations <= 3 and "best of 4 starting points" in best_of_starts.message


def test_a_start_where_the_model_is_not_finite_is_mended_by_a_restart_and_says_so() -> None:
    t_u = np.array([35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4])
    t_c = np.array([0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0])
    inside = gradfit.fit("a*log(t_u - k)", {"t_u": t_u}, t_c, params={"a": 1.0, "k": 10.0})
    outside = gradfit.fit("a*log(t_u - k)", {"t_u": t_u}, t_c, params={"a": 1.0, "k": 30.0})  # log of -8.2 at t_u = 21.8
    assert inside.success and not any("not finite at the starting values" in w for w in inside.warnings)
    assert outside.success and any("not finite at the starting values" in w for w in outside.warnings)
    np.testing.assert_allclose(outside.values, inside.values, rtol=1e-7)
    capped = gradfit.fit("a*log(t_u - k)", {"t_u": t_u}, t_c, params={"a": 1.0, "k": 30.0}, max_iter=100)
    assert capped.status == "non_finite" and not capped.success  # no restarts under a user's own limit


def test_absolute_sigma_without_sigma_warns_that_the_errors_are_taken_as_one() -> None:
    x = np.linspace(0.0, 1.0, 12)
    y = 2.0 * x + 1.0 + 0.05 * np.cos(9 * x)
    unit = gradfit.fit("w*x + b", x, y, absolute_sigma=True)
    given = gradfit.fit("w*x + b", x, y, sigma=np.full(12, 0.05), absolute_sigma=True)
    relative = gradfit.fit("w*x + b", x, y)
    assert any("absolute_sigma without sigma" in w for w in unit.warnings)
    assert not any("absolute_sigma" in w for w in given.warnings + relative.warnings)
    np.testing.assert_allclose(np.array(list(unit.stderr.values())) * 0.05, list(given.stderr.values()), rtol=1e-12)


def test_a_start_outside_the_bounds_is_moved_inside_and_says_so() -> None:
    x = np.linspace(0.0, 4.0, 30)
    y = 2.0 * np.exp(-0.8 * x) + 0.1 * np.cos(5 * x)
    moved = gradfit.fit("a*exp(-k*x)", x, y, params={"a": 1.0, "k": 20.0}, bounds={"k": (0.0, 10.0)})
    assert any(w.startswith("the starting value of k, 20, is outside its bounds [0, 10]: the fit started from 9.99") for w in moved.warnings)
    inside = gradfit.fit("a*exp(-k*x)", x, y, params={"a": 1.0, "k": 2.0}, bounds={"k": (0.0, 10.0)})
    assert not any("starting value" in w for w in inside.warnings)
    np.testing.assert_allclose(moved.values, inside.values, rtol=1e-8)


def test_a_parameter_both_started_and_fixed_is_refused_on_the_command_line_and_fixed_from_python() -> None:
    from gradfit.errors import ModelError
    from gradfit.model import parameter_overrides

    with pytest.raises(ModelError, match=r"parameter 'k' has a starting value \(3\) and a fixed value \(1\) — .* drop one"):
        parameter_overrides({"a": 2.0, "k": 3.0}, None, {"k": 1.0})  # --init a=2,k=3 --fix k=1
    fixed = gradfit.fit("a*exp(-k*x)", [0.0, 1.0, 2.0], [2.0, 0.9, 0.4], params={"a": 2.0, "k": 3.0}, fix={"k": 1.0})
    assert fixed.params["k"] == 1.0  # one dict of starts for every fit, and fix holds k


def test_device_cuda_of_a_formula_least_squares_fit_is_refused_as_ignored() -> None:
    from gradfit.errors import OptionError

    with pytest.raises(OptionError, match=r"lm solver .* runs on numpy, so device 'cuda' \(--device cuda\) would be ignored"):
        gradfit.fit("a*exp(-k*x)", [0.0, 1.0, 2.0, 3.0], [2.0, 0.9, 0.4, 0.2], device="cuda")


def test_a_misspelt_option_is_named_with_the_likely_one() -> None:
    from gradfit.errors import OptionError

    with pytest.raises(OptionError, match=r"fit\(\) has no option 'optimiser' — did you mean 'optimizer'\?"):
        gradfit.fit("w*x + b", [1.0, 2.0, 3.0], [2.0, 4.0, 6.1], optimiser="sgd")
    with pytest.raises(OptionError, match=r"no option 'bound' — did you mean 'bounds'\?"):
        gradfit.fit("w*x + b", [1.0, 2.0, 3.0], [2.0, 4.0, 6.1], bound={"w": (0, 1)})


def test_bounds_take_none_for_no_bound_and_refuse_anything_but_a_pair() -> None:
    x, y = [0.0, 1.0, 2.0, 3.0, 4.0], [1.0, 2.1, 2.9, 4.2, 5.0]
    one_sided = gradfit.fit("a*x + c", x, y, bounds={"c": (0, None)})
    assert one_sided.parameters[1].lower == 0 and one_sided.parameters[1].upper == np.inf
    for bad in ({"c": 0.5}, {"c": (0.5,)}, {"c": ("x", 1)}):
        with pytest.raises(OptionError, match=r"bounds of 'c' must be a \(lower, upper\) pair"):
            gradfit.fit("a*x + c", x, y, bounds=bad)


@pytest.mark.parametrize("model", ["a*exp(-k*x)", "a*x + b"])
def test_targets_too_small_to_square_are_refused_with_the_rescaling(model: str) -> None:
    x = np.linspace(0.0, 10.0, 30)
    y = 1e-200 * (3.0 * np.exp(-0.4 * x) + 0.01 * np.cos(7 * x))  # squares 1e-400: below double precision
    with pytest.raises(DataError, match=r"target values are at most 3.01e-200 in magnitude: their squares underflow .* fit y·1e\+200"):
        gradfit.fit(model, x, y)
    scaled = gradfit.fit(model, x, y * 1e200)  # ...and what the message says to do works
    assert scaled.success
    fine = gradfit.fit(model, x, y * 1e100)  # 1e-100: squares of 1e-200 are still normal numbers
    np.testing.assert_allclose(fine.values[0] * 1e100, scaled.values[0], rtol=1e-6)


def test_float32_warns_when_rounding_moves_a_column_by_a_visible_part_of_its_range() -> None:
    t = 1.7e9 + np.linspace(0.0, 1000.0, 50)  # a timestamp: float32 keeps 7 digits
    y = 0.5 * (t - 1.7e9) + np.cos(t)
    rounded = gradfit.fit("w*(t - t0) + b", {"t": t}, y, fix={"t0": 1.7e9}, dtype="float32")
    assert any(w.startswith("'t' loses digits in float32") and "t - 1700000500" in w for w in rounded.warnings)
    exact = gradfit.fit("w*(t - t0) + b", {"t": t}, y, fix={"t0": 1.7e9})
    assert not any("float32" in w for w in exact.warnings)
    small = gradfit.fit("w*t + b", {"t": t - 1.7e9}, y, dtype="float32")
    assert not any("float32" in w for w in small.warnings)


def test_the_settings_record_the_iteration_cap_starts_and_stopping_rules_a_rerun_needs(thermometer):
    """A saved result says how it was made: rerunning with its recorded settings gives the same fit."""
    t_u, t_c = thermometer
    kwargs = {"solver": "lm", "max_iter": 7, "starts": 3, "nan_policy": "omit"}
    result = gradfit.fit("a*exp(-k*t_u) + c", {"t_u": t_u}, t_c, params={"a": -50, "k": 0.01, "c": 10}, **kwargs)
    loaded = gradfit.FitResult.from_json(result.to_json())
    recorded = {name: loaded.settings[name] for name in ("solver", "max_iter", "starts", "nan_policy", "patience", "plateau", "target")}
    assert recorded == {**kwargs, "patience": None, "plateau": None, "target": None}
    again = gradfit.fit("a*exp(-k*t_u) + c", {"t_u": t_u}, t_c, params={"a": -50, "k": 0.01, "c": 10}, **kwargs)
    assert again.params == result.params and again.iterations == result.iterations
    trained = gradfit.fit("w*t_u + b", {"t_u": t_u}, t_c, optimizer="adam", epochs=5, patience=2, plateau=1, target=0.5)
    assert (trained.settings["patience"], trained.settings["plateau"], trained.settings["target"]) == (2, 1, 0.5)


@pytest.mark.parametrize(
    ("arguments", "error", "named"),
    [
        ({"params": [1.0, 1.0]}, ModelError, "params must give the starting values by name, e.g. params=.* got list \\[1.0, 1.0\\] — a list would depend on the order"),
        ({"params": np.array([1.0, 1.0])}, ModelError, "params must give the starting values by name.* got ndarray"),
        ({"bounds": ([0, 0], [10, 10])}, ModelError, "bounds must give each parameter's bounds by name, e.g. bounds=.* got tuple"),
        ({"p0": [1.0, 1.0]}, OptionError, "no option 'p0' — for scipy's p0, give starting values by name: params="),
        ({"maxfev": 100}, OptionError, "no option 'maxfev' — for scipy's maxfev, cap the iterations with max_iter"),
        ({"jac": "3-point"}, OptionError, "for scipy's jac, none is needed"),
    ],
)
def test_curve_fits_ways_of_passing_starts_bounds_and_options_get_gradfits_way_by_name(arguments, error, named):
    """A p0 list used to crash (AttributeError, or numpy's ambiguous truth value)."""
    t = np.linspace(0.0, 5.0, 30)
    with pytest.raises(error, match=named):
        gradfit.fit("a*exp(-k*t)", {"t": t}, 3.0 * np.exp(-1.3 * t), **arguments)


def test_curve_fits_layouts_of_inputs_targets_and_functions_are_explained():
    t = np.linspace(0.0, 5.0, 40)
    with pytest.raises(DataError, match="x has shape \\(2, 40\\) for 40 targets: .* shape \\(40, 2\\): pass x.T"):
        gradfit.fit("a*x0 + b*x1", np.vstack([t, t**2]), t + 2 * t**2)
    with pytest.raises(DataError, match="no targets given — pass y: .* \\(the data have a column 'y': y='y'\\)"):
        gradfit.fit("a*x + b", pl.DataFrame({"x": t, "y": 2 * t}))
    with pytest.raises(ModelError, match="takes its parameters as \\*args \\(as curve_fit's f\\(x, \\*p\\)\\) — name each one"):
        gradfit.fit(lambda x, *p: p[0] * x, t, 2 * t)
    columns = np.column_stack([t, t**2])
    with pytest.raises(ModelError, match="no argument of <lambda>\\(X, a, b\\) names a data column — the columns are x0, x1"):
        gradfit.fit(lambda X, a, b: a * X[:, 0] + b * X[:, 1], columns, t + 2 * t**2)
    with pytest.raises(ModelError, match="calls numpy on the torch tensors it is given .* use torch's functions \\(torch.exp for np.exp\\)"):
        gradfit.fit(lambda t, a, k: a * np.exp(-k * t), t, np.exp(-t))

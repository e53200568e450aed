"""ParametricRegressor: scikit-learn's own estimator checks, and use in Pipeline, GridSearchCV and
cross_val_score, with numpy least squares as the reference.

With the default ``model="linear"`` (which adapts to any number of features) every applicable
check passes, so ``expected_failed_checks`` is empty. Two checks may be reported as skipped by
scikit-learn itself, depending on the environment: ``check_regressor_data_not_an_array`` needs pandas
and ``check_array_api_input`` needs ``SCIPY_ARRAY_API=1`` with an array-API library.
"""

from __future__ import annotations

import pickle

import numpy as np
import polars as pl
import pytest

pytest.importorskip("sklearn")

from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from gradfit.sklearn import ParametricRegressor  # noqa: E402

T_C = np.array([0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0])
T_U = np.array([35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4])


@parametrize_with_checks([ParametricRegressor()], expected_failed_checks=lambda estimator: {})
def test_scikit_learn_estimator_checks(estimator, check) -> None:  # type: ignore[no-untyped-def]
    check(estimator)


def _quadratic_data(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3.0, 3.0, n)
    return x[:, None], 0.8 * x**2 - x + 0.5 + rng.normal(0.0, 0.3, n)


def test_formula_fit_matches_ordinary_least_squares() -> None:
    reg = ParametricRegressor(model="w*x + b").fit(T_U[:, None], T_C)
    assert reg.fit(T_U[:, None], T_C) is reg
    design = np.column_stack([T_U, np.ones_like(T_U)])
    coef, residual, *_ = np.linalg.lstsq(design, T_C, rcond=None)
    stderr = np.sqrt(np.diag(np.linalg.inv(design.T @ design)) * residual[0] / (len(T_C) - 2))
    np.testing.assert_allclose([reg.params_["w"], reg.params_["b"]], coef, rtol=1e-9)
    np.testing.assert_allclose([reg.stderr_["w"], reg.stderr_["b"]], stderr, rtol=1e-6)
    np.testing.assert_allclose(reg.predict(T_U[:, None]), design @ coef, rtol=1e-9)
    r2 = 1 - np.sum((design @ coef - T_C) ** 2) / np.sum((T_C - T_C.mean()) ** 2)
    assert reg.score(T_U[:, None], T_C) == pytest.approx(r2, rel=1e-9)
    assert reg.n_features_in_ == 1 and reg.input_names_ == ("x",) and not hasattr(reg, "feature_names_in_")
    assert reg.result_.model == "w*x + b"


def test_columns_map_to_names() -> None:
    rng = np.random.default_rng(2)
    X = rng.uniform(0.0, 2.0, (40, 2))
    y = 1.5 * X[:, 0] - 0.5 * X[:, 1] ** 2 + 2.0
    reg = ParametricRegressor(model="a*x0 + c*x1**2 + d").fit(X, y)
    np.testing.assert_allclose([reg.params_[k] for k in "acd"], [1.5, -0.5, 2.0], rtol=1e-9)
    frame = pl.DataFrame({"t_u": T_U, "hour": np.arange(11.0)})
    named = ParametricRegressor(model="w*t_u + b").fit(frame, T_C)
    assert list(named.feature_names_in_) == ["t_u", "hour"] and named.input_names_ == ("t_u", "hour")
    assert named.model_.input_names == ("t_u",)
    np.testing.assert_allclose(named.params_["w"], np.polyfit(T_U, T_C, 1)[0], rtol=1e-9)
    second = ParametricRegressor(model="w*hour + b").fit(frame, T_C)  # reads the second column only
    np.testing.assert_allclose(second.predict(frame), np.polyval(np.polyfit(np.arange(11.0), T_C, 1), np.arange(11.0)), rtol=1e-9)
    odd = ParametricRegressor().fit(pl.DataFrame({"temp (F)": T_U}), T_C)  # not a formula name
    assert odd.input_names_ == ("x",) and odd.result_.model == "w*x + b"


def test_not_fitted_and_too_few_samples_are_clear() -> None:
    with pytest.raises(NotFittedError):
        ParametricRegressor().predict(T_U[:, None])
    with pytest.raises(ValueError, match="n_samples = 2 .* 3 parameters"):
        ParametricRegressor(model="poly:2").fit(T_U[:2, None], T_C[:2])


def test_builtin_nonlinear_model_starts_from_its_guess() -> None:
    x = np.linspace(0.0, 60.0, 40)
    y = 20.0 * np.exp(-0.08 * x) + 5.0 + np.random.default_rng(4).normal(0.0, 0.1, x.size)
    reg = ParametricRegressor(model="exp_decay").fit(x[:, None], y)
    np.testing.assert_allclose([reg.params_[k] for k in ("a", "k", "c")], [20.0, 0.08, 5.0], rtol=0.03)


def test_pipeline_grid_search_and_cross_validation() -> None:
    X, y = _quadratic_data()
    pipeline = make_pipeline(StandardScaler(), ParametricRegressor(model="poly:2")).fit(X, y)
    np.testing.assert_allclose(pipeline.predict(X), np.polyval(np.polyfit(X[:, 0], y, 2), X[:, 0]), rtol=1e-8)

    search = GridSearchCV(ParametricRegressor(), {"model": ["linear", "poly:2"]}, cv=5).fit(X, y)
    assert search.best_params_ == {"model": "poly:2"}

    folds = KFold(5, shuffle=True, random_state=0)
    scores = cross_val_score(ParametricRegressor(model="poly:2"), X, y, cv=folds)
    expected = []
    for train, test in folds.split(X):
        prediction = np.polyval(np.polyfit(X[train, 0], y[train], 2), X[test, 0])
        expected.append(1 - np.sum((prediction - y[test]) ** 2) / np.sum((y[test] - y[test].mean()) ** 2))
    np.testing.assert_allclose(scores, expected, rtol=1e-8)


def test_pickled_estimators_predict_alike() -> None:
    X, y = _quadratic_data(30)
    for reg in (
        ParametricRegressor(model="poly:2").fit(X, y),
        ParametricRegressor(model="mlp:6", epochs=60, optimizer_options={"lr": 0.05}).fit(X, y),
    ):
        fitted = reg.predict(X)
        np.testing.assert_allclose(fitted, reg.result_.predict({"x": X[:, 0]}), rtol=1e-12, atol=1e-12)
        copy = pickle.loads(pickle.dumps(reg))
        assert copy.result_.predictor is None
        np.testing.assert_allclose(copy.predict(X), fitted, rtol=1e-12, atol=1e-12)


def test_network_models_are_copied_and_validation_is_recorded() -> None:
    import torch

    X, y = _quadratic_data(40)
    net = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    before = [p.detach().clone() for p in net.parameters()]
    reg = ParametricRegressor(model=net, epochs=30, val=0.25).fit(X, y)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert reg.result_.n_val == 10 and len(reg.result_.history.val) == 30 and reg.params_ == {}


def test_an_unknown_device_is_refused_in_plain_words() -> None:
    X, y = _quadratic_data(20)
    with pytest.raises(ValueError, match="device"):
        ParametricRegressor(model="mlp:4", device="gpu0").fit(X, y)


@pytest.mark.gpu
def test_networks_and_functions_fit_on_cuda_and_predict_on_the_host() -> None:
    import torch

    X, y = _quadratic_data(40)
    reg = ParametricRegressor(model="mlp:6", epochs=60, optimizer_options={"lr": 0.05}, device="cuda").fit(X, y)
    assert next(reg.model_.module.parameters()).device.type == "cuda"
    assert reg.result_.settings["device"] == "cuda"
    np.testing.assert_allclose(reg.predict(X), reg.result_.predict({"x": X[:, 0]}), rtol=1e-12, atol=1e-12)

    def quadratic(x: torch.Tensor, a: float = 1.0, b: float = 0.0, c: float = 0.0) -> torch.Tensor:
        return a * x**2 + b * x + c

    cpu = ParametricRegressor(model=quadratic).fit(X, y)
    cuda = ParametricRegressor(model=quadratic, device="cuda").fit(X, y)
    np.testing.assert_allclose(cuda.predict(X), cpu.predict(X), rtol=1e-9)


def test_the_result_records_the_validation_fraction_it_was_fitted_with():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (60, 1))
    y = 2.0 * X[:, 0] + 1.0 + 0.01 * rng.standard_normal(60)
    estimator = ParametricRegressor(model="w*x + b", val=0.2, seed=3).fit(X, y)
    assert estimator.result_.settings["val"] == 0.2 and estimator.result_.settings["seed"] == 3
    assert estimator.result_.n_val == 12

"""A scikit-learn estimator over gradfit: :class:`ParametricRegressor`.

It follows scikit-learn's conventions — a keyword-only ``__init__`` that only stores its arguments,
``fit(X, y)`` returning ``self``, fitted attributes ending in ``_``, ``predict``, ``score`` (R²) —
so it works in :class:`~sklearn.pipeline.Pipeline`, :class:`~sklearn.model_selection.GridSearchCV`
(also over models: ``param_grid={"model": ["linear", "poly:2"]}``) and
:func:`~sklearn.model_selection.cross_val_score`.

Columns of ``X`` become the model's inputs by name: a data frame's column names when they can appear
in a formula, else ``x`` (one column) or ``x0``, ``x1``... So ``model="w*x + b"`` fits one column,
``model="a*x0 + b*x1**2 + c"`` two, and the built-in ``"linear"`` (the default) any number.

Needs scikit-learn (``pip install 'gradfit[sklearn]'``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

try:
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "gradfit.sklearn needs scikit-learn >= 1.6 — install it with: pip install 'gradfit[sklearn]'"
    ) from exc

from gradfit.data import Dataset
from gradfit.errors import DataError, DivergenceError, FitError
from gradfit.model import one_output

__all__ = ["ParametricRegressor"]


class ParametricRegressor(RegressorMixin, BaseEstimator):
    """Fit a formula, a built-in model or a function to ``(X, y)`` as a scikit-learn regressor.

    Parameters
    ----------
    model
        A formula over the input names (``"w*x + b"``, ``"a*x0 + b*x1 + c"``), a built-in name
        (``"linear"``, ``"poly:2"``, ``"exp_decay"``, ``"logistic"``, ``"michaelis_menten"``,
        ``"gaussian"``, ``"mlp:8"``), a Python function or a ``torch.nn.Module`` (copied before
        each fit). ``"linear"`` adapts to any number of columns.
    solver
        ``"auto"``, ``"linear"``, ``"lm"``, ``"gn"`` or ``"gradient"``.
    optimizer, optimizer_options
        A ``torch.optim`` optimizer name (or class) and its keyword arguments.
    loss
        ``"mse"``, ``"mae"``, ``"huber"``, ``"soft_l1"`` or ``"cauchy"``.
    epochs, batch_size, patience
        Gradient fits: epoch limit, minibatch size, early stopping.
    val
        Fraction of the rows held out (seeded) to monitor validation loss.
    seed
        Seed of the validation split, the minibatch order and a built-in network's weights.
    scale
        Solve in standardised coordinates (parameters are still reported in the data's units).
    params
        Starting values ``{"k": 0.5}`` or :class:`~gradfit.model.Parameter` objects; they win over a
        built-in's data-driven guess.
    bounds
        ``"k>=0, 0<c<10"`` or ``{"k": (0, 10)}``.
    dtype
        ``"float64"`` or ``"float32"``.
    device
        ``"cpu"``, ``"cuda"`` or ``"auto"``: where torch work runs (networks, gradient solvers,
        Python functions); least-squares fits of formulas run on numpy.

    Attributes
    ----------
    result_ : FitResult
        The full fit: parameters with uncertainties, losses, statistics, history.
    params_ : dict
        Fitted parameter values by name (empty for networks).
    stderr_ : dict
        Standard errors by name.
    model_
        The fitted gradfit model (its formula is ``model_.description``).
    input_names_ : tuple of str
        The names the columns of ``X`` took (the model reads ``model_.input_names`` of them).
    n_features_in_ : int
        Number of columns of ``X``.
    feature_names_in_ : ndarray of str
        Column names of ``X``, when it had them.

    Examples
    --------
    >>> import numpy as np
    >>> from gradfit.sklearn import ParametricRegressor
    >>> X = np.array([[1.0], [2.0], [3.0], [4.0]])
    >>> reg = ParametricRegressor(model="w*x + b").fit(X, [3.0, 5.0, 7.0, 9.0])
    >>> round(reg.params_["w"], 6), round(reg.params_["b"], 6)
    (2.0, 1.0)
    """

    def __init__(
        self,
        *,
        model: Any = "linear",
        solver: str = "auto",
        optimizer: Any = None,
        optimizer_options: Mapping[str, Any] | None = None,
        loss: str = "mse",
        epochs: int = 1000,
        batch_size: int | None = None,
        patience: int | None = None,
        val: float = 0.0,
        seed: int = 0,
        scale: bool = True,
        params: Mapping[str, Any] | Sequence[Any] | None = None,
        bounds: Mapping[str, tuple[float, float]] | str | None = None,
        dtype: str = "float64",
        device: str = "cpu",
    ) -> None:
        self.model = model
        self.solver = solver
        self.optimizer = optimizer
        self.optimizer_options = optimizer_options
        self.loss = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.patience = patience
        self.val = val
        self.seed = seed
        self.scale = scale
        self.params = params
        self.bounds = bounds
        self.dtype = dtype
        self.device = device

    # -- fitting ------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any) -> ParametricRegressor:
        """Estimate the model's parameters from ``X (n, d)`` and ``y (n,)``.

        Returns
        -------
        ParametricRegressor
            ``self``, fitted.

        Raises
        ------
        ValueError
            For bad data (NaN, too few samples for the parameters...), models or options.
        DivergenceError
            If a gradient fit diverged (lower the learning rate).
        """
        from gradfit.builtin_models import model_for
        from gradfit.fitting import fit_dataset, split_dataset
        from gradfit.model import ModuleModel, ParametricModel

        X, y = validate_data(self, X, y, y_numeric=True, dtype=np.float64)
        names = self._names(X.shape[1])
        data = _dataset(X, y, names)
        options = self._options()
        train, validation = split_dataset(data, options)
        model = model_for(self._fresh_model(), train, params=self._overrides(), seed=self.seed)
        if isinstance(model, ParametricModel):
            _check_samples(train.n_rows, sum(not p.fixed for p in model.parameters), model.description)
        result = fit_dataset(model, train, options, validation)  # the split is made: validation is given
        if result.status == "diverged":
            raise DivergenceError(
                f"the fit diverged (the loss became non-finite, exploded or ended far above its start) within "
                f"{result.iterations} epochs — lower the learning rate (optimizer_options={{'lr': ...}}) or keep scale=True"
            )
        if result.status == "non_finite":
            raise FitError(result.message)
        self.result_ = result
        self.model_ = model
        self.input_names_ = names
        self.params_ = dict(result.params)
        self.stderr_ = dict(result.stderr)
        self.scalers_ = _scalers(model, train) if isinstance(model, ModuleModel) and self.scale else None
        return self

    def _names(self, n_columns: int) -> tuple[str, ...]:
        from gradfit.builtin_models import usable_name

        names = getattr(self, "feature_names_in_", None)
        if names is not None and all(usable_name(str(n)) for n in names):
            return tuple(str(n) for n in names)
        return ("x",) if n_columns == 1 else tuple(f"x{j}" for j in range(n_columns))

    def _options(self) -> Any:
        from gradfit.config import FitOptions

        return FitOptions(
            solver=self.solver,
            optimizer=self.optimizer,
            optimizer_options=dict(self.optimizer_options or {}),
            loss=self.loss,
            epochs=self.epochs,
            batch_size=self.batch_size,
            patience=self.patience,
            val=self.val,
            seed=self.seed,
            scale=self.scale,
            dtype=self.dtype,
            device=self.device,
        )

    def _fresh_model(self) -> Any:
        import copy

        from gradfit.model import ModuleModel, _is_module

        return copy.deepcopy(self.model) if isinstance(self.model, ModuleModel) or _is_module(self.model) else self.model

    def _overrides(self) -> dict[str, dict[str, Any]] | None:
        from gradfit.model import overrides_from, parse_bounds

        merged = overrides_from(self.params) if self.params else {}
        if isinstance(self.bounds, str):
            limits = parse_bounds(self.bounds)
        else:
            limits = {k: {"lower": float(lo), "upper": float(hi)} for k, (lo, hi) in (self.bounds or {}).items()}
        for name, fields in limits.items():
            merged.setdefault(name, {}).update(fields)
        return merged or None

    # -- using the fit ------------------------------------------------------------------------------
    def predict(self, X: Any) -> np.ndarray:
        """Predictions of the fitted model at ``X (n, d)``, shape ``(n,)``."""
        check_is_fitted(self, "result_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        position = {name: j for j, name in enumerate(self.input_names_)}
        columns = {name: np.array(X[:, position[name]], dtype=np.float64) for name in self.model_.input_names}
        return self._evaluate(columns)

    def _evaluate(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Evaluate from the fitted model itself (so that a pickled estimator predicts alike)."""
        import torch

        from gradfit.model import ModuleModel
        from gradfit.predict import centred_polynomial
        from gradfit.solvers.linear import POLYNOMIAL_BASIS

        with torch.no_grad():
            if isinstance(self.model_, ModuleModel):
                return _module_predict(self.model_, self.scalers_, columns)
            centred = centred_polynomial(self.result_.settings.get(POLYNOMIAL_BASIS), columns)
            if centred is not None:  # a polynomial: in the centred basis it was solved in
                return centred
            theta = torch.tensor(self.result_.values, dtype=torch.float64)
            inputs = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in columns.items()}
            out = self.model_.predict(inputs, theta)
            n = next(iter(columns.values())).shape[0]
            return torch.broadcast_to(out, (n,)).numpy().astype(float).copy()

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        if state.get("result_") is not None:
            state["result_"] = replace(state["result_"], predictor=None)  # a closure: not picklable
        return state

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags


def _dataset(X: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> Dataset:
    # writable float64 copies: torch warns when it wraps read-only arrays (memmaps)
    return Dataset(inputs={n: np.array(X[:, j], dtype=np.float64) for j, n in enumerate(names)}, y=np.array(y, dtype=np.float64))


def _check_samples(n_samples: int, n_params: int, description: str) -> None:
    if n_samples < n_params:
        raise DataError(
            f"n_samples = {n_samples} is fewer than the {n_params} parameters of '{description}' "
            "— give more samples or a simpler model"
        )


def _scalers(model: Any, train: Dataset) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The standardisation a network was trained in (as the gradient solver computes it)."""
    x = np.column_stack([train.inputs[n] for n in model.input_names])

    def spread(values: np.ndarray) -> np.ndarray:
        sd = values.std(axis=0) if values.shape[0] > 1 else np.ones(values.shape[1:])
        return np.where(sd > 0, sd, 1.0)

    return x.mean(axis=0), spread(x), float(train.y.mean()), float(spread(train.y[:, None])[0])


def _module_predict(model: Any, scalers: tuple[np.ndarray, np.ndarray, float, float] | None, columns: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    x = np.column_stack([columns[n] for n in model.input_names])
    if scalers is not None:
        x = (x - scalers[0]) / scalers[1]
    with model.evaluating():
        out = model.module(model.as_module_input(torch.as_tensor(x, dtype=torch.float64)))
    out = one_output(out).double().cpu().numpy()
    return out * scalers[3] + scalers[2] if scalers is not None else out.astype(float)

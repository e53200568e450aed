"""``fit``: the one pipeline every fit runs through.

data -> split -> model -> solver (scaled inside) -> statistics -> FitResult
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.config import FitOptions
from gradfit.data import Dataset, as_dataset, check_enough_rows, check_squares_representable, holdout_split
from gradfit.errors import ModelError, OptionError
from gradfit.model import CallableModel, FormulaModel, ModuleModel, Parameter, ParametricModel, make_model
from gradfit.objective import Split
from gradfit.result import FitResult
from gradfit.solvers import choose_solver, get_solver, needs_torch, optimizer_label, unused_message, unused_options
from gradfit.solvers.base import Problem
from gradfit.summary import summarize
from gradfit.threads import SMALL_PROBLEM, threads_for

if TYPE_CHECKING:
    from gradfit.solvers.base import SolveOutcome

__all__ = ["fit", "fit_dataset", "prepare", "split_dataset"]

_DEFAULTS = FitOptions()


def fit(
    model: Any,
    x: Any,
    y: Any = None,
    *,
    sigma: Any = None,
    inputs: Sequence[str] | None = None,
    params: Sequence[Parameter] | Mapping[str, Any] | None = None,
    bounds: Mapping[str, tuple[float, float]] | str | None = None,
    fix: Mapping[str, float] | None = None,
    val_data: tuple[Any, ...] | None = None,
    **options: Any,
) -> FitResult:
    """Estimate a model's parameters from input/output pairs.

    Parameters
    ----------
    model
        A formula string (``"w*t_u + b"``), a Python function ``f(x, w, b)`` of torch tensors, or a
        ``torch.nn.Module``. In a formula, names that are data columns are inputs and the others are
        parameters. A module is trained in place and returns to its own dtype and device; with
        ``scale`` on it learns standardised data (predict with the result's ``predict``).
    x
        Inputs: an array ``(n,)`` (named ``x``) or ``(n, d)`` (``x0``...), a mapping of column name to
        array, a polars or pandas frame, or a tensor.
    y
        Targets (array-like), or the name of the target column when ``x`` is a frame or mapping.
    sigma
        Standard deviations of ``y`` (array or column name) for a weighted fit.
    inputs
        Which columns of a frame are inputs of a network (default: all but ``y`` and ``sigma``).
    params
        Starting values ``{"w": 1.0}``, or :class:`~gradfit.model.Parameter` objects with bounds and
        fixed flags.
    bounds
        ``{"k": (0, 10)}`` or ``"b>=0, 0<k<10"``; fits that end on a bound are flagged.
    fix
        ``{"w": 1.0}``: hold these parameters at the given values.
    val_data
        ``(x_val, y_val)`` or ``(x_val, y_val, sigma_val)``: an explicit validation set, instead of a
        random ``val`` fraction. A weighted fit's validation loss is weighted only if it has ``sigma_val``.
    **options
        Any field of :class:`~gradfit.config.FitOptions` (its docstring says what each does):
        ``solver`` ("auto", "linear", "lm", "gn", "gradient"), ``optimizer`` (a ``torch.optim`` name
        or class), ``optimizer_options``, ``loss``, ``loss_scale``, ``epochs``, ``batch_size``,
        ``val`` (fraction held out, seeded by ``seed``), ``target``, ``patience``, ``plateau``,
        ``scale`` (standardise before solving, default True), ``dtype``, ``device`` (``"cpu"``,
        ``"cuda"``, ``"auto"``: where torch work runs — networks, gradient solvers, Python
        functions; least-squares fits of formulas run on numpy), ``absolute_sigma``, ``max_iter``,
        ``starts``, ``checkpoint``, ``checkpoint_every``, ``resume``, ``confidence``,
        ``nan_policy``, ``callback``.

    Returns
    -------
    FitResult
        Parameters with standard errors, losses, history, status and statistics.

    Examples
    --------
    >>> import gradfit
    >>> result = gradfit.fit("w*x + b", [1.0, 2.0, 3.0], [2.0, 4.1, 5.9])
    >>> round(result.params["w"], 2)
    1.95
    """
    settings = _fit_options(options)
    overrides = _merge_overrides(params, bounds, fix) if any(v is not None for v in (params, bounds, fix)) else {}
    built, dataset = prepare(model, x, y, sigma=sigma, inputs=inputs, params=overrides, nan_policy=settings.nan_policy)
    validation = None
    if val_data is not None:
        x_val, y_val, sigma_val = _validation_parts(val_data)
        _, validation = prepare(built, x_val, y_val, sigma=sigma_val, inputs=built.input_names, nan_policy=settings.nan_policy)
    return fit_dataset(built, dataset, settings, validation)


#: curve_fit's and least_squares' keywords, and what to do instead
_TOLERANCES = "the tolerances need no tuning (max_iter caps the iterations)"
_SCIPY_NAMES = {
    "p0": "give starting values by name: params={'a': 1.0, 'k': 0.5}",
    "maxfev": "cap the iterations with max_iter",
    "max_nfev": "cap the iterations with max_iter",
    "method": "choose the solver with solver='lm' (or 'gn', 'linear', 'gradient', 'auto')",
    "f_scale": "give the robust loss's scale as loss_scale",
    "ftol": _TOLERANCES,
    "xtol": _TOLERANCES,
    "gtol": _TOLERANCES,
    "jac": "none is needed: the Jacobian comes from the formula's derivatives or from autograd",
}
#: the keyword arguments of :func:`fit` that are not fields of :class:`FitOptions`
_FIT_ARGUMENTS = ("sigma", "inputs", "params", "bounds", "fix", "val_data")


def _fit_options(options: Mapping[str, Any]) -> FitOptions:
    """``FitOptions(**options)``, with a misspelt name refused by name (and the likely one suggested)."""
    if not options:
        return _DEFAULTS
    names = [f.name for f in dataclasses.fields(FitOptions)]
    unknown = [name for name in options if name not in names]
    if unknown:
        close = difflib.get_close_matches(unknown[0], [*names, *_FIT_ARGUMENTS], n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        if unknown[0] in _SCIPY_NAMES:
            hint = f"for scipy's {unknown[0]}, {_SCIPY_NAMES[unknown[0]]}; "
        raise OptionError(f"fit() has no option '{unknown[0]}' — {hint}the options are the fields of gradfit.FitOptions")
    return FitOptions(**options)


def _validation_parts(val_data: Any) -> tuple[Any, Any, Any]:
    """``(x, y, sigma)`` from ``val_data = (x, y)`` or ``(x, y, sigma)``."""
    if not isinstance(val_data, (tuple, list)) or len(val_data) not in (2, 3):
        raise OptionError("val_data must be (x, y) or (x, y, sigma) — e.g. val_data=(x_val, y_val)")
    return val_data[0], val_data[1], val_data[2] if len(val_data) == 3 else None


def _merge_overrides(
    params: Sequence[Parameter] | Mapping[str, Any] | None,
    bounds: Mapping[str, tuple[float, float]] | str | None,
    fix: Mapping[str, float] | None,
) -> dict[str, dict[str, Any]]:
    from gradfit.model import check_bounds_by_name, overrides_from, parameter_overrides, parse_bounds

    check_bounds_by_name(bounds)
    merged = overrides_from(params) if params is not None else {}  # a start in params of a parameter fix holds: fix wins
    limits = parse_bounds(bounds) if isinstance(bounds, str) else _bound_pairs(bounds or {})
    for name, fields in parameter_overrides(None, limits, fix).items():
        merged.setdefault(name, {}).update(fields)
    return merged


def _bound_pairs(bounds: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{"k": (0, 10)}`` as Parameter fields; None on either side is no bound."""
    limits = {}
    for name, pair in bounds.items():
        try:
            low, high = pair
            limits[name] = {
                "lower": -math.inf if low is None else float(low),
                "upper": math.inf if high is None else float(high),
            }
        except (TypeError, ValueError):
            raise OptionError(
                f"bounds of '{name}' must be a (lower, upper) pair, got {pair!r} — use None for no bound, e.g. bounds={{'{name}': (0, None)}}"
            ) from None
    return limits


def prepare(
    model: Any,
    x: Any,
    y: Any,
    *,
    sigma: Any = None,
    inputs: Sequence[str] | None = None,
    params: Sequence[Parameter] | Mapping[str, Any] | None = None,
    as_parameters: Sequence[str] = (),
    nan_policy: str = "raise",
) -> tuple[ParametricModel | ModuleModel, Dataset]:
    """Build the model and the dataset it reads, taking as inputs only the columns the model uses.

    Parameters
    ----------
    model
        A formula, built-in name, callable, ``torch.nn.Module`` or model, as :func:`fit` accepts it.
    x, y, sigma
        The data, as for :func:`fit`; ``y`` and ``sigma`` may name columns of a frame or mapping ``x``.
    inputs
        Columns of a frame or mapping that may be inputs (default: every column but ``y`` and
        ``sigma``); for an array ``x``, the names of its columns.
    params
        Starting values, bounds and fixed flags: :class:`~gradfit.model.Parameter` objects or
        ``{name: value or {"init": ..., "lower": ..., ...}}``, as :func:`~gradfit.model.make_model` takes.
    as_parameters
        Names that are parameters of a formula even where a column has that name.
    nan_policy
        ``"raise"`` or ``"omit"`` (drop rows with a missing value in a column the fit reads).

    Returns
    -------
    model : ParametricModel or ModuleModel
        The built model; a module without input names gets the dataset's.
    dataset : Dataset
        The target, ``sigma`` and the inputs: from a frame or mapping, ``inputs`` if given, else the
        model's input columns (every candidate column for a model that names none); from arrays,
        every column of ``x``.

    Raises
    ------
    ModelError
        If the model cannot be built, or a formula reads the target or sigma column as an input.
    DataError
        If the data cannot be read (length mismatches, missing or non-numeric values, bad names).
    """
    if isinstance(y, str) or _is_table(x):
        roles = {v for v in (y, sigma) if isinstance(v, str)}
        _check_roles(model, [(y, "target"), (sigma, "sigma")])
        columns = [c for c in _column_names(x) if c not in roles and (not inputs or c in inputs)]
        built = make_model(model, columns, params, as_parameters)
        names = inputs or built.input_names or columns
        dataset = as_dataset(x, y, input_names=list(names), sigma=sigma, nan_policy=nan_policy)
        if isinstance(built, ModuleModel) and not built.input_names:
            built = replace(built, input_names=dataset.input_names)
        return built, dataset
    dataset = as_dataset(_as_array(x), _as_array(y), input_names=inputs, sigma=_as_array(sigma), nan_policy=nan_policy)
    built = make_model(model, dataset.input_names, params, as_parameters)
    if isinstance(built, ModuleModel) and not built.input_names:
        built = replace(built, input_names=dataset.input_names)
    return built, dataset


def _check_roles(model: Any, roles: Sequence[tuple[Any, str]]) -> None:
    """A formula cannot read the target or sigma column as an input."""
    from gradfit.errors import FormulaError
    from gradfit.model import parse_formula

    if not isinstance(model, str) or not any(isinstance(column, str) for column, _ in roles):
        return
    try:
        names = parse_formula(model).names
    except FormulaError:
        return  # a built-in model's name, or a formula error make_model reports
    for column, role in roles:
        if isinstance(column, str) and column in names:
            raise ModelError(
                f"'{column}' is the {role} column, so the formula cannot also read it as an input — "
                f"name another {role} column or rename this one"
            )


def _is_table(x: Any) -> bool:
    return isinstance(x, Mapping) or (hasattr(x, "columns") and not hasattr(x, "dim"))


def _column_names(x: Any) -> list[str]:
    return [str(c) for c in (x.keys() if isinstance(x, Mapping) else x.columns)]


def _as_array(values: Any) -> Any:
    return np.asarray(values) if isinstance(values, (list, tuple)) else values


def fit_dataset(
    model: ParametricModel | ModuleModel,
    dataset: Dataset,
    options: FitOptions,
    validation: Dataset | None = None,
    *,
    shared: bool = False,
) -> FitResult:
    """Fit a built model to a :class:`~gradfit.data.Dataset` (the CLI enters here).

    Parameters
    ----------
    model
        A model from :func:`gradfit.model.make_model`.
    dataset
        The data; split into training and validation parts by ``options.val`` unless
        ``validation`` is given.
    options
        The fit's settings.
    validation
        An explicit validation set.
    shared
        Whether ``options`` are shared by several models (a comparison): settings this model's
        solver does not read are then ignored, not refused.

    Raises
    ------
    OptionError
        If ``options`` set what the chosen solver would ignore (``epochs`` of an exact solve,
        ``starts`` of gradient descent), unless ``shared``.

    Returns
    -------
    FitResult
        Parameters with standard errors, losses, history, status and statistics, with the
        in-memory predictor attached.
    """
    train_set, val_set = split_dataset(dataset, options, validation)
    if hasattr(model, "with_initial_guess"):  # built-in models guess their start from the training rows
        model = model.with_initial_guess(train_set)
    if isinstance(model, ParametricModel):
        check_enough_rows(train_set.n_rows, sum(not p.fixed for p in model.parameters))
        check_squares_representable(train_set.y, train_set.sigma)
    problem = _problem(model, train_set, val_set, options)
    name, reason = choose_solver(model, options, problem.bounded)
    if not shared:
        check_options_used(name, reason, options)
        _check_device_used(name, reason, model, options)
    with _thread_policy(model, train_set, name), _placement_kept(model, options.optimizer):
        started = time.perf_counter()
        outcome = get_solver(name)(problem, options)
        elapsed = time.perf_counter() - started
        return _assemble(problem, outcome, options, name, reason, elapsed, dataset)


def check_options_used(name: str, reason: str, options: FitOptions) -> None:
    """Refuse settings solver ``name`` would ignore: an ignored option reads as one that worked."""
    unused = unused_options(name, options)
    if unused:
        raise OptionError(unused_message(f"this fit uses the {name} solver ({reason})", unused))


def _check_device_used(name: str, reason: str, model: Any, options: FitOptions) -> None:
    """Refuse ``device="cuda"`` where the solve runs on numpy (a formula's least-squares fit)."""
    if options.device == "cuda" and not needs_torch(name, model):
        raise OptionError(
            f"this fit uses the {name} solver ({reason}), which runs on numpy, so device 'cuda' (--device cuda) would "
            "be ignored — drop it (it is for networks, Python-function models and gradient descent), or add --optimizer"
        )


@contextlib.contextmanager
def _placement_kept(model: Any, optimizer: Any) -> Any:
    """A network returns to its own dtype and device after the fit (:meth:`ModuleModel.placement_kept`),
    and so does the state of an optimizer instance the user passed for it."""
    if not isinstance(model, ModuleModel):
        yield
        return
    try:
        with model.placement_kept():
            yield
    finally:
        if hasattr(optimizer, "param_groups"):
            from gradfit.solvers.gradient import match_state_to_parameters

            match_state_to_parameters(optimizer)


def _thread_policy(model: Any, train: Dataset, solver: str) -> Any:
    """Torch's thread policy for the solve (:mod:`gradfit.threads`); numpy solves need none."""
    if not needs_torch(solver, model):
        return contextlib.nullcontext()
    parametric = isinstance(model, ParametricModel)
    return threads_for(train.n_rows * max(1, model.n_params) if parametric else SMALL_PROBLEM)


def split_dataset(
    dataset: Dataset, options: FitOptions, validation: Dataset | None = None
) -> tuple[Dataset, Dataset | None]:
    """Training and validation parts: ``validation`` if given, else a seeded ``options.val`` holdout.

    Parameters
    ----------
    dataset
        All the rows.
    options
        The fit's settings; ``val`` (fraction held out) and ``seed`` are read.
    validation
        An explicit validation set; ``dataset`` is then used whole for training.

    Returns
    -------
    train : Dataset
        The training rows (all of ``dataset`` with ``validation`` or ``options.val <= 0``).
    validation : Dataset or None
        ``validation`` if given, else the held-out rows of
        :func:`~gradfit.data.holdout_split`, else ``None`` when ``options.val <= 0``.
    """
    if validation is not None:
        return dataset, validation
    if options.val <= 0:
        return dataset, None
    train_idx, val_idx = holdout_split(dataset.n_rows, options.val, options.seed)
    return dataset.subset(train_idx), dataset.subset(val_idx)


def _split(dataset: Dataset, dtype: str, constant: bool = False) -> Split:
    """The solvers' view of ``dataset``. A ``constant`` model (one that reads no input: a mean)
    evaluates to one number; unit weights give its residuals and Jacobian a row per point, as
    sigma does."""

    def array(values: np.ndarray) -> np.ndarray:
        return values.astype(dtype, copy=False)

    weights = None if dataset.sigma is None else array(1.0 / dataset.sigma)
    if weights is None and constant:
        weights = np.ones(dataset.n_rows, dtype=dtype)
    return Split({k: array(v) for k, v in dataset.inputs.items()}, array(dataset.y), weights)


def _problem(
    model: ParametricModel | ModuleModel, train: Dataset, val: Dataset | None, options: FitOptions
) -> Problem:
    dtype = options.dtype
    common = {"loss": options.loss, "loss_scale": options.loss_scale, "dtype": dtype, "device": options.device}
    constant = isinstance(model, ParametricModel) and not model.input_names
    train_split = _split(train, dtype, constant)
    val_split = None if val is None else _split(val, dtype, constant)
    if isinstance(model, ModuleModel):
        return Problem(model, train_split, val_split, **common)
    params = model.parameters
    return Problem(
        model,
        train_split,
        val_split,
        theta0=np.array([p.start for p in params], dtype=dtype),
        free=np.array([not p.fixed for p in params]),
        lower=np.array([p.lower for p in params], dtype=dtype),
        upper=np.array([p.upper for p in params], dtype=dtype),
        **common,
    )


def _assemble(
    problem: Problem,
    outcome: SolveOutcome,
    options: FitOptions,
    solver: str,
    reason: str,
    elapsed: float,
    dataset: Dataset,
) -> FitResult:
    summary = summarize(problem, outcome, options)
    model = problem.model
    return FitResult(
        model=model.description,
        model_kind=_kind(model),
        input_names=tuple(model.input_names),
        y_name=dataset.y_name,
        parameters=summary.parameters,
        solver=solver,
        solver_reason=reason,
        status=outcome.status,
        message=outcome.message,
        success=outcome.success,
        iterations=outcome.iterations,
        loss=options.loss,
        train_loss=summary.train_loss,
        val_loss=summary.val_loss,
        n_train=problem.train.n_rows,
        n_val=0 if problem.val is None else problem.val.n_rows,
        covariance=summary.covariance,
        statistics=summary.statistics,
        history=outcome.history,
        settings={**_settings_record(options, dataset), **outcome.settings},
        warnings=summary.warnings + _setting_warnings(model, options, dataset),
        elapsed=elapsed,
        predictor=summary.predictor,
    )


#: the warning of a fit with absolute_sigma and no sigma
UNIT_SIGMA_WARNING = (
    "absolute_sigma without sigma takes every point's error to be 1 (in the units of y), and the standard "
    "errors assume it — give sigma, or leave absolute_sigma off to estimate the errors from the residuals"
)


def _setting_warnings(model: Any, options: FitOptions, dataset: Dataset) -> tuple[str, ...]:
    """What the settings made the fit do that its user may not expect: absolute sigma without
    sigma, and starting values outside the bounds (moved inside them, as lmfit does)."""
    if not isinstance(model, ParametricModel):
        return ()
    unit = (UNIT_SIGMA_WARNING,) if options.absolute_sigma and dataset.sigma is None else ()
    rounded = _float32_warnings(dataset) if options.dtype == "float32" else ()
    moved = tuple(
        f"the starting value of {p.name}, {p.init:g}, is outside its bounds [{p.lower:g}, {p.upper:g}]: "
        f"the fit started from {p.start:g}"
        for p in model.parameters
        if not p.fixed and p.init is not None and not p.lower <= p.init <= p.upper
    )
    return unit + rounded + moved


#: float32 rounding of a column above this fraction of its range is worth a warning
FLOAT32_ROUNDING = 1e-4


def _float32_warnings(dataset: Dataset) -> tuple[str, ...]:
    """Columns that float32 rounds by a visible fraction of their range (timestamps, offsets)."""
    out = []
    for name, values in {**dataset.inputs, dataset.y_name: dataset.y}.items():
        column = np.asarray(values, dtype=np.float64)
        spread = float(np.ptp(column)) if column.size else 0.0
        with np.errstate(all="ignore"):
            lost = float(np.max(np.abs(column - column.astype(np.float32)))) if column.size else 0.0
        if spread > 0 and lost > FLOAT32_ROUNDING * spread:
            centre = 0.5 * (float(column.min()) + float(column.max()))
            out.append(
                f"'{name}' loses digits in float32: rounding moves it by up to {lost:.3g}, {lost / spread:.2%} of its range — "
                f"fit in float64 (the default), or subtract an offset from the column before the fit (e.g. {name} - {centre:.10g}: "
                "in the formula it comes too late, after the rounding)"
            )
    return tuple(out)


def _kind(model: Any) -> str:
    if isinstance(model, FormulaModel):
        return "formula"
    if isinstance(model, CallableModel):
        return "callable"
    return "module"


def _settings_record(options: FitOptions, dataset: Dataset) -> dict[str, Any]:
    optimizer = options.optimizer
    return {
        "solver": options.solver,
        "loss_scale": options.loss_scale,
        "optimizer": None if optimizer is None else optimizer_label(optimizer),
        "optimizer_options": {k: v if isinstance(v, (int, float, str, bool)) or v is None else list(v) for k, v in options.optimizer_options.items()},
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "target": options.target,
        "patience": options.patience,
        "plateau": options.plateau,
        "max_iter": options.max_iter,
        "starts": options.starts,
        "nan_policy": options.nan_policy,
        "val": options.val,
        "seed": options.seed,
        "scale": options.scale,
        "dtype": options.dtype,
        "device": options.device,
        "absolute_sigma": options.absolute_sigma,
        "weighted": dataset.sigma is not None,
        "confidence": options.confidence,
        "rows_dropped": int(getattr(dataset, "n_dropped", 0)),
        "data_summary": _data_summary(dataset),
        **_versions(),
    }


def _data_summary(dataset: Dataset) -> dict[str, Any]:
    from gradfit.report_html import data_summary

    return data_summary(dataset)


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    """Versions of gradfit, numpy and torch (read from the installed metadata: a fit that needs
    no torch does not import it to learn its version)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:  # pragma: no cover - torch is a dependency
        torch_version = "not installed"
    return {"torch": torch_version, "numpy": np.__version__, "gradfit": _version()}


def _version() -> str:
    from gradfit import __version__

    return __version__


"""Batched fits: K independent fits of one model in one call (a fleet of sensors, every pixel).

Rows are grouped by a key column, padded into ``(K, n_max)`` blocks with a mask
(:mod:`gradfit.packing`) and solved chunk by chunk, so memory stays bounded whatever K is. Each chunk
runs one batched solve — the exact QR solve for models linear in their parameters, the batched
Levenberg-Marquardt of :mod:`gradfit.solvers.least_squares` otherwise — and one batched pass of
:func:`gradfit.stats.fit_report`. A group whose data are not finite, or that has fewer points than
free parameters, is reported with its own status and never disturbs the others.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.errors import DataError, ModelError, OptionError
from gradfit.model import FormulaModel, ParametricModel, make_model, overrides_from
from gradfit.packing import GroupIndex, PackedGroups, chunks, finite_groups, first_in_group, index_groups, pack

if TYPE_CHECKING:
    import polars as pl
    import torch

__all__ = ["GroupFitResult", "fit_groups", "auto_chunk_size"]

#: status of groups that were not fitted
BAD_DATA, TOO_FEW = "bad_data", "too_few_points"
#: upper limit of groups per chunk (larger chunks stop paying off; see MEASURED.md)
MAX_CHUNK = 16_384


@dataclass(frozen=True)
class GroupFitResult:
    """Per-group results of :func:`fit_groups`.

    Attributes
    ----------
    table
        One row per group: the key, ``n_points``, each parameter and its ``_stderr``, ``r2``,
        ``redchi``, ``aic``, ``bic``, ``iterations``, ``status``, ``success``, ``message`` and, with a
        validation fraction, ``val_loss``.
    model
        The model's description.
    param_names
        Parameter names.
    group
        Name of the key column.
    solver
        The solver used for the fitted groups.
    elapsed
        Wall time of the solves (seconds).
    settings
        Options that produced the fits.
    """

    table: pl.DataFrame
    model: str
    param_names: tuple[str, ...]
    group: str
    solver: str
    elapsed: float
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        """Number of groups."""
        return self.table.height

    def status_counts(self) -> dict[str, int]:
        """Number of groups per status."""
        counts = self.table.group_by("status").len().sort("status")
        return dict(zip(counts["status"].to_list(), counts["len"].to_list()))

    def failed(self) -> pl.DataFrame:
        """Rows of the groups that did not converge."""
        import polars as pl

        return self.table.filter(~pl.col("success"))

    def worst(self, n: int = 5) -> pl.DataFrame:
        """The ``n`` groups with the lowest R² (failed groups first)."""
        import polars as pl

        return self.table.sort([pl.col("success"), pl.col("r2").fill_nan(-math.inf)], nulls_last=False).head(n)

    def summary(self) -> dict[str, Any]:
        """Counts by status and quantiles of R² and of each parameter over converged groups."""
        import polars as pl

        ok = self.table.filter(pl.col("success"))
        quantiles = (0.0, 0.05, 0.5, 0.95, 1.0)

        def spread(column: str) -> dict[str, float]:
            values = ok[column].drop_nans().drop_nulls()
            return {f"q{int(q * 100)}": float(values.quantile(q)) for q in quantiles} if values.len() else {}

        return {
            "groups": self.n_groups,
            "status": self.status_counts(),
            "r2": spread("r2"),
            "parameters": {name: spread(name) for name in self.param_names},
            "fits_per_second": self.n_groups / self.elapsed if self.elapsed > 0 else math.inf,
        }


def auto_chunk_size(n_points: int, n_params: int, itemsize: int = 8, budget: int | None = None) -> int:
    """Groups per chunk so that one chunk's working set stays within a quarter of free memory.

    Parameters
    ----------
    n_points, n_params
        Padded group size and number of parameters.
    itemsize
        Bytes per number (8 for float64).
    budget
        Memory budget in bytes (default: a quarter of the available memory).
    """
    per_group = max(1, n_points) * (n_params + 8) * itemsize * 6
    available = budget if budget is not None else _available_memory() // 4
    return int(max(64, min(MAX_CHUNK, available // per_group)))


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


@dataclass(frozen=True)
class _Plan:
    """What every chunk shares."""

    model: ParametricModel
    y: str
    sigma: str | None
    starts: dict[str, str]
    linear: bool
    options: dict[str, Any]


def fit_groups(
    model: Any,
    data: Any,
    *,
    group: str,
    y: str,
    sigma: str | None = None,
    params: Mapping[str, Any] | None = None,
    bounds: Mapping[str, tuple[float, float]] | str | None = None,
    fix: Mapping[str, float] | None = None,
    solver: str = "auto",
    loss: str = "mse",
    max_iter: int | None = None,
    tolerance: float | None = None,
    starts: int = 1,
    val: float = 0.0,
    seed: int = 0,
    chunk: int | None = None,
    dtype: str = "float64",
    device: str = "cpu",
    absolute_sigma: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> GroupFitResult:
    """Fit one model independently to every group of rows.

    Parameters
    ----------
    model
        A formula, a callable of torch tensors written with broadcasting operations, or a named
        built-in model; its parameters get a leading group dimension.
    data
        A polars/pandas frame, a mapping of columns, or a path to a CSV/Parquet/NDJSON file.
    group
        The column whose values identify the groups.
    y, sigma
        Target column, and optional column of standard deviations.
    params
        Starting values: a number for every group, or the name of a column whose first value in
        each group starts that group's fit.
    bounds, fix
        As in :func:`gradfit.fit`.
    solver
        ``"auto"`` (exact for linear models, else ``"lm"``), ``"lm"`` or ``"gn"``.
    loss
        A least-squares loss (``mse``, ``huber``, ``soft_l1``, ``cauchy``).
    max_iter, tolerance
        Iteration cap and relative tolerance of the nonlinear solver (defaults: its certified-accuracy
        settings); e.g. ``max_iter=10, tolerance=1e-4`` for Gpufit's settings.
    starts
        Starting points per group (jittered), solved together; the best is kept.
    val
        Fraction of each group's points held out (seeded) for a per-group validation loss.
    seed
        Seed of the validation split and the jittered starts.
    chunk
        Groups per chunk; default from the available memory (:func:`auto_chunk_size`).
    dtype, device
        ``"float64"``/``"float32"`` and ``"cpu"``/``"cuda"``/``"auto"``.
    absolute_sigma
        As in :func:`gradfit.fit`.
    callback
        Called after each chunk with ``(groups done, groups in all)``.

    Returns
    -------
    GroupFitResult
    """
    import polars as pl

    frame = _frame(data)
    _check_columns(frame, [group, y] + ([sigma] if sigma else []))
    built, column_starts = _model(model, frame, group, y, sigma, params, bounds, fix)
    plan = _Plan(built, y, sigma, column_starts, _is_linear(built, solver, loss), dict(
        solver=solver, loss=loss, max_iter=max_iter, tolerance=tolerance, starts=starts, val=val, seed=seed,
        dtype=dtype, device=_device(device), absolute_sigma=absolute_sigma,
    ))
    index = index_groups(frame[group].to_numpy())
    columns = _columns(frame, built, y, sigma, column_starts)
    size = chunk or auto_chunk_size(int(index.counts.max()), built.n_params, 4 if dtype == "float32" else 8)
    started, parts = time.perf_counter(), []
    for part in chunks(index.n_groups, size):
        parts.append(_fit_chunk(plan, columns, index, part))
        if callback is not None:
            callback(part.stop, index.n_groups)
    elapsed = time.perf_counter() - started
    table = pl.concat(parts, how="vertical_relaxed").with_columns(pl.Series(group, index.keys))
    table = table.select([group, *[c for c in table.columns if c != group]])
    return GroupFitResult(table, built.description, built.param_names, group, _solver_name(plan), elapsed, dict(plan.options))


def _frame(data: Any) -> pl.DataFrame:
    import polars as pl

    from gradfit.data import read_table

    if isinstance(data, pl.DataFrame):
        return data
    if isinstance(data, (str,)) or hasattr(data, "__fspath__"):
        return read_table(data)
    if isinstance(data, Mapping):
        return pl.DataFrame({k: np.asarray(v) for k, v in data.items()})
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):
        return pl.DataFrame({str(c): data[c].to_numpy() for c in data.columns})
    raise DataError(f"cannot read groups from {type(data).__name__} — give a data frame, a mapping or a file path")


def _check_columns(frame: pl.DataFrame, names: Sequence[str]) -> None:
    import difflib

    for name in names:
        if name not in frame.columns:
            close = difflib.get_close_matches(name, frame.columns, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise DataError(f"unknown column '{name}'{hint} (columns: {', '.join(frame.columns)})")


def _model(
    spec: Any, frame: pl.DataFrame, group: str, y: str, sigma: str | None,
    params: Mapping[str, Any] | None, bounds: Any, fix: Mapping[str, float] | None,
) -> tuple[ParametricModel, dict[str, str]]:
    from gradfit.fitting import _merge_overrides

    column_starts = {k: v for k, v in (params or {}).items() if isinstance(v, str)}
    numeric = {k: v for k, v in (params or {}).items() if not isinstance(v, str)}
    roles = {group, y, sigma, *column_starts.values()}
    candidates = [c for c in frame.columns if c not in roles]
    built = make_model(spec, candidates, _merge_overrides(numeric, bounds, fix))
    if not isinstance(built, ParametricModel):
        raise ModelError("group fits need a parametric model (a formula or a function) — not a network")
    unknown = set(column_starts) - set(built.param_names)
    if unknown:
        raise ModelError(f"'{sorted(unknown)[0]}' is not a parameter of the model — its parameters are {', '.join(built.param_names)}")
    _check_columns(frame, list(column_starts.values()))
    return built, column_starts


def _columns(frame: pl.DataFrame, model: ParametricModel, y: str, sigma: str | None, starts: Mapping[str, str]) -> dict[str, np.ndarray]:
    import polars as pl

    names = [*model.input_names, y, *([sigma] if sigma else []), *starts.values()]
    columns = {}
    for name in dict.fromkeys(names):
        series = frame[name]
        if not (series.dtype.is_numeric() or series.dtype == pl.Boolean):
            raise DataError(f"column '{name}' is not numeric (type {series.dtype}) — convert it to numbers")
        columns[name] = series.cast(pl.Float64).to_numpy()
    return columns


def _is_linear(model: ParametricModel, solver: str, loss: str) -> bool:
    if solver not in ("auto", "linear", "lm", "gn"):
        raise OptionError(f"unknown group solver '{solver}' — choose auto, linear, lm or gn")
    bounded = any(p.bounded for p in model.parameters)
    linear = isinstance(model, FormulaModel) and model.is_linear and loss == "mse" and not bounded
    if solver == "linear" and not linear:
        raise OptionError("solver 'linear' needs an unbounded formula linear in its parameters and the mse loss — use 'lm'")
    return linear and solver in ("auto", "linear")


def _solver_name(plan: _Plan) -> str:
    return "linear" if plan.linear else ("gn" if plan.options["solver"] == "gn" else "lm")


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionError("no CUDA device is available — use --device cpu (or auto)")
    if device not in ("cpu", "cuda"):
        raise OptionError(f"unknown device '{device}' — choose cpu, cuda or auto")
    return device


# ------------------------------------------------------------------------------------- one chunk


@dataclass(frozen=True)
class _Chunk:
    """One chunk's tensors."""

    inputs: dict[str, torch.Tensor]
    y: torch.Tensor
    weights: torch.Tensor | None
    fit_mask: torch.Tensor
    val_mask: torch.Tensor | None
    counts: np.ndarray


def _fit_chunk(plan: _Plan, columns: Mapping[str, np.ndarray], index: GroupIndex, part: slice) -> pl.DataFrame:
    import torch

    packed = pack(columns, index, part)
    model = plan.model
    used = [packed.columns[n] for n in (*model.input_names, plan.y, *([plan.sigma] if plan.sigma else []))]
    finite = finite_groups(used, packed.mask) & _positive_sigma(packed, plan.sigma)
    theta0 = _starting_values(plan, columns, index, part)
    n_free = sum(not p.fixed for p in model.parameters)
    chunk = _tensors(plan, packed)
    enough = chunk.fit_mask.sum(-1).cpu().numpy() >= n_free
    ok = finite & enough
    status = np.where(~finite, BAD_DATA, np.where(~enough, TOO_FEW, ""))
    rows = _empty_rows(model, len(packed.counts), status)
    if ok.any():
        selected = torch.as_tensor(np.flatnonzero(ok), device=chunk.y.device)
        _solve(plan, _subset(chunk, selected), theta0[ok], rows, np.flatnonzero(ok))
    rows["n_points"] = packed.counts.astype(np.int64)
    return _table(rows, model)


def _positive_sigma(packed: PackedGroups, sigma: str | None) -> np.ndarray:
    if sigma is None:
        return np.ones(packed.mask.shape[0], dtype=bool)
    values = packed.columns[sigma]
    return np.all((values > 0) | (packed.mask == 0), axis=1)


def _starting_values(plan: _Plan, columns: Mapping[str, np.ndarray], index: GroupIndex, part: slice) -> np.ndarray:
    model = plan.model
    theta0 = np.tile(np.array([p.start for p in model.parameters]), (part.stop - part.start, 1))
    for name, column in plan.starts.items():
        theta0[:, model.param_names.index(name)] = first_in_group(columns[column], index, part)
    return theta0


def _tensors(plan: _Plan, packed: PackedGroups) -> _Chunk:
    import torch

    dtype, device = getattr(torch, plan.options["dtype"]), plan.options["device"]

    def tensor(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=dtype, device=device)

    real = tensor(np.nan_to_num(packed.mask))
    fit_mask, val_mask = real, None
    if plan.options["val"] > 0:
        generator = np.random.default_rng(plan.options["seed"])
        held = (generator.random(packed.mask.shape) < plan.options["val"]) & (packed.mask > 0)
        val_mask = tensor(held.astype(float))
        fit_mask = real - val_mask
    weights = None if plan.sigma is None else tensor(1.0 / np.where(packed.mask > 0, packed.columns[plan.sigma], 1.0))
    inputs = {name: tensor(np.nan_to_num(packed.columns[name])) for name in plan.model.input_names}
    return _Chunk(inputs, tensor(np.nan_to_num(packed.columns[plan.y])), weights, fit_mask, val_mask, packed.counts)


def _subset(chunk: _Chunk, selected: torch.Tensor) -> _Chunk:
    def take(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.index_select(0, selected)

    return _Chunk(
        {k: take(v) for k, v in chunk.inputs.items()}, take(chunk.y), take(chunk.weights),
        take(chunk.fit_mask), take(chunk.val_mask), chunk.counts[selected.cpu().numpy()],
    )


def _empty_rows(model: ParametricModel, k: int, status: np.ndarray) -> dict[str, np.ndarray]:
    nan = np.full(k, np.nan)
    rows: dict[str, np.ndarray] = {}
    for name in model.param_names:
        rows[name], rows[f"{name}_stderr"] = nan.copy(), nan.copy()
    for name in ("r2", "redchi", "aic", "bic", "val_loss"):
        rows[name] = nan.copy()
    rows["iterations"] = np.zeros(k, dtype=np.int64)
    rows["status"] = status.astype(object)
    rows["message"] = np.array([_not_fitted_message(s) for s in status], dtype=object)
    return rows


def _not_fitted_message(status: str) -> str:
    if status == BAD_DATA:
        return "not fitted: the group has missing or non-finite values (or sigma <= 0) — clean its rows"
    if status == TOO_FEW:
        return "not fitted: fewer points than free parameters — fix parameters or merge groups"
    return ""


def _weights(chunk: _Chunk) -> torch.Tensor:
    return chunk.fit_mask if chunk.weights is None else chunk.fit_mask * chunk.weights


def _solve(plan: _Plan, chunk: _Chunk, theta0: np.ndarray, rows: dict[str, np.ndarray], where: np.ndarray) -> None:
    import torch

    model = plan.model
    weights = _weights(chunk)
    start = torch.as_tensor(theta0, dtype=chunk.y.dtype, device=chunk.y.device)
    if plan.linear:
        theta, status, message, iterations, success = _solve_linear(model, chunk, weights, start)
    else:
        theta, status, message, iterations, success = _solve_nonlinear(plan, chunk, weights, start)
    _statistics(plan, chunk, weights, theta, rows, where)
    rows["iterations"][where] = iterations
    rows["status"][where] = status
    rows["message"][where] = message
    rows.setdefault("success", np.zeros(len(rows["status"]), dtype=bool))
    rows["success"][where] = success


def _solve_linear(model: FormulaModel, chunk: _Chunk, weights: torch.Tensor, start: torch.Tensor) -> tuple:
    import torch

    from gradfit.solvers.linear import batched_least_squares

    offset, design = model.design(chunk.inputs)
    free = torch.tensor([not p.fixed for p in model.parameters], device=start.device)
    rhs = (chunk.y - offset - design[..., ~free] @ start[:, ~free, None][..., 0] if (~free).any() else chunk.y - offset) * weights
    solution, singular = batched_least_squares(design[..., free] * weights[..., None], rhs)
    theta = start.clone()
    theta[:, free] = solution
    singular = singular.cpu().numpy()
    status = np.where(singular, "singular", "converged")
    message = np.where(singular, "the design matrix is singular: parameters cannot be told apart by this group's data",
                       "solved exactly: one least-squares solve")
    return theta, status, message, 1, ~singular


def _solve_nonlinear(plan: _Plan, chunk: _Chunk, weights: torch.Tensor, start: torch.Tensor) -> tuple:
    import torch

    from gradfit.losses import SOLVER_LOSS
    from gradfit.solvers.least_squares import LeastSquaresOptions, solve_least_squares
    from gradfit.solvers.lsq import starting_points

    model, options = plan.model, plan.options
    lower = torch.tensor([p.lower for p in model.parameters], dtype=start.dtype)
    upper = torch.tensor([p.upper for p in model.parameters], dtype=start.dtype)
    fixed = torch.tensor([p.fixed for p in model.parameters])
    n_starts = options["starts"]
    theta0 = start if n_starts == 1 else torch.cat([starting_points(row, ~fixed, n_starts, options["seed"]) for row in start])
    replicate = (lambda t: t) if n_starts == 1 else (lambda t: t.repeat_interleave(n_starts, dim=0))
    inputs = {k: replicate(v) for k, v in chunk.inputs.items()}
    y, w = replicate(chunk.y), replicate(weights)

    def residual_and_jacobian(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prediction, jac = _predict_and_jacobian(model, inputs, theta)
        return (prediction - y) * w, jac * w[..., None]

    solution = solve_least_squares(
        lambda theta: (model.predict(inputs, theta) - y) * w,
        theta0,
        residual_and_jacobian_fn=residual_and_jacobian if isinstance(model, FormulaModel) else None,
        lower=lower, upper=upper, fixed=fixed, loss=SOLVER_LOSS[options["loss"]], method="gn" if options["solver"] == "gn" else "lm",
        options=_solver_options(options),
    )
    best = _best_of_starts(solution, len(start), n_starts)
    statuses = [solution.status[i] for i in best]
    theta = solution.theta[torch.as_tensor(best)]
    status = np.array(["converged" if s.converged else s.name.lower() for s in statuses], dtype=object)
    message = np.array([s.value for s in statuses], dtype=object)
    return theta, status, message, solution.n_iter[torch.as_tensor(best)].cpu().numpy(), np.array([s.converged for s in statuses])


def _predict_and_jacobian(model: ParametricModel, inputs: Mapping[str, torch.Tensor], theta: torch.Tensor) -> tuple:
    if isinstance(model, FormulaModel):
        return model.predict_and_jacobian(inputs, theta)
    import torch

    jac = torch.func.vmap(torch.func.jacfwd(lambda t, x: model.predict(x, t)))(theta, dict(inputs))
    return model.predict(inputs, theta), jac


def _solver_options(options: Mapping[str, Any]) -> Any:
    from gradfit.solvers.least_squares import LeastSquaresOptions

    settings: dict[str, Any] = {}
    if options["max_iter"] is not None:
        settings["max_iter"] = options["max_iter"]
    if options["tolerance"] is not None:
        tolerance = options["tolerance"]
        settings.update(ftol=tolerance, xtol=tolerance, restarts=0)
    return LeastSquaresOptions(**settings)


def _best_of_starts(solution: Any, k: int, n_starts: int) -> list[int]:
    import torch

    cost = torch.where(torch.isfinite(solution.cost), solution.cost, torch.inf).reshape(k, n_starts)
    rank = cost + torch.where(solution.converged.reshape(k, n_starts).to(cost.device), 0.0, torch.inf)
    rank = torch.where(torch.isfinite(rank).any(-1, keepdim=True), rank, cost)
    return (torch.argmin(rank, dim=-1) + torch.arange(k) * n_starts).tolist()


def _statistics(plan: _Plan, chunk: _Chunk, weights: torch.Tensor, theta: torch.Tensor, rows: dict[str, np.ndarray], where: np.ndarray) -> None:
    import torch

    from gradfit import stats

    model = plan.model
    with torch.no_grad():
        prediction, jac = _predict_and_jacobian(model, chunk.inputs, theta)
        report = stats.fit_report(
            jac * weights[..., None], (prediction - chunk.y) * weights, chunk.y,
            weights=chunk.weights, absolute_sigma=plan.options["absolute_sigma"],
            free=torch.tensor([not p.fixed for p in model.parameters]), mask=chunk.fit_mask,
        )
        if chunk.val_mask is not None:
            squared = ((prediction - chunk.y) * (chunk.weights if chunk.weights is not None else 1.0)) ** 2
            val = (squared * chunk.val_mask).sum(-1) / chunk.val_mask.sum(-1)
            rows["val_loss"][where] = val.cpu().numpy()
    values, stderr = theta.cpu().numpy(), report.stderr.cpu().numpy()
    for i, name in enumerate(model.param_names):
        rows[name][where] = values[:, i]
        rows[f"{name}_stderr"][where] = stderr[:, i]
    for name in ("r2", "redchi", "aic", "bic"):
        rows[name][where] = np.asarray(report.statistics[name].cpu())


def _table(rows: dict[str, np.ndarray], model: ParametricModel) -> pl.DataFrame:
    import polars as pl

    rows.setdefault("success", np.zeros(len(rows["status"]), dtype=bool))
    order = ["n_points", *[c for n in model.param_names for c in (n, f"{n}_stderr")], "r2", "redchi", "aic", "bic", "val_loss", "iterations", "status", "success", "message"]
    return pl.DataFrame({name: (rows[name].tolist() if rows[name].dtype == object else rows[name]) for name in order})

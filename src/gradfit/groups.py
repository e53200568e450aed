"""Batched fits: K independent fits of one model in one call (a fleet of sensors, every pixel).

Rows are grouped by a key column, padded into ``(K, n_max)`` blocks with a mask
(:mod:`gradfit.packing`) and solved chunk by chunk, so memory stays bounded whatever K is. A group
whose data are not finite, or that has fewer points than free parameters, is reported with its own
status and never disturbs the others.

Solvers (``solver="auto"`` picks the first that applies):

``linear``
    Formulas linear in their parameters (mse, unbounded): the normal equations of every group,
    solved by the fused batched solver of :mod:`gradfit.solvers.batched` with iterative
    refinement (a Gauss-Newton step from the solution changes nothing); groups whose normal
    equations are ill-conditioned (scaled condition bound above :data:`CONDITION_ACCURATE`) or
    singular are solved again by the exact batched QR/SVD solve.
``batched``
    Other formulas with the mse loss and one starting point: the fused batched Levenberg-Marquardt
    of :mod:`gradfit.solvers.batched` (symbolic Jacobian, normal equations and per-fit damping in
    a few passes per iteration; about 10⁵ fits/s on one CPU core). With default settings it runs to
    the reference solver's tolerances, and a group it does not bring to convergence within
    :data:`FAST_MAX_ITER` trials (or that converges where a parameter ran off to infinity, or
    where ``JᵀJ`` is ill-conditioned) is solved again, from its starting values, by the reference
    solver — so every group's result is
    the one-at-a-time :func:`gradfit.fit` result. With ``max_iter``/``tolerance`` given (speed
    settings, e.g. Gpufit's ``max_iter=10, tolerance=1e-4``) it runs exactly those and reports each
    group's status as it ended.
``lm`` / ``gn``
    The reference batched Levenberg-Marquardt / Gauss-Newton of :mod:`gradfit.solvers.least_squares`
    (robust losses, callables, several starting points, or when asked for by name).

Standard errors of the fast paths come from the Cholesky factor of ``JᵀJ`` that the solver has at
the solution; where that would lose digits (scaled condition bound above :data:`CONDITION_ACCURATE`
with default settings: the group is solved again as above; above :data:`CONDITION_FAST` with speed
settings) or ``JᵀJ`` is singular, a group gets the SVD-based :func:`gradfit.stats.fit_report`, as
every group of the reference paths does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
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
#: upper limit of groups per chunk on a CPU (larger chunks stop paying off; see MEASURED.md)
MAX_CHUNK = 16_384
#: upper limit on a GPU (every operation as large as memory allows)
MAX_CHUNK_CUDA = 262_144
#: solver names accepted by :func:`fit_groups`
SOLVERS = ("auto", "linear", "batched", "lm", "gn")
#: scaled condition bound of JᵀJ above which fast-path standard errors are recomputed by SVD
#: (default settings: the normal equations lose about log10(condition) of 16 digits)
CONDITION_ACCURATE = 1e6
#: the same bound with speed settings (max_iter or tolerance given)
CONDITION_FAST = 1e10
#: trials of the batched solver before the reference solver takes over a group (default settings)
FAST_MAX_ITER = 50
#: trials of the batched solver with only a tolerance given
FAST_DEFAULT_ITER = 200


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


def auto_chunk_size(n_points: int, n_params: int, itemsize: int = 8, budget: int | None = None, device: str = "cpu") -> int:
    """Groups per chunk so that one chunk's working set stays within a quarter of free memory.

    Parameters
    ----------
    n_points, n_params
        Padded group size and number of parameters.
    itemsize
        Bytes per number (8 for float64).
    budget
        Memory budget in bytes (default: a quarter of the available memory, or of the GPU's).
    device
        ``"cpu"`` (at most :data:`MAX_CHUNK` groups) or ``"cuda"`` (at most :data:`MAX_CHUNK_CUDA`).
    """
    per_group = max(1, n_points) * (n_params + 8) * itemsize * 6
    available = budget if budget is not None else _available_memory(device) // 4
    limit = MAX_CHUNK_CUDA if device == "cuda" else MAX_CHUNK
    return int(max(64, min(limit, available // per_group)))


def _available_memory(device: str = "cpu") -> int:
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
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
    path: str  # "linear", "batched" or "reference"
    options: dict[str, Any]
    system: Any = None  # the batched solver's compiled model + Jacobian (fast paths)

    @property
    def linear(self) -> bool:
        return self.path == "linear"

    @property
    def accurate(self) -> bool:
        """Default settings: results must equal one-at-a-time fits (no max_iter, no tolerance)."""
        return self.options["max_iter"] is None and self.options["tolerance"] is None

    @property
    def free(self) -> list[bool]:
        return [not p.fixed for p in self.model.parameters]


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
        ``"auto"`` (``"linear"`` for formulas linear in their parameters, else ``"batched"`` for
        formulas with the mse loss and one start, else ``"lm"``), ``"linear"``, ``"batched"`` (the
        fused batched Levenberg-Marquardt), ``"lm"`` or ``"gn"`` (the reference solvers); see the
        module notes.
    loss
        A least-squares loss (``mse``, ``huber``, ``soft_l1``, ``cauchy``).
    max_iter, tolerance
        Iteration cap and relative tolerance of the nonlinear solver (defaults: the reference
        solver's certified-accuracy settings, and every group's result equals its one-at-a-time
        :func:`gradfit.fit`); e.g. ``max_iter=10, tolerance=1e-4`` for Gpufit's settings, where
        each group stops when a Gauss-Newton step could lower its sum of squares by less than
        ``tolerance`` relative (or change every parameter by less) and says so in ``status``.
    starts
        Starting points per group (jittered), solved together; the best is kept.
    val
        Fraction of each group's points held out (seeded) for a per-group validation loss.
    seed
        Seed of the validation split and the jittered starts.
    chunk
        Groups per chunk; default from the available memory (:func:`auto_chunk_size`). On a CPU,
        ``torch.get_num_threads()`` chunks are fitted side by side (each with single-threaded
        operations); results do not depend on the thread count.
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
    path = _path(built, solver, loss, starts)
    plan = _Plan(built, y, sigma, column_starts, path, dict(
        solver=solver, loss=loss, max_iter=max_iter, tolerance=tolerance, starts=starts, val=val, seed=seed,
        dtype=_dtype(dtype), device=_device(device), absolute_sigma=absolute_sigma,
    ), _fast_system(built) if path != "reference" else None)
    index = index_groups(frame[group].to_numpy())
    columns = _columns(frame, built, y, sigma, column_starts)
    size = chunk or auto_chunk_size(int(index.counts.max()), built.n_params, 4 if dtype == "float32" else 8, device=plan.options["device"])
    started, parts = time.perf_counter(), []
    for part, table in _fit_chunks(plan, columns, index, list(chunks(index.n_groups, size))):
        parts.append(table)
        if callback is not None:
            callback(part.stop, index.n_groups)
    elapsed = time.perf_counter() - started
    table = pl.concat(parts, how="vertical_relaxed").with_columns(pl.Series(group, index.keys))
    table = table.select([group, *[c for c in table.columns if c != group]])
    return GroupFitResult(table, built.description, built.param_names, group, _solver_name(plan), elapsed, dict(plan.options))


def _fit_chunks(plan: _Plan, columns: Mapping[str, np.ndarray], index: GroupIndex, parts: list[slice]) -> Iterator[tuple[slice, pl.DataFrame]]:
    """Fit the chunks in order; on a CPU with several torch threads, chunks run side by side.

    Torch's own intra-op threads are no use on these operations (each touches one chunk's small
    arrays; on a busy machine two threads made them 10-30 times slower, see MEASURED.md), so
    every operation runs single-threaded. Instead, each of ``torch.get_num_threads()`` Python
    threads fits whole chunks (torch releases the GIL inside each operation). Chunks are
    independent and every fit's numbers are independent of its neighbours, so the results do not
    depend on the number of threads.
    """
    import torch

    threads = torch.get_num_threads()
    workers = min(threads, len(parts)) if plan.options["device"] == "cpu" else 1
    torch.set_num_threads(1)
    try:
        if workers <= 1:
            for part in parts:
                yield part, _fit_chunk(plan, columns, index, part)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="gradfit-groups") as pool:
            yield from zip(parts, pool.map(lambda part: _fit_chunk(plan, columns, index, part), parts))
    finally:
        torch.set_num_threads(threads)


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


def _path(model: ParametricModel, solver: str, loss: str, starts: int) -> str:
    """Which solver fits the groups: ``"linear"``, ``"batched"`` or ``"reference"``."""
    if solver not in SOLVERS:
        raise OptionError(f"unknown group solver '{solver}' — choose {', '.join(SOLVERS)}")
    formula = isinstance(model, FormulaModel)
    bounded = any(p.bounded for p in model.parameters)
    linear = formula and model.is_linear and loss == "mse" and not bounded
    if solver == "linear" and not linear:
        raise OptionError("solver 'linear' needs an unbounded formula linear in its parameters and the mse loss — use 'lm'")
    fast = formula and loss == "mse" and starts == 1
    if solver == "batched" and not fast:
        raise OptionError("solver 'batched' needs a formula model, the mse loss and one starting point — use 'lm'")
    if linear and solver in ("auto", "linear"):
        return "linear"
    if solver == "batched" or (solver == "auto" and fast):
        return "batched"
    return "reference"


def _solver_name(plan: _Plan) -> str:
    if plan.path != "reference":
        return plan.path
    return "gn" if plan.options["solver"] == "gn" else "lm"


def _fast_system(model: ParametricModel) -> Any:
    from gradfit.solvers.batched import formula_system

    return formula_system(model, [not p.fixed for p in model.parameters])


def _dtype(dtype: str) -> str:
    if dtype not in ("float64", "float32"):
        raise OptionError(f"unknown dtype '{dtype}' — choose float64 or float32")
    return dtype


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
    padded: bool = True  # some group has padding (or held-out) points: the mask matters


def _fit_chunk(plan: _Plan, columns: Mapping[str, np.ndarray], index: GroupIndex, part: slice) -> pl.DataFrame:
    import torch

    packed = pack(columns, index, part)
    model = plan.model
    used = [packed.columns[n] for n in (*model.input_names, plan.y, *([plan.sigma] if plan.sigma else []))]
    finite = finite_groups(used, packed.mask) & _positive_sigma(packed, plan.sigma)
    theta0 = _starting_values(plan, columns, index, part)
    n_free = sum(not p.fixed for p in model.parameters)
    chunk = _tensors(plan, packed, bool(finite.all()))
    enough = chunk.fit_mask.sum(-1).cpu().numpy() >= n_free
    ok = finite & enough
    status = np.where(~finite, BAD_DATA, np.where(~enough, TOO_FEW, ""))
    rows = _empty_rows(model, len(packed.counts), status)
    if ok.all():
        _solve(plan, chunk, theta0, rows, np.arange(len(ok)))
    elif ok.any():
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


def _tensors(plan: _Plan, packed: PackedGroups, all_finite: bool = False) -> _Chunk:
    import torch

    dtype, device = getattr(torch, plan.options["dtype"]), plan.options["device"]

    def tensor(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values if all_finite else np.nan_to_num(values), dtype=dtype, device=device)

    real = tensor(packed.mask)
    fit_mask, val_mask = real, None
    if plan.options["val"] > 0:
        generator = np.random.default_rng(plan.options["seed"])
        held = (generator.random(packed.mask.shape) < plan.options["val"]) & (packed.mask > 0)
        val_mask = tensor(held.astype(float))
        fit_mask = real - val_mask
    weights = None if plan.sigma is None else tensor(1.0 / np.where(packed.mask > 0, packed.columns[plan.sigma], 1.0))
    inputs = {name: tensor(packed.columns[name]) for name in plan.model.input_names}
    padded = val_mask is not None or bool((packed.counts < packed.mask.shape[1]).any())
    return _Chunk(inputs, tensor(packed.columns[plan.y]), weights, fit_mask, val_mask, packed.counts, padded)


def _subset(chunk: _Chunk, selected: torch.Tensor) -> _Chunk:
    def take(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.index_select(0, selected)

    return _Chunk(
        {k: take(v) for k, v in chunk.inputs.items()}, take(chunk.y), take(chunk.weights),
        take(chunk.fit_mask), take(chunk.val_mask), chunk.counts[selected.cpu().numpy()], chunk.padded,
    )


_NOT_FITTED = {
    BAD_DATA: "not fitted: the group has missing or non-finite values (or sigma <= 0) — clean its rows",
    TOO_FEW: "not fitted: fewer points than free parameters — fix parameters or merge groups",
}


def _empty_rows(model: ParametricModel, k: int, status: np.ndarray) -> dict[str, np.ndarray]:
    nan = np.full(k, np.nan)
    rows: dict[str, np.ndarray] = {}
    for name in model.param_names:
        rows[name], rows[f"{name}_stderr"] = nan.copy(), nan.copy()
    for name in ("r2", "redchi", "aic", "bic", "val_loss"):
        rows[name] = nan.copy()
    rows["iterations"] = np.zeros(k, dtype=np.int64)
    rows["status"] = status.astype(object)
    message = np.full(k, "", dtype=object)
    for name, text in _NOT_FITTED.items():
        message[status == name] = text
    rows["message"] = message
    rows["success"] = np.zeros(k, dtype=bool)
    return rows


def _weights(chunk: _Chunk) -> torch.Tensor:
    return chunk.fit_mask if chunk.weights is None else chunk.fit_mask * chunk.weights


def _solve(plan: _Plan, chunk: _Chunk, theta0: np.ndarray, rows: dict[str, np.ndarray], where: np.ndarray) -> None:
    import torch

    start = torch.as_tensor(theta0, dtype=chunk.y.dtype, device=chunk.y.device)
    if plan.path != "reference":
        _solve_fast(plan, chunk, start, rows, where)
        return
    weights = _weights(chunk)
    theta, status, message, iterations, success = _solve_nonlinear(plan, chunk, weights, start)
    _record(plan, chunk, weights, theta, rows, where, status, message, iterations, success)


def _record(plan: _Plan, chunk: _Chunk, weights: torch.Tensor, theta: torch.Tensor, rows: dict[str, np.ndarray],
            where: np.ndarray, status: Any, message: Any, iterations: Any, success: Any) -> None:
    """Statistics by SVD (:func:`gradfit.stats.fit_report`) and the solver's verdict into ``rows``."""
    _statistics(plan, chunk, weights, theta, rows, where)
    rows["iterations"][where] = iterations
    rows["status"][where] = status
    rows["message"][where] = message
    rows["success"][where] = success


def _subset_where(chunk: _Chunk, start: torch.Tensor, where: np.ndarray, mask: np.ndarray) -> tuple[_Chunk, torch.Tensor, np.ndarray]:
    import torch

    selected = torch.as_tensor(np.flatnonzero(mask), device=start.device)
    return _subset(chunk, selected), start.index_select(0, selected), where[mask]


def _solve_fast(plan: _Plan, chunk: _Chunk, start: torch.Tensor, rows: dict[str, np.ndarray], where: np.ndarray) -> None:
    """The fused batched solver; groups it cannot settle go to the exact or reference path."""
    import torch

    from gradfit.solvers.batched import CONVERGED, STATUS_MESSAGES, STATUS_NAMES, solve_batched

    model = plan.model
    data: dict[str, torch.Tensor] = {**chunk.inputs, "__y": chunk.y}
    if chunk.weights is not None or chunk.padded:
        data["__w"] = _weights(chunk)
    solution = solve_batched(
        plan.system, start, data, free=plan.free,
        lower=[p.lower for p in model.parameters], upper=[p.upper for p in model.parameters],
        options=_batched_options(plan),
    )
    code = solution.code.cpu().numpy()
    stats = _fast_statistics(plan, chunk, solution)
    condition = stats.pop("condition")
    if plan.linear or plan.accurate:  # the exact solve / reference solver for what did not settle
        redo = (code != CONVERGED) | solution.vanished.cpu().numpy() | ~(condition <= CONDITION_ACCURATE)
    else:
        redo = np.zeros(code.shape, dtype=bool)
    svd = ~redo & ~(condition <= CONDITION_FAST)  # ill-conditioned or singular: SVD statistics
    keep = ~redo
    at = where[keep]
    theta = solution.theta.cpu().numpy()
    for i, name in enumerate(model.param_names):
        rows[name][at] = theta[keep, i]
    for name, values in stats.items():
        rows[name][at] = values[keep]
    rows["iterations"][at] = solution.n_iter.cpu().numpy()[keep]
    names, messages = np.array(STATUS_NAMES, dtype=object), np.array(STATUS_MESSAGES, dtype=object)
    if plan.linear:
        messages = messages.copy()
        messages[CONVERGED] = "solved: normal equations with iterative refinement"
    rows["status"][at] = names[code[keep]]
    rows["message"][at] = messages[code[keep]]
    rows["success"][at] = code[keep] == CONVERGED
    if chunk.val_mask is not None:
        rows["val_loss"][at] = _validation_loss(model, chunk, solution.theta)[keep]
    if svd.any():
        part, _, part_where = _subset_where(chunk, start, where, svd)
        theta_svd = solution.theta.index_select(0, torch.as_tensor(np.flatnonzero(svd), device=start.device))
        _statistics(plan, part, _weights(part), theta_svd, rows, part_where)
    if redo.any():
        part, part_start, part_where = _subset_where(chunk, start, where, redo)
        weights = _weights(part)
        solve = _solve_linear if plan.linear else _solve_nonlinear
        theta_redo, status, message, iterations, success = solve(plan, part, weights, part_start)
        _record(plan, part, weights, theta_redo, rows, part_where, status, message, iterations, success)


def _batched_options(plan: _Plan) -> Any:
    from gradfit.solvers.batched import BatchedOptions

    options = plan.options
    if plan.linear:  # Gauss-Newton steps (tiny damping): the first lands on the solution, the next refine it
        return BatchedOptions(max_iter=5, initial_damping=1e-12)
    if plan.accurate:
        return BatchedOptions(max_iter=FAST_MAX_ITER)
    tolerance = options["tolerance"]
    settings: dict[str, Any] = {"max_iter": options["max_iter"] if options["max_iter"] is not None else FAST_DEFAULT_ITER}
    if tolerance is not None:
        settings.update(ftol=tolerance, xtol=tolerance)
    return BatchedOptions(**settings)


def _fast_statistics(plan: _Plan, chunk: _Chunk, solution: Any) -> dict[str, np.ndarray]:
    """Standard errors, R², reduced χ², AIC, BIC from the batched solver's ``JᵀJ`` factor.

    The same conventions as :func:`gradfit.stats.fit_report`: ``s² = χ²/(n - p)`` (or 1 with
    ``absolute_sigma``), fixed parameters' errors NaN, R² about the ``1/σ²``-weighted mean.
    Also returns ``condition`` (the scaled condition bound; NaN where not finite).
    """
    import torch

    from gradfit import stats

    model = plan.model
    free = plan.free
    n_free = sum(free)
    n_points = chunk.fit_mask.sum(-1)
    dof = n_points - n_free
    chisqr = solution.chisqr
    if plan.options["absolute_sigma"]:
        s2 = torch.ones_like(chisqr)
    else:
        s2 = torch.where(dof > 0, chisqr / dof, torch.full_like(chisqr, math.inf))
    stderr_free = torch.sqrt(solution.inverse_diagonal * s2[:, None])
    w2 = chunk.fit_mask if chunk.weights is None else chunk.weights**2 * chunk.fit_mask
    mean = (w2 * chunk.y).sum(-1, keepdim=True) / w2.sum(-1, keepdim=True)
    sst = (w2 * (chunk.y - mean) ** 2).sum(-1)
    aic, bic = stats.information_criteria(chisqr, n_points, n_free)
    out = {
        "r2": (1.0 - chisqr / sst).cpu().numpy(),
        "redchi": torch.where(dof > 0, chisqr / dof, torch.full_like(chisqr, math.nan)).cpu().numpy(),
        "aic": aic,
        "bic": bic,
        "condition": torch.nan_to_num(solution.condition, nan=math.inf).cpu().numpy(),
    }
    stderr = stderr_free.cpu().numpy()
    column = 0
    for name, is_free in zip(model.param_names, free):
        if is_free:
            out[f"{name}_stderr"] = stderr[:, column]
            column += 1
        else:
            out[f"{name}_stderr"] = np.full(stderr.shape[0], np.nan)
    return out


def _validation_loss(model: ParametricModel, chunk: _Chunk, theta: torch.Tensor) -> np.ndarray:
    """Mean squared (weighted) residual over each group's held-out points."""
    import torch

    with torch.no_grad():
        prediction = model.predict(chunk.inputs, theta)
        squared = ((prediction - chunk.y) * (chunk.weights if chunk.weights is not None else 1.0)) ** 2
        assert chunk.val_mask is not None
        return ((squared * chunk.val_mask).sum(-1) / chunk.val_mask.sum(-1)).cpu().numpy()


def _solve_linear(plan: _Plan, chunk: _Chunk, weights: torch.Tensor, start: torch.Tensor) -> tuple:
    """Exact batched least squares (SVD of the design) for models linear in their parameters."""
    import torch

    from gradfit.solvers.linear import batched_least_squares

    model = plan.model
    assert isinstance(model, FormulaModel)

    offset, design = model.design(chunk.inputs)
    free = torch.tensor([not p.fixed for p in model.parameters], device=start.device)
    rhs = (chunk.y - offset - design[..., ~free] @ start[:, ~free, None][..., 0] if (~free).any() else chunk.y - offset) * weights
    solution, singular = batched_least_squares(design[..., free] * weights[..., None], rhs)
    theta = start.clone()
    theta[:, free] = torch.as_tensor(solution, dtype=theta.dtype, device=theta.device)
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
    theta0 = start if n_starts == 1 else start.new_tensor(
        np.concatenate([starting_points(row, ~fixed.numpy(), n_starts, options["seed"]) for row in start.cpu().numpy()])
    )
    replicate = (lambda t: t) if n_starts == 1 else (lambda t: t.repeat_interleave(n_starts, dim=0))
    inputs = {k: replicate(v) for k, v in chunk.inputs.items()}
    y, w = replicate(chunk.y), replicate(weights)

    def residual_and_jacobian(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prediction, jac = model.predict_and_jacobian(inputs, theta)
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
        prediction, jac = model.predict_and_jacobian(chunk.inputs, theta)
        report = stats.fit_report(
            jac * weights[..., None], (prediction - chunk.y) * weights, chunk.y,
            weights=chunk.weights, absolute_sigma=plan.options["absolute_sigma"],
            free=torch.tensor([not p.fixed for p in model.parameters]), mask=chunk.fit_mask,
        )
        if chunk.val_mask is not None:
            rows["val_loss"][where] = _validation_loss(model, chunk, theta)
    values, stderr = theta.cpu().numpy(), report.stderr
    for i, name in enumerate(model.param_names):
        rows[name][where] = values[:, i]
        rows[f"{name}_stderr"][where] = stderr[:, i]
    for name in ("r2", "redchi", "aic", "bic"):
        rows[name][where] = report.statistics[name]


def _table(rows: dict[str, np.ndarray], model: ParametricModel) -> pl.DataFrame:
    import polars as pl

    order = ["n_points", *[c for n in model.param_names for c in (n, f"{n}_stderr")], "r2", "redchi", "aic", "bic", "val_loss", "iterations", "status", "success", "message"]
    return pl.DataFrame({name: (rows[name].tolist() if rows[name].dtype == object else rows[name]) for name in order})

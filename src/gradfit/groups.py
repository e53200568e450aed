"""Batched fits: K independent fits of one model in one call (a fleet of sensors, every pixel).

Rows come from a :class:`~gradfit.group_sources.GroupSource` — a table in memory, or a Parquet file
streamed in batches of whole groups — and each batch is indexed by its key, cut into chunks that bound
memory, and the chunks are fitted (:mod:`gradfit.group_chunks`: padding and masks, one batched
solve per chunk, per-group statistics and statuses) side by side on a CPU. A group whose data are
not finite, or that has too few points, is reported with its own status and never disturbs the
others.

:func:`iter_group_fits` gives the results chunk by chunk as they are computed (the command line
writes them to disk as they come, so neither the input nor the output has to fit in memory);
:func:`fit_groups` collects them into one :class:`GroupFitResult`. :class:`GroupSummary` accumulates
what the summary reports (counts by status, distributions of R² and of the parameters, the worst
groups) over the chunks.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.config import FitOptions, check_flag, check_seed, check_whole, resolve_device
from gradfit.errors import DataError, ModelError, OptionError
from gradfit.group_chunks import (
    BAD_DATA,
    FIT_STATISTICS,
    STATUS_COLUMNS,
    TOO_FEW,
    ChunkAbandoned,
    ChunkPlan,
    fit_chunk,
    result_columns,
)
from gradfit.group_sources import GroupSource, check_columns, open_groups
from gradfit.losses import LEAST_SQUARES_LOSSES, check_loss
from gradfit.model import FormulaModel, ParametricModel, make_model
from gradfit.packing import chunks, index_groups

if TYPE_CHECKING:
    import polars as pl

__all__ = ["GroupFitResult", "GroupFits", "GroupSummary", "fit_groups", "iter_group_fits", "auto_chunk_size"]

#: upper limit of groups per chunk on a CPU: each operation's fixed cost is shared by more fits up
#: to about this size (K = 100,000 decays, 2 threads: 0.97 M fits/s in chunks of 12,500, 1.31 M in
#: chunks of 25,000, 1.30 M in 50,000 with more memory), and larger tensors stop paying off (benchmarks/batched.py)
MAX_CHUNK = 32_768
#: fewest groups worth a chunk (and a core) of their own: smaller chunks cost more in per-operation
#: overhead than a second thread gains (10,000 groups, 2 threads, one chunk or two: decay 0.60 or
#: 0.50 M fits/s, line 1.7 or 1.2 M; 20,000 decays: 0.63 M in one chunk, 0.89 M in two)
MIN_SPLIT_CHUNK = 10_000
#: upper limit on a GPU (every operation as large as memory allows)
MAX_CHUNK_CUDA = 262_144
#: solver names accepted by :func:`fit_groups`
SOLVERS = ("auto", "linear", "batched", "lm", "gn", "gradient")
#: equal chunks smaller than this (a few large groups) are cut by padded size instead
MIN_EQUAL_CHUNK = 64
#: starting points of the refits of ``refit_failed``
REFIT_STARTS = 16
#: statuses of groups that were not fitted (a refit cannot help them)
NOT_FITTED = (BAD_DATA, TOO_FEW)
#: statuses of groups that end without parameters (those a single fit refuses with an error)
NO_RESULT = (*NOT_FITTED, "non_finite", "diverged")


@dataclass(frozen=True)
class GroupFitResult:
    """Per-group results of :func:`fit_groups`.

    Attributes
    ----------
    table
        One row per group: the key, ``n_points`` (all its rows: with a validation fraction the
        statistics, like a single fit's, count the training rows alone), each parameter and its
        ``_stderr``, ``r2``, ``redchi``, ``aic``, ``bic``, ``val_loss`` (with a validation fraction), ``iterations``,
        ``status``, ``success``, ``at_bound`` (the parameters that ended on a bound, by name, e.g.
        ``"k"`` or ``"a,k"``; empty when none) and ``message``.
    model
        The model's description.
    param_names
        Parameter names.
    group
        Name of the key column.
    solver
        The solver used for the fitted groups.
    elapsed
        Wall time of the fits (seconds).
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
        """Number of groups per status.

        Returns
        -------
        dict of str to int
            Group counts by status name (``"converged"``, ``"max_iter"``...), sorted by name;
            statuses no group has are left out.
        """
        return self._summary().status_counts()

    def failed(self) -> pl.DataFrame:
        """Rows of the groups that did not converge.

        Returns
        -------
        polars.DataFrame
            The rows of :attr:`table` whose ``success`` is false (groups not fitted for bad data or
            too few points included), in table order, with all of its columns.
        """
        import polars as pl

        return self.table.filter(~pl.col("success"))

    def worst(self, n: int = 5) -> pl.DataFrame:
        """The ``n`` groups with the lowest R² (failed groups first).

        Parameters
        ----------
        n
            How many rows to return, at most.

        Returns
        -------
        polars.DataFrame
            Up to ``n`` rows of :attr:`table`: groups that did not succeed first, then by increasing
            ``r2`` (a missing or NaN R² counts as the lowest).
        """
        return worst_rows(self.table, n)

    def summary(self) -> dict[str, Any]:
        """Counts by status and quantiles of R² and of each parameter over the successful groups.

        Returns
        -------
        dict
            As :meth:`GroupSummary.result`: ``groups``, ``status``, ``summarised``, ``r2``,
            ``parameters`` and ``fits_per_second``.
        """
        return self._summary().result(self.elapsed)

    def _summary(self) -> GroupSummary:
        summary = GroupSummary(self.param_names)
        summary.add(self.table)
        return summary


def worst_rows(table: pl.DataFrame, n: int) -> pl.DataFrame:
    """The ``n`` rows with the lowest R², rows of groups that did not converge first."""
    import polars as pl

    return table.sort([pl.col("success"), pl.col("r2").fill_nan(-math.inf)], nulls_last=False).head(n)


class GroupSummary:
    """What the summary of a group fit reports, accumulated chunk by chunk.

    Keeps the status counts, the R² and parameter values of successful groups (``success``: converged,
    or a gradient fit that ran its epochs; a few numbers per group) and the worst rows seen so far;
    never the whole table.

    Parameters
    ----------
    param_names
        The model's parameters (columns of the tables added).
    keep_worst
        How many of the worst rows to keep (:func:`worst_rows`).
    """

    QUANTILES = (0.0, 0.05, 0.5, 0.95, 1.0)

    def __init__(self, param_names: Sequence[str], keep_worst: int = 5) -> None:
        self.param_names = tuple(param_names)
        self.keep_worst = keep_worst
        self.groups = 0
        self._counts: dict[str, int] = {}
        self._values: dict[str, list[np.ndarray]] = {name: [] for name in ("r2", *self.param_names)}
        self._successful: set[str] = set()
        self._worst: pl.DataFrame | None = None

    def add(self, table: pl.DataFrame) -> None:
        """Take the rows of one chunk (or of a whole result).

        Parameters
        ----------
        table
            Rows in the layout of :attr:`GroupFitResult.table`; needs at least the columns
            ``status``, ``success``, ``r2`` and one per parameter in :attr:`param_names`.
        """
        import polars as pl

        self.groups += table.height
        for status, count in table.group_by("status").len().iter_rows():
            self._counts[status] = self._counts.get(status, 0) + count
        successful = table.filter(pl.col("success"))
        self._successful.update(successful["status"].cast(pl.String).unique().to_list())
        for name, values in self._values.items():
            values.append(successful[name].to_numpy())
        candidates = table if self._worst is None else pl.concat([self._worst, table], how="vertical_relaxed")
        self._worst = worst_rows(candidates, self.keep_worst)

    def status_counts(self) -> dict[str, int]:
        """Number of groups per status, by status name."""
        return dict(sorted(self._counts.items()))

    @property
    def fitted(self) -> int:
        """Number of groups added that ended with parameters: any status but those of :data:`NO_RESULT`."""
        return self.groups - sum(self._counts.get(status, 0) for status in NO_RESULT)

    def worst(self) -> pl.DataFrame | None:
        """The worst rows seen (see :func:`worst_rows`).

        Returns
        -------
        polars.DataFrame or None
            Up to ``keep_worst`` rows over every table added, groups that did not succeed first, then
            by increasing R²; ``None`` before the first :meth:`add`.
        """
        return self._worst

    def result(self, elapsed: float) -> dict[str, Any]:
        """``groups``, ``status`` counts, quantiles of ``r2`` and of each parameter over the
        successful groups, the statuses those had (``summarised``), ``fits_per_second``.

        Parameters
        ----------
        elapsed
            Wall time of the fits in seconds, for ``fits_per_second``.

        Returns
        -------
        dict
            ``"groups"`` (int, the number of rows added), ``"status"`` (:meth:`status_counts`),
            ``"summarised"`` (sorted list of the statuses of the successful groups), ``"r2"`` and
            ``"parameters"`` (a dict by parameter name) with quantiles ``{"q0", "q5", "q50", "q95",
            "q100"}`` of the finite values (an empty dict when there are none), and
            ``"fits_per_second"`` (float; infinite when ``elapsed`` is 0 and some groups were added).
        """
        return {
            "groups": self.groups,
            "status": self.status_counts(),
            "summarised": sorted(self._successful),
            "r2": self._spread("r2"),
            "parameters": {name: self._spread(name) for name in self.param_names},
            "fits_per_second": self.groups / elapsed if elapsed > 0 else (math.inf if self.groups else 0.0),
        }

    def _spread(self, name: str) -> dict[str, float]:
        import polars as pl

        parts = self._values[name]
        values = np.concatenate(parts) if parts else np.empty(0)
        series = pl.Series(values[np.isfinite(values)])
        return {f"q{int(q * 100)}": float(series.quantile(q)) for q in self.QUANTILES} if series.len() else {}


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
        At least one group, however large.
    """
    per_group = max(1, n_points) * (n_params + 8) * itemsize * 6
    available = budget if budget is not None else _available_memory(device) // 4
    limit = MAX_CHUNK_CUDA if device == "cuda" else MAX_CHUNK
    return int(max(1, min(limit, available // per_group)))


def _available_memory(device: str = "cpu") -> int:
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free)
    from gradfit.limits import available_memory

    return available_memory()


# ---------------------------------------------------------------------------------------- the API


def fit_groups(model: Any, data: Any, *, group: str, y: str, callback: Callable[[int, int], None] | None = None, **options: Any) -> GroupFitResult:
    """Fit one model independently to every group of rows.

    Parameters
    ----------
    model
        A formula, a callable of torch tensors written with broadcasting operations, or a named
        built-in model; its parameters get a leading group dimension.
    data
        A polars/pandas frame, a mapping of columns, or a path to a CSV/Parquet/NDJSON file (a
        Parquet file whose rows are grouped by the key is streamed, batch by batch).
    group
        The column whose values identify the groups.
    y
        Target column.
    callback
        Called after each chunk with ``(groups done, groups in all)``.
    **options
        The options of :func:`iter_group_fits`.

    Returns
    -------
    GroupFitResult
        One row per group: in the data's order when each group's rows are together (a streamed
        file always is), else sorted by key.
    """
    import polars as pl

    fits = iter_group_fits(model, data, group=group, y=y, **options)
    parts = []
    for table in fits:
        parts.append(table)
        if callback is not None:
            callback(fits.done, fits.n_groups)
    table = pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame(schema=fits.schema)
    return GroupFitResult(table, fits.model_description, fits.param_names, group, fits.solver, fits.elapsed, fits.settings)


def iter_group_fits(
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
    loss_scale: float = 1.0,
    optimizer: Any = None,
    optimizer_options: Mapping[str, Any] | None = None,
    epochs: int = 1000,
    patience: int | None = None,
    scale: bool = True,
    max_iter: int | None = None,
    tolerance: float | None = None,
    starts: int = 1,
    val: float = 0.0,
    seed: int = 0,
    chunk: int | None = None,
    dtype: str = "float64",
    device: str = "cpu",
    absolute_sigma: bool = False,
    refit_failed: bool = False,
    as_parameters: Sequence[str] = (),
    nan_policy: str = "raise",
) -> GroupFits:
    """The fits of every group, chunk by chunk, as they are computed.

    Parameters
    ----------
    model, data, group, y
        As in :func:`fit_groups`.
    sigma
        Column of standard deviations of ``y``.
    params
        Starting values: a number for every group, or the name of a column whose first value in
        each group starts that group's fit.
    bounds, fix
        As in :func:`gradfit.fit`.
    solver
        ``"auto"`` (``"linear"`` for formulas linear in their parameters, ``"batched"`` for other
        formulas with the mse loss and one start, ``"gradient"`` for losses that are not sums of
        squares or when an optimizer is named, else ``"lm"``), or one of ``"linear"``,
        ``"batched"`` (the fused batched Levenberg-Marquardt), ``"lm"``/``"gn"`` (the reference
        solvers), ``"gradient"``; see :mod:`gradfit.group_chunks`.
    loss, loss_scale
        A loss of :mod:`gradfit.losses` (``mae`` only with the gradient solver) and the residual
        scale of the robust losses.
    optimizer, optimizer_options, epochs, patience, scale
        The gradient solver's ``torch.optim`` optimizer (default Adam) and its keyword arguments,
        epoch limit, early stopping on the validation loss (per group), and scaling, as in
        :func:`gradfit.fit`. Optimizers whose updates mix parameters (``lbfgs``, ``adafactor``)
        would couple the groups and are refused.
    max_iter, tolerance
        Iteration cap and relative tolerance of the nonlinear least-squares solver (defaults: the
        reference solver's certified-accuracy settings, and every group's result equals its
        one-at-a-time :func:`gradfit.fit`); e.g. ``max_iter=10, tolerance=1e-4`` for Gpufit's
        settings, where each group stops when a Gauss-Newton step could lower its sum of squares
        by less than ``tolerance`` relative (or change every parameter by less) and says so in
        ``status``.
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
    refit_failed
        Fit the groups that did not converge again, with :data:`REFIT_STARTS` starting points, and
        keep the refits that converge (least-squares solvers; refused for the gradient solver).
    as_parameters
        Names of a formula to treat as parameters although a column has that name.
    nan_policy
        ``"raise"``: a group with a missing or non-finite input, target or sigma is not fitted
        (status ``bad_data``; no exception, and the other groups are fitted); ``"omit"``: those rows
        are left out and each group is fitted from the rest (``n_points`` counts what is left; a
        group with no finite row stays ``bad_data``, with all its rows counted).

    Returns
    -------
    GroupFits
        Iterate over it for one table per chunk.
    """
    _check_distinct_roles({"group key": group, "target": y, "sigma": sigma})
    source = open_groups(data, group)
    check_columns(source.columns, [y] + ([sigma] if sigma else []))
    built, column_starts = _model(model, source.columns, group, y, sigma, params, bounds, fix, as_parameters)
    settings = dict(
        solver=solver, loss=check_loss(loss), loss_scale=loss_scale, optimizer=optimizer, optimizer_options=dict(optimizer_options or {}),
        epochs=epochs, patience=patience, scale=scale, max_iter=max_iter, tolerance=tolerance, starts=starts, val=val, seed=seed,
        dtype=_dtype(dtype), device=resolve_device(device), absolute_sigma=absolute_sigma, nan_policy=nan_policy,
    )
    _check_settings(settings)
    settings.update(scale=bool(scale), absolute_sigma=bool(absolute_sigma))  # numpy's bools are not JSON
    if source.n_groups == 0:  # an empty table would replace the output with a header alone
        raise DataError("no rows in the data — give at least one data row")
    if chunk is not None and chunk < 1:
        raise OptionError(f"chunk must be at least 1 group, got {chunk} — or leave it out to size chunks from the free memory")
    plan = _plan(built, y, sigma, column_starts, settings)
    _check_settings_used(plan)
    if refit_failed and plan.path == "gradient":
        instead = (
            "leave out the optimizer" if settings["optimizer"] is not None
            else "use the lm solver (exact least absolute deviations)" if settings["loss"] == "mae"
            else "use the lm solver"
        )
        raise OptionError(
            "refitting failed groups (--refit-failed) uses more least-squares starting points, and this fit uses the "
            f"gradient solver — raise epochs or patience instead, or {instead}"
        )
    return GroupFits(plan, source, group, chunk, refit_failed)


class GroupFits:
    """The per-chunk result tables of a group fit (see :func:`iter_group_fits`).

    Iterating fits the groups: every table has the columns of :attr:`schema` and one row per group.

    Attributes
    ----------
    param_names, model_description, solver, n_groups, settings
        The model's parameters and description, the solver of the fitted groups, the number of
        groups, and the options.
    done, elapsed
        Groups fitted so far, and the wall time spent fitting them.
    """

    def __init__(self, plan: ChunkPlan, source: GroupSource, group: str, chunk: int | None, refit_failed: bool) -> None:
        self.plan, self.source, self.group = plan, source, group
        self.chunk, self.refit_failed = chunk, refit_failed
        self.param_names = plan.model.param_names
        self.model_description = plan.model.description
        self.solver = _solver_name(plan)
        self.n_groups = source.n_groups
        self.settings = dict(plan.options)
        self.done = 0
        self.elapsed = 0.0

    @cached_property
    def schema(self) -> dict[str, Any]:
        """Column names and polars types of the result tables."""
        import polars as pl

        types = {"n_points": pl.Int64, "iterations": pl.Int64, "success": pl.Boolean}
        types.update({name: pl.Categorical for name in ("status", "at_bound", "message")})
        columns: dict[str, Any] = {self.group: self.source.column_dtype(self.group)}
        columns.update({name: types.get(name, pl.Float64) for name in result_columns(self.param_names)})
        return columns

    def __iter__(self) -> Iterator[pl.DataFrame]:
        needed = _needed_columns(self.plan)
        first_row = 1  # of the batch in the data, for messages
        with _ChunkWorkers(self.plan) as workers:
            for batch in self.source.batches(needed, workers.count * (self.chunk or _max_chunk(self.plan))):
                started = time.perf_counter()
                for table in self._fit_batch(batch, workers, first_row):
                    self.elapsed += time.perf_counter() - started
                    self.done += table.height
                    yield table
                    started = time.perf_counter()
                first_row += batch.height

    def _fit_batch(self, batch: pl.DataFrame, workers: _ChunkWorkers, first_row: int = 1) -> Iterator[pl.DataFrame]:
        if self.plan.options["nan_policy"] == "omit":
            batch = _finite_rows(batch, self.plan, self.group, self.source.label, first_row)
        index = index_groups(batch[self.group].to_numpy())
        if index.n_groups == 0:
            return
        columns = _columns(batch, self.plan, self.source.label, first_row)
        parts = list(chunks(index.n_groups, self.chunk)) if self.chunk else self._auto_chunks(index.counts)
        for part, table in workers.fit(columns, index, parts):
            table = table.with_columns(self._keys(index.keys[part])).select(list(self.schema))
            if self.refit_failed:
                table = self._refit(table, batch)
            yield table

    def _auto_chunks(self, counts: np.ndarray) -> list[slice]:
        """Chunks within the memory budget: equal ones (:func:`_balanced_chunks`) sized for the
        largest group, unless a few large groups would make them all small; then chunks cut by
        their padded size, a large group in a chunk of its own (:func:`_chunks_by_padding`)."""
        options = self.plan.options
        itemsize = 4 if options["dtype"] == "float32" else 8
        largest = int(counts.max())
        size = auto_chunk_size(largest, self.plan.model.n_params, itemsize, device=options["device"])
        if size >= MIN_EQUAL_CHUNK or size >= counts.size:
            return _balanced_chunks(counts.size, size)
        return _chunks_by_padding(counts, size * largest, _max_chunk(self.plan))

    def _keys(self, keys: np.ndarray) -> pl.Series:
        """The key column of a result table, in the data's type (categorical keys stay categorical;
        Python objects such as times of day are read back by polars)."""
        import polars as pl

        values = keys.tolist() if keys.dtype == object else keys
        return pl.Series(self.group, values).cast(self.schema[self.group])

    def _refit(self, table: pl.DataFrame, batch: pl.DataFrame) -> pl.DataFrame:
        """Refit the chunk's groups that did not converge with more starts; keep what converged."""
        import polars as pl

        failed = table.filter(~pl.col("success") & ~pl.col("status").is_in(list(NOT_FITTED)))
        if failed.height == 0:
            return table
        rows = batch.filter(pl.col(self.group).is_in(failed[self.group].implode()))
        plan = _plan(self.plan.model, self.plan.y, self.plan.sigma, self.plan.starts, {**self.plan.options, "starts": max(REFIT_STARTS, self.plan.options["starts"])})
        index = index_groups(rows[self.group].to_numpy())
        again = fit_chunk(plan, _columns(rows, plan), index, slice(0, index.n_groups))
        again = again.with_columns(self._keys(index.keys)).select(list(self.schema)).filter(pl.col("success"))
        return table.update(again, on=self.group) if again.height else table


def _chunks_by_padding(counts: np.ndarray, budget: int, cap: int) -> list[slice]:
    """Consecutive slices of at most ``cap`` groups whose padded size (groups × their largest group)
    stays within ``budget`` points and at most twice their real points (small groups are not padded
    to a large neighbour's size); a group larger than the budget is a chunk of its own."""
    parts, start, widest, real = [], 0, 0, 0
    for i, n in enumerate(counts.tolist()):
        wider, points = max(widest, n), real + n
        padded = wider * (i - start + 1)
        if i > start and (padded > budget or padded > 2 * points or i - start == cap):
            parts.append(slice(start, i))
            start, wider, points = i, n, n
        widest, real = wider, points
    parts.append(slice(start, counts.size))
    return parts


def _balanced_chunks(n_groups: int, size: int, cores: int | None = None) -> list[slice]:
    """Consecutive slices of at most ``size`` groups, of equal sizes, their number a multiple of the
    machine's cores (fewer where a chunk would have under :data:`MIN_SPLIT_CHUNK` groups), so that
    the threads share them evenly. The slicing depends on the machine, never on the thread count,
    and the results on neither.
    """
    parallel = min(cores or _usable_cores(), max(1, n_groups // MIN_SPLIT_CHUNK))
    count = max(-(-n_groups // size), parallel)
    count = -(-count // parallel) * parallel
    width = -(-n_groups // count)
    return list(chunks(n_groups, width))


def _usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _max_chunk(plan: ChunkPlan) -> int:
    return MAX_CHUNK_CUDA if plan.options["device"] == "cuda" else MAX_CHUNK


def _workers(plan: ChunkPlan) -> int:
    """Chunks fitted side by side: one per torch thread on a CPU, one on a GPU."""
    import torch

    return torch.get_num_threads() if plan.options["device"] == "cpu" else 1


class _ChunkWorkers:
    """Fits chunks in order; on a CPU with several torch threads, chunks run side by side.

    Torch's own intra-op threads are no use on these operations (each touches one chunk's small
    arrays; on a busy machine two threads made them 10-30 times slower), so
    every operation runs single-threaded. Instead, each of ``torch.get_num_threads()`` Python
    threads fits whole chunks (torch releases the GIL inside each operation). Chunks are
    independent and every fit's numbers are independent of its neighbours, so the results do not
    depend on the number of threads. The same threads serve every batch of a fit: memory freed by
    a thread is reused by it (a new thread per batch would leave each batch's memory behind in
    its own malloc arena).
    """

    def __init__(self, plan: ChunkPlan) -> None:
        self.plan = plan
        self.pool: Any = None

    def __enter__(self) -> _ChunkWorkers:
        import torch

        self.threads = torch.get_num_threads()
        self.count = _workers(self.plan)
        torch.set_num_threads(1)
        if self.count > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(self.count, thread_name_prefix="gradfit-groups")
        return self

    def fit(self, columns: Mapping[str, np.ndarray], index: Any, parts: list[slice]) -> Iterator[tuple[slice, pl.DataFrame]]:
        """``(part, table)`` for every chunk, in order.

        At a ``KeyboardInterrupt`` the gradient chunks in progress stop (``plan.stop``) and their
        tables come out, groups still training marked ``interrupted`` with their best parameters so
        far; then the interrupt goes on. Chunks not begun are dropped.
        """
        if self.pool is None or len(parts) == 1:
            for part in parts:
                yield part, fit_chunk(self.plan, columns, index, part)
                self._raise_if_stopped()
            return
        futures = [self.pool.submit(fit_chunk, self.plan, columns, index, part) for part in parts]
        for position, (part, future) in enumerate(zip(parts, futures)):
            try:
                table = future.result()
            except KeyboardInterrupt:
                self.plan.stop.set()
                yield from self._begun(parts[position:], futures[position:])
                raise
            yield part, table
            self._raise_if_stopped()

    def _begun(self, parts: list[slice], futures: list[Any]) -> Iterator[tuple[slice, pl.DataFrame]]:
        """The chunks already done, and the gradient chunks running, as they stop; the others are
        cancelled, and least-squares chunks still running are abandoned at their next iteration."""
        for future in futures:
            future.cancel()
        for part, future in zip(parts, futures):
            if future.cancelled():
                return  # later ones have not begun either: the output stays a prefix
            try:
                table = future.result()
            except ChunkAbandoned:
                return  # ...and so does the output here: later chunks are dropped too
            yield part, table

    def _raise_if_stopped(self) -> None:
        if self.plan.stop.is_set():  # a chunk caught the interrupt in this thread and kept its groups
            raise KeyboardInterrupt

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(self.threads)


# ------------------------------------------------------------------------------------- the plan


def _model(
    spec: Any, columns: Sequence[str], group: str, y: str, sigma: str | None,
    params: Mapping[str, Any] | None, bounds: Any, fix: Mapping[str, float] | None, as_parameters: Sequence[str] = (),
) -> tuple[ParametricModel, dict[str, str]]:
    from gradfit.fitting import _merge_overrides
    from gradfit.model import check_params_by_name

    check_params_by_name(params)
    if params is not None and not isinstance(params, Mapping):
        raise ModelError("group fits take params as a mapping of names to starts (numbers or columns) — e.g. params={'a': 1.0, 'k': 'k_guess'}")
    column_starts = {k: v for k, v in (params or {}).items() if isinstance(v, str)}
    numeric = {k: v for k, v in (params or {}).items() if not isinstance(v, str)}
    roles = {group, y, sigma, *column_starts.values()}
    candidates = [c for c in columns if c not in roles and c not in as_parameters]
    named = {group: "the group key", y: "the target", sigma: "sigma", **{column: f"the starts of '{name}'" for name, column in column_starts.items()}}
    try:
        built = make_model(spec, candidates, _merge_overrides(numeric, bounds, fix), as_parameters)
    except ModelError:
        if isinstance(spec, str):  # e.g. its only input is the group key: say that, not "uses no data column"
            _check_role_names(_formula_names(spec), named)
        raise
    if not isinstance(built, ParametricModel):
        raise ModelError("group fits need a parametric model (a formula or a function) — not a network")
    _check_role_names(built.param_names, named)
    unknown = set(column_starts) - set(built.param_names)
    if unknown:
        raise ModelError(f"'{sorted(unknown)[0]}' is not a parameter of the model — its parameters are {', '.join(built.param_names)}")
    check_columns(columns, list(column_starts.values()))
    _check_result_names(group, built.param_names)
    return built, column_starts


def _formula_names(text: str) -> tuple[str, ...]:
    from gradfit.errors import FormulaError
    from gradfit.model import parse_formula

    try:
        return tuple(parse_formula(text).names)
    except FormulaError:
        return ()  # a built-in model's name


def _check_role_names(names: Sequence[str], named: Mapping[str | None, str]) -> None:
    """A model's name may not be a column with another role (the group key, the target...)."""
    clash = next((name for name in names if name in named), None)
    if clash is not None:
        raise ModelError(f"'{clash}' is {named[clash]} column, so the model cannot use it — rename the column or the model's name")


def _check_result_names(group: str, param_names: Sequence[str]) -> None:
    """The result table's columns have distinct names: a parameter called ``r2``, or a key column
    called ``status``, would overwrite one of them (or be overwritten)."""
    meaning = {name: f"the result column '{name}'" for name in ("n_points", *FIT_STATISTICS, *STATUS_COLUMNS)}
    for name in param_names:
        meaning.setdefault(f"{name}_stderr", f"the standard-error column of parameter '{name}'")
    for name in param_names:
        if name in meaning:
            raise ModelError(f"parameter '{name}' has the name of {meaning[name]} of the group results — rename the parameter")
        meaning[name] = f"parameter '{name}'"
    if group in meaning:
        raise DataError(f"the group column '{group}' has the name of {meaning[group]} of the group results — rename the column")


def _check_distinct_roles(roles: Mapping[str, str | None]) -> None:
    """The group key, target and sigma are three different columns."""
    seen: dict[str, str] = {}
    for role, column in roles.items():
        if column is None:
            continue
        if column in seen:
            raise OptionError(f"'{column}' cannot be both the {seen[column]} and the {role} column — name another column")
        seen[column] = role


def _plan(model: ParametricModel, y: str, sigma: str | None, column_starts: dict[str, str], settings: dict[str, Any]) -> ChunkPlan:
    path = _path(model, settings)
    system = _fast_system(model) if path in ("linear", "batched") else None
    return ChunkPlan(model, y, sigma, column_starts, path, settings, system)


def _needed_columns(plan: ChunkPlan) -> list[str]:
    return list(dict.fromkeys([*plan.model.input_names, plan.y, *([plan.sigma] if plan.sigma else []), *plan.starts.values()]))


def _columns(frame: pl.DataFrame, plan: ChunkPlan, label: str | None = None, first_row: int = 1) -> dict[str, np.ndarray]:
    """The columns the fit reads, as float64 (``NA`` or ``nan`` in text make their groups
    ``bad_data``); ``label`` and ``first_row`` place the frame in its file, for messages."""
    from gradfit.data import numeric_column

    return {name: numeric_column(frame[name], name, label, first_row) for name in _needed_columns(plan)}


def _finite_rows(frame: pl.DataFrame, plan: ChunkPlan, group: str, label: str | None, first_row: int) -> pl.DataFrame:
    """``frame`` without the rows whose input, target or sigma is missing or not finite; a group
    with no finite row keeps them all, to be reported ``bad_data`` rather than vanish."""
    import polars as pl

    columns = _columns(frame, plan, label, first_row)  # checks every value reads as a number, row numbers intact
    roles = [*plan.model.input_names, plan.y, *([plan.sigma] if plan.sigma else [])]
    finite = np.logical_and.reduce([np.isfinite(columns[name]) for name in roles])
    if finite.all():
        return frame
    mark = "finite"
    while mark in frame.columns:
        mark = "_" + mark
    ok = pl.col(mark)
    kept = frame.with_columns(pl.Series(mark, finite)).filter(ok | ~ok.any().over(group))
    return kept.drop(mark)


def _check_settings(settings: Mapping[str, Any]) -> None:
    """The checks :class:`~gradfit.config.FitOptions` makes of the same settings."""
    if settings["solver"] not in SOLVERS:
        raise OptionError(f"unknown group solver '{settings['solver']}' — choose {', '.join(SOLVERS)}")
    if settings["nan_policy"] not in ("raise", "omit"):
        raise OptionError(f"unknown nan_policy '{settings['nan_policy']}' — choose one of raise, omit")
    for name, minimum in (("starts", 1), ("epochs", 1)):
        check_whole(name, settings[name], minimum)
    check_seed(settings["seed"])
    for name in ("scale", "absolute_sigma"):
        check_flag(name, settings[name])
    for name in ("patience", "max_iter"):
        if settings[name] is not None:
            check_whole(name, settings[name], 1)
    if isinstance(settings["val"], bool) or not 0.0 <= settings["val"] < 1.0:
        raise OptionError(f"val must be a fraction in [0, 1), got {settings['val']} — e.g. 0.2")
    tolerance = settings["tolerance"]
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and tolerance > 0 and math.isfinite(tolerance)):
        raise OptionError(f"tolerance must be a positive number, got {tolerance!r} — e.g. 1e-4")


def _check_settings_used(plan: ChunkPlan) -> None:
    """Refuse settings the groups' path would ignore, as single fits do (:func:`gradfit.solvers.unused_options`)."""
    from gradfit.solvers import GRADIENT_ONLY, ITERATIVE_ONLY, unused_message

    defaults = {option.name: option.default for option in fields(FitOptions)} | {"tolerance": None}
    iterative = [*ITERATIVE_ONLY, "tolerance"]
    gradient_only = [name for name in GRADIENT_ONLY if name in plan.options]
    unread = iterative if plan.path == "gradient" else gradient_only + (iterative if plan.linear else [])
    unused = [name for name in unread if plan.options[name] != defaults[name]]
    if unused:
        fit = f"these groups are fitted by the {_solver_name(plan)} solver"
        raise OptionError(unused_message(fit, unused))


def _path(model: ParametricModel, settings: Mapping[str, Any]) -> str:
    """Which solver fits the groups: ``"linear"``, ``"batched"``, ``"reference"`` or ``"gradient"``."""
    solver, loss, starts = settings["solver"], settings["loss"], settings["starts"]
    least_absolute = loss == "mae" and solver in ("lm", "gn")  # the continuation of solvers.lsq, group by group
    gradient = settings["optimizer"] is not None or (loss not in LEAST_SQUARES_LOSSES and not least_absolute)
    if gradient and solver not in ("auto", "gradient"):
        named = settings["optimizer"] is not None
        reason = "an optimizer was named" if named else f"the {loss} loss is not a sum of squares"
        exact = "" if named else ", or 'lm' for the exact least absolute deviations"
        raise OptionError(f"solver '{solver}' cannot fit these groups: {reason} — use solver 'gradient' (or auto){exact}")
    if gradient or solver == "gradient":
        from gradfit.solvers.batched_gradient import check_group_optimizer

        check_group_optimizer(settings["optimizer"] or "adam", settings["optimizer_options"])
        return "gradient"
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


def _solver_name(plan: ChunkPlan) -> str:
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



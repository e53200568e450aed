"""One chunk of a group fit: K groups packed into ``(K, n_max)`` arrays, solved together.

A chunk is padded and masked (:mod:`gradfit.packing`); groups whose data are not finite, or that
have fewer points than free parameters, get their own status and are left out of the solve. The
others are solved in one batch by the path the :class:`ChunkPlan` names:

``linear``
    Formulas linear in their parameters (mse, unbounded): the normal equations of every group,
    factored once and solved together (:func:`gradfit.solvers.batched.solve_linear_batched`: one
    Gauss-Newton step is exact); groups whose normal equations are ill-conditioned (scaled
    condition bound above :data:`CONDITION_ACCURATE`) or singular are solved again by the exact
    batched SVD solve.
``batched``
    Other formulas with the mse loss and one starting point: the fused batched Levenberg-Marquardt
    of :mod:`gradfit.solvers.batched` (symbolic Jacobian, normal equations and per-fit damping in
    a few passes per iteration). With default settings it runs to the reference solver's
    tolerances, and a group it does not bring to convergence within :data:`FAST_MAX_ITER` trials
    (or that converges where a parameter ran off to infinity, or where ``JᵀJ`` is
    ill-conditioned) is solved again, from its starting values, by the reference solver — so every
    group's result is the one-at-a-time :func:`gradfit.fit` result (where a problem has several
    local minima, a far start can lead the two solvers' paths to different ones). With ``max_iter``/``tolerance``
    given (speed settings, e.g. Gpufit's ``max_iter=10, tolerance=1e-4``) it runs exactly those and
    reports each group's status as it ended.
``reference``
    The reference batched Levenberg-Marquardt / Gauss-Newton of :mod:`gradfit.solvers.least_squares`
    (robust losses, callables, several starting points, or when asked for by name).
``gradient``
    Losses that are not sums of squares, or a named ``torch.optim`` optimizer: every group's
    parameters in one tensor, trained by the optimizer together (:mod:`gradfit.solvers.batched_gradient`).

Standard errors of the fast paths come from the Cholesky factor of ``JᵀJ`` that the solver has at
the solution; where that would lose digits (scaled condition bound above :data:`CONDITION_ACCURATE`
with default settings: the group is solved again as above; above :data:`CONDITION_FAST` with speed
settings) or ``JᵀJ`` is singular, a group gets the SVD-based :func:`gradfit.stats.fit_report`, as
every group of the reference and gradient paths does.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.data import SQUARES_UNDERFLOW
from gradfit.model import FormulaModel, ParametricModel
from gradfit.packing import GroupIndex, PackedGroups, finite_groups, first_in_group, held_out, pack

if TYPE_CHECKING:
    import polars as pl
    import torch

__all__ = ["ChunkPlan", "fit_chunk", "result_columns", "BAD_DATA", "TOO_FEW", "FIT_STATISTICS", "STATUS_COLUMNS"]

#: a group's fit statistics (float columns), after its parameters and their standard errors
FIT_STATISTICS = ("r2", "redchi", "aic", "bic", "val_loss")
#: and then how its fit ended
STATUS_COLUMNS = ("iterations", "status", "success", "at_bound", "message")


def result_columns(param_names: Sequence[str]) -> list[str]:
    """The columns of a group's row after its key, in order."""
    return ["n_points", *[c for n in param_names for c in (n, f"{n}_stderr")], *FIT_STATISTICS, *STATUS_COLUMNS]

#: status of groups that were not fitted
BAD_DATA, TOO_FEW = "bad_data", "too_few_points"
#: scaled condition bound of JᵀJ above which fast-path standard errors are recomputed by SVD
#: (default settings: the normal equations lose about log10(condition) of 16 digits; in float32
#: the bound that keeps as many digits, see ``_condition_limit``)
CONDITION_ACCURATE = 1e6
#: the same bound with speed settings (max_iter or tolerance given)
CONDITION_FAST = 1e10
#: trials of the batched solver before the reference solver takes over a group (default settings)
FAST_MAX_ITER = 50
#: trials of the batched solver with only a tolerance given
FAST_DEFAULT_ITER = 200


#: a chunk's result columns by name: arrays, and :class:`Labels` for ``status`` and ``message``
Rows = dict[str, Any]


class Labels:
    """A text per group (its status or message) as codes into the few texts that occur.

    A table's categorical column is then made from the codes (one gather), not from one Python
    string per group, which polars converts under the GIL (about a tenth of a linear group fit).
    """

    def __init__(self, k: int, fill: str) -> None:
        self.texts: list[str] = [fill]
        self._codes: dict[str, int] = {fill: 0}
        self.codes = np.zeros(k, dtype=np.int64)

    def code(self, text: str) -> int:
        """The code of ``text`` (added to the vocabulary if new)."""
        if text not in self._codes:
            self._codes[text] = len(self.texts)
            self.texts.append(text)
        return self._codes[text]

    def put(self, where: Any, texts: Any) -> None:
        """Set the groups ``where`` to ``texts`` (one text for all, or one per group)."""
        if isinstance(texts, str):
            self.codes[where] = self.code(texts)
        else:
            self.codes[where] = [self.code(text) for text in texts]

    def put_coded(self, where: Any, codes: np.ndarray, texts: Sequence[str]) -> None:
        """Set the groups ``where`` to ``texts[codes]`` (a solver's integer codes and its texts)."""
        self.codes[where] = np.array([self.code(text) for text in texts], dtype=np.int64)[codes]

    def column(self) -> pl.Series:
        """The texts as a categorical column."""
        import polars as pl

        return pl.Series(self.texts, dtype=pl.Categorical).gather(self.codes)


class ChunkAbandoned(Exception):
    """A least-squares chunk stopped by an interruption (:meth:`ChunkPlan.abandon_if_stopped`)."""


@dataclass(frozen=True)
class ChunkPlan:
    """What every chunk of a group fit shares: the model, the columns' roles, the path, the options."""

    model: ParametricModel
    y: str
    sigma: str | None
    starts: dict[str, str]
    path: str  # "linear", "batched", "reference" or "gradient"
    options: dict[str, Any]
    system: Any = None  # the batched solver's compiled model + Jacobian (fast paths)
    #: set to ask running gradient chunks to stop and keep their best parameters (an interruption)
    stop: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    def abandon_if_stopped(self) -> None:
        """Raise :class:`ChunkAbandoned` once :attr:`stop` is set: the least-squares solvers call it
        every iteration, so that an interruption drops their chunk at once (its groups are not
        half-fitted: they are not written)."""
        if self.stop.is_set():
            raise ChunkAbandoned

    @property
    def linear(self) -> bool:
        """Whether the groups are fitted by the linear least-squares solve (``path == "linear"``)."""
        return self.path == "linear"

    @property
    def accurate(self) -> bool:
        """Default settings: results must equal one-at-a-time fits (no max_iter, no tolerance)."""
        return self.options["max_iter"] is None and self.options["tolerance"] is None

    @property
    def free(self) -> list[bool]:
        """One flag per model parameter, in order: ``True`` where it is estimated, ``False`` where fixed."""
        return [not p.fixed for p in self.model.parameters]



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


def fit_chunk(plan: ChunkPlan, columns: Mapping[str, np.ndarray], index: GroupIndex, part: slice) -> pl.DataFrame:
    """Fit the groups ``part`` of the indexed ``columns``: one row per group, in index order."""
    import torch

    model = plan.model
    points = (*model.input_names, plan.y, *([plan.sigma] if plan.sigma else []))
    packed = pack({name: columns[name] for name in points}, index, part)  # start columns: first values only
    used = [packed.columns[n] for n in points]
    finite = finite_groups(used, packed.mask) & _positive_sigma(packed, plan.sigma)
    tiny = finite & _tiny_targets(packed, plan)
    finite &= ~tiny
    theta0 = _starting_values(plan, columns, index, part, packed, finite)
    no_start = finite & ~np.isfinite(theta0).all(axis=1)  # a start column's first value is missing in the group
    finite &= ~no_start
    n_free = sum(not p.fixed for p in model.parameters)
    chunk = _tensors(plan, packed, bool(finite.all()), index.keys[part])
    enough = chunk.fit_mask.sum(-1).cpu().numpy() >= n_free
    ok = finite & enough
    rows = _empty_rows(model, finite, enough, held_out=finite & ~enough & (packed.counts >= n_free))
    if tiny.any():
        rows["message"].put(tiny, _TINY_TARGETS)
    if no_start.any():
        _name_missing_starts(plan, theta0, no_start, rows)
    empty = ~finite_groups(used, packed.mask) if plan.options["nan_policy"] == "omit" else None
    if empty is not None and empty.any():  # the groups the omit policy left without a finite row
        rows["message"].put(empty, _NO_FINITE_ROW)
    if ok.all():
        _solve(plan, chunk, theta0, rows, np.arange(len(ok)))
    elif ok.any():
        selected = torch.as_tensor(np.flatnonzero(ok), device=chunk.y.device)
        _solve(plan, _subset(chunk, selected), theta0[ok], rows, np.flatnonzero(ok))
    rows["n_points"] = packed.counts.astype(np.int64)
    _flag_bounds(model, rows)
    _flag_undetermined(model, rows)
    return _table(rows, model)


def _flag_undetermined(model: ParametricModel, rows: Rows) -> None:
    """A converged group whose data do not determine some free parameter (infinite standard error:
    a rank-deficient Jacobian) says so in its message, as a single fit warns."""
    free = [p.name for p in model.parameters if not p.fixed]
    if not free:
        return
    columns = [np.isinf(rows[f"{name}_stderr"]) for name in free]
    if not any(column.any() for column in columns):  # the usual case: one pass over each column
        return
    lost = np.column_stack(columns)
    flagged = np.flatnonzero(rows["success"] & lost.any(axis=1))
    if not flagged.size:
        return
    texts = rows["message"].texts
    rows["message"].put(flagged, [
        f"{texts[rows['message'].codes[i]]}; {_undetermined([n for n, gone in zip(free, lost[i]) if gone])}" for i in flagged
    ])


def _undetermined(names: list[str]) -> str:
    """The note of a converged group whose data do not determine ``names``."""
    one = len(names) == 1
    return (
        f"but the data do not determine {', '.join(names)} (the Jacobian is rank-deficient: "
        f"{'an infinite standard error' if one else 'infinite standard errors'}) — {'fix it' if one else 'fix some of them'} or add varied data"
    )


def _flag_bounds(model: ParametricModel, rows: Rows) -> None:
    """``at_bound``: the free parameters that ended on a bound, by name (``"k"``, ``"a,k"``), as a
    single fit flags them; their standard errors are then not reliable."""
    from gradfit.solvers.least_squares import at_bound

    params = model.parameters
    if not any(p.bounded for p in params):
        return
    theta = np.column_stack([rows[p.name] for p in params])
    with np.errstate(invalid="ignore"):  # groups not fitted have NaN parameters: never on a bound
        flags = at_bound(theta, np.array([p.lower for p in params]), np.array([p.upper for p in params]), np.array([not p.fixed for p in params]))
    patterns, codes = np.unique(flags, axis=0, return_inverse=True)
    texts = [",".join(p.name for p, on in zip(params, pattern) if on) for pattern in patterns]
    rows["at_bound"].put_coded(slice(None), codes.reshape(-1), texts)


#: the message of a group whose (weighted) targets are too small to square (:func:`gradfit.data.check_squares_representable`)
_TINY_TARGETS = (
    f"not fitted: the group's (weighted) target values are below {SQUARES_UNDERFLOW:g} in magnitude, so their squares "
    "underflow in double precision — rescale y"
)


def _tiny_targets(packed: PackedGroups, plan: ChunkPlan) -> np.ndarray:
    """Groups whose largest weighted target is nonzero and too small to square, as a single fit refuses."""
    y = packed.columns[plan.y]
    with np.errstate(all="ignore"):  # padding repeats a real point: no mask needed for the largest value
        weighted = np.abs(y if plan.sigma is None else y / packed.columns[plan.sigma])
        if not ((weighted < SQUARES_UNDERFLOW) & (weighted > 0)).any():  # the usual case, in a fraction of the time
            return np.zeros(y.shape[0], dtype=bool)
        largest = weighted.max(axis=1)
    return (largest > 0) & (largest < SQUARES_UNDERFLOW)


def _usable_sigma(sigma: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``sigma`` where it is a positive number on a real point, else 1 (padding, and the points of
    groups that :func:`_positive_sigma` marks as bad data, which are not fitted)."""
    with np.errstate(invalid="ignore"):
        return np.where((mask > 0) & (sigma > 0), sigma, 1.0)


def _positive_sigma(packed: PackedGroups, sigma: str | None) -> np.ndarray:
    if sigma is None:
        return np.ones(packed.mask.shape[0], dtype=bool)
    values = packed.columns[sigma]
    return np.all((values > 0) | (packed.mask == 0), axis=1)


def _starting_values(plan: ChunkPlan, columns: Mapping[str, np.ndarray], index: GroupIndex, part: slice,
                     packed: PackedGroups, finite: np.ndarray) -> np.ndarray:
    """``(K, p)`` each group's start: a given number, a column's first value in the group, or — for
    a built-in model's parameters given neither — its guess from the group's own points (groups
    with bad data, which are not fitted, are not guessed from either)."""
    model = plan.model
    theta0 = np.tile(np.array([p.start for p in model.parameters]), (part.stop - part.start, 1))
    for name, column in plan.starts.items():
        theta0[:, model.param_names.index(name)] = first_in_group(columns[column], index, part)
    guessed = [j for j, p in enumerate(model.parameters) if p.init is None and not p.fixed and p.name not in plan.starts]
    if guessed and hasattr(model, "initial_guess"):
        _guess_starts(model, packed, plan.y, theta0, guessed, finite)
    return theta0


def _guess_starts(model: Any, packed: PackedGroups, y: str, theta0: np.ndarray, guessed: list[int], finite: np.ndarray) -> None:
    """Fill ``theta0[:, guessed]`` with the built-in model's data-driven guesses, group by group
    (as a single fit guesses from its training points; groups with fewer than 2 points keep 1.0)."""
    names = model.param_names
    real = packed.mask > 0
    with np.errstate(all="ignore"):
        for row in np.flatnonzero((packed.counts >= 2) & finite):
            keep = real[row]
            guess = model.initial_guess({name: packed.columns[name][row, keep] for name in model.input_names}, packed.columns[y][row, keep])
            for j in guessed:
                theta0[row, j] = guess.get(names[j], theta0[row, j])


def _tensors(plan: ChunkPlan, packed: PackedGroups, all_finite: bool, keys: np.ndarray) -> _Chunk:
    import torch

    dtype, device = getattr(torch, plan.options["dtype"]), plan.options["device"]

    def tensor(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values if all_finite else np.nan_to_num(values), dtype=dtype, device=device)

    real = tensor(packed.mask)
    fit_mask, val_mask = real, None
    if plan.options["val"] > 0:
        held = held_out(keys, packed.mask.shape[1], plan.options["val"], plan.options["seed"], packed.counts)
        val_mask = tensor(held.astype(float))
        fit_mask = real - val_mask
    weights = None if plan.sigma is None else tensor(1.0 / _usable_sigma(packed.columns[plan.sigma], packed.mask))
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
    BAD_DATA: "not fitted: the group has missing or non-finite values (or sigma <= 0) — clean its rows (--nan omit leaves out the missing and non-finite ones)",
    TOO_FEW: "not fitted: fewer points than free parameters — fix parameters or merge groups",
}


_NO_FINITE_ROW = (
    "not fitted: none of the group's rows has finite values (nan_policy 'omit', --nan omit, leaves out the others, "
    "and here left none) — clean its rows or drop the group"
)


def _name_missing_starts(plan: ChunkPlan, theta0: np.ndarray, groups: np.ndarray, rows: Rows) -> None:
    """The message of groups whose start, taken from a column, is missing or not finite."""
    names = plan.model.param_names
    for name, column in plan.starts.items():
        missing = groups & ~np.isfinite(theta0[:, names.index(name)])
        if missing.any():
            rows["message"].put(missing, f"not fitted: the group's start of '{name}' (the first value of column '{column}') is missing or not finite — fill it")


_HELD_OUT_TOO_MANY = (
    "not fitted: fewer training points than free parameters once the validation share (val, --val) is held out — "
    "lower val, fix parameters or merge groups"
)


def _empty_rows(model: ParametricModel, finite: np.ndarray, enough: np.ndarray, held_out: np.ndarray | None = None) -> Rows:
    """The result rows of a chunk before any fit: NaN numbers, and the groups that are not fitted
    (bad data; too few points, where ``held_out`` marks those the validation hold-out left short)."""
    k = finite.size
    nan = np.full(k, np.nan)
    rows: Rows = {}
    for name in model.param_names:
        rows[name], rows[f"{name}_stderr"] = nan.copy(), nan.copy()
    for name in FIT_STATISTICS:
        rows[name] = nan.copy()
    rows["iterations"] = np.zeros(k, dtype=np.int64)
    rows["status"], rows["message"], rows["at_bound"] = Labels(k, ""), Labels(k, ""), Labels(k, "")
    for name, unfitted in ((BAD_DATA, ~finite), (TOO_FEW, finite & ~enough)):
        rows["status"].put(unfitted, name)
        rows["message"].put(unfitted, _NOT_FITTED[name])
    if held_out is not None and held_out.any():
        rows["message"].put(held_out, _HELD_OUT_TOO_MANY)
    rows["success"] = np.zeros(k, dtype=bool)
    return rows


def _weights(chunk: _Chunk) -> torch.Tensor:
    return chunk.fit_mask if chunk.weights is None else chunk.fit_mask * chunk.weights


def _solve(plan: ChunkPlan, chunk: _Chunk, theta0: np.ndarray, rows: Rows, where: np.ndarray) -> None:
    import torch

    start = torch.as_tensor(theta0, dtype=chunk.y.dtype, device=chunk.y.device)
    if plan.path in ("linear", "batched"):
        _solve_fast(plan, chunk, start, rows, where)
        return
    weights = _weights(chunk)
    solve = _solve_by_gradient if plan.path == "gradient" else _solve_nonlinear
    _record(plan, chunk, weights, solve(plan, chunk, weights, start), rows, where)


@dataclass(frozen=True)
class _Solved:
    """A solve of a chunk's groups: parameters ``(K, p)`` and, per group, status, message,
    iterations and success; a polynomial solve adds ``(JᵀJ)⁻¹`` of the free parameters and the
    weighted residuals, computed more accurately than the statistics would from ``theta``."""

    theta: torch.Tensor
    status: np.ndarray
    message: np.ndarray
    iterations: np.ndarray
    success: np.ndarray
    inverse_normal: np.ndarray | None = None
    residuals: np.ndarray | None = None


def _record(plan: ChunkPlan, chunk: _Chunk, weights: torch.Tensor, solved: _Solved, rows: Rows, where: np.ndarray) -> None:
    """Statistics by SVD (:func:`gradfit.stats.fit_report`) and the solver's verdict into ``rows``."""
    _statistics(plan, chunk, weights, solved.theta, rows, where, solved.inverse_normal, solved.residuals)
    rows["iterations"][where] = solved.iterations
    rows["status"].put(where, solved.status)
    rows["message"].put(where, solved.message)
    rows["success"][where] = solved.success


def _subset_where(chunk: _Chunk, start: torch.Tensor, where: np.ndarray, mask: np.ndarray) -> tuple[_Chunk, torch.Tensor, np.ndarray]:
    import torch

    selected = torch.as_tensor(np.flatnonzero(mask), device=start.device)
    return _subset(chunk, selected), start.index_select(0, selected), where[mask]


def _solve_fast(plan: ChunkPlan, chunk: _Chunk, start: torch.Tensor, rows: Rows, where: np.ndarray) -> None:
    """The fused batched solver; groups it cannot settle go to the exact or reference path."""
    import torch

    from gradfit.solvers.batched import CONVERGED, STATUS_MESSAGES, STATUS_NAMES, solve_batched, solve_linear_batched

    model = plan.model
    data: dict[str, torch.Tensor] = {**chunk.inputs, "__y": chunk.y}
    if chunk.weights is not None or chunk.padded:
        data["__w"] = _weights(chunk)
    if plan.linear:
        solution = solve_linear_batched(plan.system, start, data, free=plan.free)
    else:
        solution = solve_batched(
            plan.system, start, data, free=plan.free,
            lower=[p.lower for p in model.parameters], upper=[p.upper for p in model.parameters],
            options=_batched_options(plan), on_iteration=plan.abandon_if_stopped,
        )
    code = solution.code.cpu().numpy()
    stats = _fast_statistics(plan, chunk, solution)
    condition = stats.pop("condition")
    accurate = _condition_limit(CONDITION_ACCURATE, chunk.y.dtype)
    if plan.linear:  # the exact solve where the normal equations lose digits
        redo = (code != CONVERGED) | ~(condition <= accurate)
    elif plan.accurate:  # the reference solver for what did not settle, or settled worse than a constant (R² < 0)
        redo = (code != CONVERGED) | solution.vanished.cpu().numpy() | ~(condition <= CONDITION_ACCURATE) | (stats["r2"] < 0)
    else:
        redo = np.zeros(code.shape, dtype=bool)
    limit = accurate if plan.linear or plan.accurate else _condition_limit(CONDITION_FAST, chunk.y.dtype)
    svd = ~redo & ~(condition <= limit)  # ill-conditioned or singular: SVD statistics
    keep = ~redo
    at = where[keep]
    theta = solution.theta.cpu().numpy()
    for i, name in enumerate(model.param_names):
        rows[name][at] = theta[keep, i]
    for name, values in stats.items():
        rows[name][at] = values[keep]
    rows["iterations"][at] = solution.n_iter.cpu().numpy()[keep]
    messages = list(STATUS_MESSAGES)
    if plan.linear:
        messages[CONVERGED] = "solved: the normal equations (one Gauss-Newton step is exact for a model linear in its parameters)"
    rows["status"].put_coded(at, code[keep], STATUS_NAMES)
    rows["message"].put_coded(at, code[keep], messages)
    rows["success"][at] = code[keep] == CONVERGED
    if chunk.val_mask is not None:
        rows["val_loss"][at] = _validation_loss(plan, chunk, solution.theta)[keep]
    if svd.any():
        part, _, part_where = _subset_where(chunk, start, where, svd)
        theta_svd = solution.theta.index_select(0, torch.as_tensor(np.flatnonzero(svd), device=start.device))
        _statistics(plan, part, _weights(part), theta_svd, rows, part_where)
    if redo.any():
        part, part_start, part_where = _subset_where(chunk, start, where, redo)
        weights = _weights(part)
        solve = _solve_linear if plan.linear else _solve_nonlinear
        _record(plan, part, weights, solve(plan, part, weights, part_start), rows, part_where)


def _condition_limit(bound: float, dtype: Any) -> float:
    """``bound``, a limit for float64, for ``dtype``: the condition number at which its normal
    equations keep as many digits (float32's 7 leave none to lose: every float32 group goes to the SVD)."""
    import torch

    return bound * torch.finfo(torch.float64).eps / torch.finfo(dtype).eps


def _batched_options(plan: ChunkPlan) -> Any:
    from gradfit.solvers.batched import BatchedOptions

    options = plan.options
    if plan.accurate:
        return BatchedOptions(max_iter=FAST_MAX_ITER)
    tolerance = options["tolerance"]
    settings: dict[str, Any] = {"max_iter": options["max_iter"] if options["max_iter"] is not None else FAST_DEFAULT_ITER}
    if tolerance is not None:
        settings.update(ftol=tolerance, xtol=tolerance)
    return BatchedOptions(**settings)


def _fast_statistics(plan: ChunkPlan, chunk: _Chunk, solution: Any) -> dict[str, np.ndarray]:
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
        "r2": torch.where(sst > 0, 1.0 - chisqr / sst, math.nan).cpu().numpy(),  # R² is undefined where y is constant
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


def _validation_loss(plan: ChunkPlan, chunk: _Chunk, theta: torch.Tensor) -> np.ndarray:
    """The fit's loss of the (weighted) residuals, averaged over each group's held-out points."""
    import torch

    from gradfit.losses import pointwise_loss

    loss = pointwise_loss(plan.options["loss"], plan.options["loss_scale"])
    with torch.no_grad():
        prediction = plan.model.predict(chunk.inputs, theta)
        residuals = (prediction - chunk.y) * (chunk.weights if chunk.weights is not None else 1.0)
        assert chunk.val_mask is not None
        return ((loss(residuals) * chunk.val_mask).sum(-1) / chunk.val_mask.sum(-1)).cpu().numpy()


def _solve_linear(plan: ChunkPlan, chunk: _Chunk, weights: torch.Tensor, start: torch.Tensor) -> _Solved:
    """Exact batched least squares for models linear in their parameters, as a single fit solves
    them: polynomials in one input in a centred basis (:func:`~gradfit.solvers.least_squares.polynomial_least_squares`),
    other designs by an SVD; groups where the model is not finite are ``non_finite``."""
    import torch

    from gradfit.solvers.linear import batched_least_squares, non_finite_message, polynomial_powers

    model = plan.model
    assert isinstance(model, FormulaModel)

    offset, design = model.design(chunk.inputs)
    free = torch.tensor([not p.fixed for p in model.parameters], device=start.device)
    target = chunk.y - offset - (design[..., ~free] @ start[:, ~free, None])[..., 0] if (~free).any() else chunk.y - offset
    a, rhs = design[..., free] * weights[..., None], target * weights
    broken = (~(torch.isfinite(a).all(-1) & torch.isfinite(rhs)) & (weights != 0)).sum(-1).cpu().numpy()
    a, rhs = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0), torch.nan_to_num(rhs, nan=0.0, posinf=0.0, neginf=0.0)
    polynomial = polynomial_powers(model, free.tolist()) if start.dtype == torch.float64 else None
    inverse_normal = residuals = None
    if polynomial is None:
        solution, singular = batched_least_squares(a, rhs)
    else:
        solution, singular, inverse_normal, residuals = _polynomial_groups(chunk, polynomial, torch.nan_to_num(target), weights)
    theta = start.clone()
    theta[:, free] = torch.as_tensor(solution, dtype=theta.dtype, device=theta.device)
    bad = broken > 0
    rows = torch.as_tensor(bad, device=theta.device)
    theta[rows] = start[rows]  # not fitted: they keep their starts
    counts = (weights != 0).sum(-1).cpu().numpy()
    status = np.where(bad, "non_finite", np.where(singular, "singular", "converged")).astype(object)
    message = np.full(status.shape, "solved exactly: one least-squares solve", dtype=object)
    message[singular] = _singular_messages(a[torch.as_tensor(singular, device=a.device)].cpu().numpy(), model, free.tolist())
    for i in np.flatnonzero(bad):
        message[i] = non_finite_message(int(broken[i]), int(counts[i]))
    if inverse_normal is not None:
        inverse_normal, residuals = _where_solved(inverse_normal, residuals, singular, bad)
    return _Solved(theta, status, message, np.where(bad, 0, 1), ~singular & ~bad, inverse_normal, residuals)


def _singular_messages(designs: np.ndarray, model: ParametricModel, free: list[bool]) -> list[str]:
    """For each singular group's design ``(m, n, q)``, the message naming the parameters its data
    cannot tell apart (one batched SVD; groups with the same lost parameters share a message)."""
    from gradfit.solvers.linear import singular_text
    from gradfit.stats import identifiable

    names = [p.name for p, is_free in zip(model.parameters, free) if is_free]
    seen = identifiable(designs) if designs.size else np.ones(designs.shape[:1] + (len(names),), dtype=bool)
    rows = [tuple(row) for row in seen.tolist()]
    texts = {row: singular_text(names, row) for row in set(rows)}
    return [texts[row] for row in rows]


def _polynomial_groups(chunk: _Chunk, polynomial: tuple[str, list[int]], target: torch.Tensor,
                       weights: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per group: the coefficients ``(K, q)`` of ``1, x, x², ...`` (the free powers), whether the
    group is rank-deficient, ``(AᵀA)⁻¹`` of those coefficients and the fit's weighted residuals, as
    a single fit computes them."""
    from gradfit.solvers.least_squares import polynomial_least_squares

    name, powers = polynomial
    with np.errstate(all="ignore"):  # groups whose numbers overflow are set aside by the caller
        accurate = polynomial_least_squares(chunk.inputs[name], target, max(powers), weights)
        factor = accurate.inverse_factor[:, powers]
        inverse = factor @ factor.mT
    return accurate.theta[:, powers], accurate.rank < len(powers), inverse, accurate.residuals


def _where_solved(inverse: np.ndarray, residuals: np.ndarray, singular: np.ndarray, bad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The polynomial solve's ``(AᵀA)⁻¹`` and residuals where it solved a group; a singular group's
    variances are infinite (undetermined), a group not fitted has no statistics (NaN)."""
    undetermined = np.where(np.eye(inverse.shape[-1], dtype=bool), np.inf, np.nan)
    inverse = np.where(singular[:, None, None], undetermined, inverse)
    return np.where(bad[:, None, None], np.nan, inverse), np.where(bad[:, None], np.nan, residuals)


def _solve_nonlinear(plan: ChunkPlan, chunk: _Chunk, weights: torch.Tensor, start: torch.Tensor) -> _Solved:
    """Least squares (a robust loss with its scale) from every start, or least absolute deviations."""
    from gradfit.losses import SOLVER_LOSS

    options = plan.options
    if options["loss"] == "mae":
        return _least_absolute_deviations(plan, chunk, weights, start)
    return _least_squares(plan, chunk, weights, start, SOLVER_LOSS[options["loss"]], options["loss_scale"], options["starts"])


def _least_squares(plan: ChunkPlan, chunk: _Chunk, weights: torch.Tensor, start: torch.Tensor, loss: str,
                   f_scale: float, n_starts: int) -> _Solved:
    """One batched solve of every group from ``n_starts`` points each (the best kept)."""
    import torch

    from gradfit.solvers.least_squares import flat_cost, solve_least_squares
    from gradfit.solvers.lsq import starting_points

    model, options = plan.model, plan.options
    lower = torch.tensor([p.lower for p in model.parameters], dtype=start.dtype)
    upper = torch.tensor([p.upper for p in model.parameters], dtype=start.dtype)
    fixed = torch.tensor([p.fixed for p in model.parameters])
    theta0 = start if n_starts == 1 else start.new_tensor(
        np.concatenate([starting_points(row, ~fixed.numpy(), n_starts, options["seed"]) for row in start.cpu().numpy()])
    )
    replicate = (lambda t: t) if n_starts == 1 else (lambda t: t.repeat_interleave(n_starts, dim=0))
    inputs = {k: replicate(v) for k, v in chunk.inputs.items()}
    y, w = replicate(chunk.y), replicate(weights)

    def rows_fn(rows: np.ndarray) -> dict[str, Any]:
        index = torch.as_tensor(rows, device=y.device)
        return _residual_functions(model, {k: v.index_select(0, index) for k, v in inputs.items()}, y[index], w[index])

    solution = solve_least_squares(
        theta0=theta0, **_residual_functions(model, inputs, y, w), rows_fn=rows_fn,
        lower=lower, upper=upper, fixed=fixed, loss=loss, f_scale=f_scale, method="gn" if options["solver"] == "gn" else "lm",
        options=_solver_options(options), on_iteration=plan.abandon_if_stopped,
        flat=flat_cost(y.cpu().numpy(), w.cpu().numpy()) if n_starts == 1 else None,  # several starts explore already
    )
    best = _best_of_starts(solution, len(start), n_starts)
    statuses = [solution.status[i] for i in best]
    theta = solution.theta[torch.as_tensor(best)]
    status = np.array(["converged" if s.converged else s.name.lower() for s in statuses], dtype=object)
    message = np.array([s.value for s in statuses], dtype=object)
    return _Solved(theta, status, message, solution.n_iter[torch.as_tensor(best)].cpu().numpy(), np.array([s.converged for s in statuses]))


def _residual_functions(model: ParametricModel, inputs: Mapping[str, torch.Tensor], y: torch.Tensor, w: torch.Tensor) -> dict[str, Any]:
    """The weighted residuals of ``model`` on these groups (and, for a formula, with its Jacobian in one pass)."""

    def residual_and_jacobian(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prediction, jac = model.predict_and_jacobian(inputs, theta)
        return (prediction - y) * w, jac * w[..., None]

    return {
        "residual_fn": lambda theta: (model.predict(inputs, theta) - y) * w,
        "residual_and_jacobian_fn": residual_and_jacobian if isinstance(model, FormulaModel) else None,
    }


def _least_absolute_deviations(plan: ChunkPlan, chunk: _Chunk, weights: torch.Tensor, start: torch.Tensor) -> _Solved:
    """The ``mae`` loss group by group as a single fit has it (:func:`gradfit.solvers.lsq.LAD_SCALES`):
    least squares from every start, then soft_l1 solves down the scales times each group's residual
    spread, each from where the last ended; a group leaves the sequence when a solve of it fails.

    Each group's residuals are divided by its own spread, so that one relative scale serves every
    group: the soft_l1 objective of ``r / spread`` at scale ``c`` is that of ``r`` at ``c · spread``
    over ``spread²``, with the same minimiser.
    """
    import torch

    from gradfit.solvers.lsq import LAD_SCALES
    from gradfit.stats import robust_spreads

    first = _least_squares(plan, chunk, weights, start, "linear", 1.0, plan.options["starts"])
    with torch.no_grad():
        residuals = ((plan.model.predict(chunk.inputs, first.theta) - chunk.y) * weights).cpu().numpy()
    spread = robust_spreads(residuals, chunk.fit_mask.cpu().numpy() > 0)
    theta, iterations = first.theta.clone(), first.iterations.copy()
    status, message, success = first.status.copy(), first.message.copy(), first.success.copy()
    message[~success] = [f"{text} (least absolute deviations: in the least-squares solve they start from)" for text in message[~success]]
    going, reached = success & (spread > 0), np.full(len(spread), np.nan)
    for relative in LAD_SCALES:
        rows = np.flatnonzero(going)
        if not rows.size:
            break
        selected = torch.as_tensor(rows, device=theta.device)
        scaled = weights.index_select(0, selected) / weights.new_tensor(spread[rows])[:, None]
        stage = _least_squares(plan, _subset(chunk, selected), scaled, theta.index_select(0, selected), "soft_l1", relative, 1)
        theta[selected] = stage.theta
        iterations[rows] += stage.iterations
        status[rows], message[rows], success[rows] = stage.status, stage.message, stage.success
        reached[rows] = relative * spread[rows]
        going[rows] = stage.success
    staged = np.flatnonzero(np.isfinite(reached))
    message[staged] = [f"{message[i]} (least absolute deviations: soft_l1 solves down to scale {reached[i]:.3g})" for i in staged]
    return _Solved(theta, status, message, iterations, success)


def _solve_by_gradient(plan: ChunkPlan, chunk: _Chunk, weights: torch.Tensor, start: torch.Tensor) -> _Solved:
    """Every group trained together by a ``torch.optim`` optimizer (:mod:`gradfit.solvers.batched_gradient`)."""
    from gradfit.solvers.batched_gradient import FAILED_CODES, STOP_CODES, solve_groups_by_gradient

    model, options = plan.model, plan.options
    sigma = 1.0 if chunk.weights is None else chunk.weights
    solution = solve_groups_by_gradient(
        model, chunk.inputs, chunk.y, weights, None if chunk.val_mask is None else chunk.val_mask * sigma, start,
        [not p.fixed for p in model.parameters], [p.lower for p in model.parameters], [p.upper for p in model.parameters],
        loss=options["loss"], loss_scale=options["loss_scale"], optimizer=options["optimizer"] or "adam",
        optimizer_options=options["optimizer_options"], epochs=options["epochs"], patience=options["patience"], scale=options["scale"],
        stop=plan.stop,
    )
    codes = solution.code.cpu().numpy()
    status = np.array([r.name.lower() for r in STOP_CODES], dtype=object)[codes]
    message = np.array([r.value for r in STOP_CODES], dtype=object)[codes]
    success = ~np.isin(codes, FAILED_CODES)
    return _Solved(solution.theta, status, message, solution.epochs.cpu().numpy(), success)


def _solver_options(options: Mapping[str, Any]) -> Any:
    from gradfit.solvers.least_squares import user_options

    return user_options(options["max_iter"], options["tolerance"])


def _best_of_starts(solution: Any, k: int, n_starts: int) -> list[int]:
    import torch

    cost = torch.where(torch.isfinite(solution.cost), solution.cost, torch.inf).reshape(k, n_starts)
    rank = cost + torch.where(solution.converged.reshape(k, n_starts).to(cost.device), 0.0, torch.inf)
    rank = torch.where(torch.isfinite(rank).any(-1, keepdim=True), rank, cost)
    return (torch.argmin(rank, dim=-1) + torch.arange(k, device=rank.device) * n_starts).tolist()


def _statistics(plan: ChunkPlan, chunk: _Chunk, weights: torch.Tensor, theta: torch.Tensor, rows: Rows, where: np.ndarray,
                inverse_normal: np.ndarray | None = None, residuals: np.ndarray | None = None) -> None:
    """Per-group statistics at ``theta`` into ``rows``; ``inverse_normal`` and ``residuals`` as
    :func:`gradfit.stats.fit_report` takes them, when a solver computed them more accurately."""
    import torch

    from gradfit import stats
    from gradfit.solvers.least_squares import robust_error_variance

    model = plan.model
    free = [not p.fixed for p in model.parameters]
    with torch.no_grad():
        prediction, jac = model.predict_and_jacobian(chunk.inputs, theta)
        if residuals is None:
            residuals = ((prediction - chunk.y) * weights).cpu().numpy()
        report = stats.fit_report(
            jac * weights[..., None], residuals, chunk.y,
            weights=chunk.weights, absolute_sigma=plan.options["absolute_sigma"],
            free=torch.tensor(free), mask=chunk.fit_mask, inverse_normal=inverse_normal,
            error_variance=robust_error_variance(
                plan.options["loss"], residuals, plan.options["loss_scale"],
                sum(free), plan.options["absolute_sigma"], chunk.fit_mask.cpu().numpy(),
            ),
        )
        if chunk.val_mask is not None:
            rows["val_loss"][where] = _validation_loss(plan, chunk, theta)
    values, stderr = theta.cpu().numpy(), report.stderr
    for i, name in enumerate(model.param_names):
        rows[name][where] = values[:, i]
        rows[f"{name}_stderr"][where] = stderr[:, i]
    for name in ("r2", "redchi", "aic", "bic"):
        rows[name][where] = report.statistics[name]


def _table(rows: Rows, model: ParametricModel) -> pl.DataFrame:
    import polars as pl

    # statuses and messages repeat: categorical columns hold each text once (1M groups: 4 MB, not 100)
    return pl.DataFrame({name: rows[name].column() if isinstance(rows[name], Labels) else rows[name] for name in result_columns(model.param_names)})

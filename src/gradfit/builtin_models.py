"""Named built-in models, usable wherever a model is accepted.

=====================  ===============================================  =========================
name                   model                                            parameters (start: guess)
=====================  ===============================================  =========================
``linear``             ``w*x + b`` (one input); ``w_a*a + w_b*b + b``   least-squares solution
                       over every input column (several inputs)
``poly:N``             ``wN*x**N + ... + w1*x + b``                     least-squares solution
``exp_decay``          ``a*exp(-k*x) + c``                              see :func:`guess_exp_decay`
``logistic``           ``L*sigmoid(k*(x - x0)) + c``                    see :func:`guess_logistic`
``michaelis_menten``   ``vmax*x/(km + x)``                              see :func:`guess_michaelis_menten`
``gaussian``           ``a*exp(-(x - mu)**2/(2*s**2)) + c``             see :func:`guess_gaussian`
``mlp:H``              ``Linear(d, H) -> tanh -> Linear(H, 1)``         torch's init, seeded
=====================  ===============================================  =========================

The formula models are :class:`~gradfit.model.FormulaModel` s over the single input column, named after
it (``w*t_u + b``); choose the column with ``poly:2(t_u)`` when the data have several. Parameter names
that collide with a column get a trailing ``_``. Each formula model computes a data-driven starting
point from the training data (:meth:`BuiltinFormulaModel.with_initial_guess`): a grid over the
nonlinear parameters with the linear ones solved exactly (variable projection), so that
Levenberg-Marquardt starts in the right basin. A name written as a built-in is never read as a formula.

Only numpy is used at import; torch is imported when an ``mlp`` is built.
"""

from __future__ import annotations

import contextlib
import keyword
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.errors import ModelError
from gradfit.model import FormulaModel, ModuleModel, Parameter, ParametricModel, make_model

if TYPE_CHECKING:
    from gradfit.data import Dataset

__all__ = [
    "BUILTIN_NAMES",
    "BuiltinFormulaModel",
    "BuiltinModuleModel",
    "is_builtin",
    "builtin_model",
    "check_builtin",
    "model_for",
    "usable_name",
    "guess_exp_decay",
    "guess_logistic",
    "guess_michaelis_menten",
    "guess_gaussian",
]

#: name -> whether it takes ``:N`` (poly degree, mlp hidden units)
BUILTIN_NAMES: dict[str, bool] = {
    "linear": False,
    "poly": True,
    "exp_decay": False,
    "logistic": False,
    "michaelis_menten": False,
    "gaussian": False,
    "mlp": True,
}
_SPEC = re.compile(r"^\s*(?P<name>[a-z_]+)\s*(?::\s*(?P<arg>\S+?))?\s*(?:\(\s*(?P<column>[^()]*?)\s*\))?\s*$")
#: the largest polynomial degree and hidden-layer width accepted
MAX_DEGREE, MAX_HIDDEN = 20, 4096


@dataclass(frozen=True)
class BuiltinFormulaModel(FormulaModel):
    """A built-in formula model that can start from a data-driven guess.

    Attributes
    ----------
    builtin
        The built-in's name (``"exp_decay"``...).
    roles
        ``(role, parameter name)`` pairs: the template's names (``a``, ``k``, ``c``) and the names
        used in the formula (different only where a column has the same name).
    """

    builtin: str = ""
    roles: tuple[tuple[str, str], ...] = ()

    def initial_guess(self, inputs: Mapping[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
        """Starting values by parameter name, computed from the data.

        Parameters
        ----------
        inputs
            The input column(s) by name.
        y
            The targets.
        """
        x = np.asarray(inputs[self.input_names[0]], dtype=float) if len(self.input_names) == 1 else None
        y = np.asarray(y, dtype=float)
        if self.builtin in ("linear", "poly"):
            values = self._least_squares_guess(inputs, y)
        else:
            values = dict(zip(_GUESS_ROLES[self.builtin], _GUESSES[self.builtin](x, y)))
        names = dict(self.roles)
        return {names[role]: float(v) for role, v in values.items() if np.isfinite(v)}

    def _least_squares_guess(self, inputs: Mapping[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
        columns = [np.asarray(inputs[name], dtype=float) for name in self.input_names]
        roles = [role for role, _ in self.roles]
        if self.builtin == "poly":
            # roles: wN ... w1, b; polyfit scales its columns internally (full=True: no RankWarning)
            with np.errstate(all="ignore"):
                coef = np.polynomial.polynomial.polyfit(columns[0], y, len(roles) - 1, full=True)[0]
            return dict(zip(roles, coef[::-1]))
        design = np.column_stack([*columns, np.ones_like(y)])
        coef = np.linalg.lstsq(design, y, rcond=None)[0]
        return dict(zip(roles, coef))

    def with_initial_guess(self, dataset: Dataset) -> BuiltinFormulaModel:
        """A copy whose parameters without a starting value start from :meth:`initial_guess`.

        Starting values given by the user (``params={"k": 0.5}``) are kept.
        """
        if dataset.n_rows < 2:
            return self
        guess = self.initial_guess(dataset.inputs, dataset.y)
        fresh = {name: {"init": value} for name, value in guess.items() if self._unset(name)}
        return self.with_parameters(fresh) if fresh else self  # type: ignore[return-value]

    def _unset(self, name: str) -> bool:
        return next(p for p in self.parameters if p.name == name).init is None


@dataclass(frozen=True)
class BuiltinModuleModel(ModuleModel):
    """The ``mlp:H`` network: a :class:`~gradfit.model.ModuleModel` with a readable description.

    gradfit owns this network, so it stays in the fit's dtype and on its device after the fit
    (a user's module returns to its own): its predictions keep the fit's precision.
    """

    label: str = "mlp"

    @property
    def description(self) -> str:
        """The spec the network was built from, as ``"mlp:16"``."""
        return self.label

    def placement_kept(self) -> contextlib.AbstractContextManager[None]:
        """No restoring: the network lives where the fit put it."""
        return contextlib.nullcontext()


def is_builtin(spec: Any) -> bool:
    """Whether ``spec`` names a built-in model (``"linear"``, ``"poly:3"``, ``"gaussian(t)"``...)."""
    if not isinstance(spec, str):
        return False
    match = _SPEC.match(spec)
    return match is not None and match["name"] in BUILTIN_NAMES


def builtin_model(spec: str, columns: Sequence[str] = (), *, seed: int = 0) -> ParametricModel | ModuleModel:
    """Build the built-in model named by ``spec`` over the data columns ``columns``.

    Parameters
    ----------
    spec
        ``"linear"``, ``"poly:N"``, ``"exp_decay"``, ``"logistic"``, ``"michaelis_menten"``,
        ``"gaussian"`` or ``"mlp:H"``, optionally followed by the input column: ``"poly:2(t_u)"``.
    columns
        The available input columns; ``()`` means one input named ``x``.
    seed
        Seed of the network's initial weights (``mlp``).

    Returns
    -------
    BuiltinFormulaModel or BuiltinModuleModel
        Parameters start at 1.0 until :meth:`BuiltinFormulaModel.with_initial_guess` sees the data.

    Raises
    ------
    ModelError
        For an unknown name, a missing or bad ``:N``, or an input column that is missing,
        ambiguous or not usable as a name in a formula.
    """
    name, arg, inputs = _resolve(spec, tuple(columns))
    if name == "mlp":
        return _mlp(spec.strip(), inputs, arg, seed)
    text, roles = _template(name, arg, inputs)
    return _formula(name, text, roles, inputs)


def check_builtin(spec: str, columns: Sequence[str] = ()) -> None:
    """Raise :class:`ModelError` if :func:`builtin_model` would refuse ``spec``; imports no torch."""
    _resolve(spec, tuple(columns))


def _resolve(spec: str, columns: tuple[str, ...]) -> tuple[str, int | None, tuple[str, ...]]:
    """The built-in's name, its size and its input columns, all checked."""
    name, arg, column = _parse_spec(spec)
    if name == "mlp":
        inputs = (column,) if column else columns or ("x",)
    elif name == "linear" and not column and len(columns) > 1:
        inputs = columns
    else:
        inputs = (_single_input(spec, column, columns),)
    _check_columns(spec, inputs, columns)
    if name != "mlp":
        for input_name in inputs:
            _check_usable(input_name)
    return name, arg, inputs


def model_for(
    spec: Any,
    dataset: Dataset,
    *,
    params: Sequence[Parameter] | Mapping[str, Any] | None = None,
    seed: int = 0,
) -> ParametricModel | ModuleModel:
    """Build ``spec`` over ``dataset``'s columns; a built-in starts from its guess on ``dataset``.

    Parameters
    ----------
    spec
        Anything :func:`gradfit.model.make_model` accepts, or a built-in name.
    dataset
        The training data (never the validation data: the guess must not see it).
    params
        Starting values or :class:`~gradfit.model.Parameter` overrides; they win over the guess.
    seed
        Seed of a built-in network's initial weights.
    """
    if is_builtin(spec):
        model = builtin_model(spec, dataset.input_names, seed=seed)
        if params and isinstance(model, ParametricModel):
            model = make_model(model, dataset.input_names, params)
    else:
        model = make_model(spec, dataset.input_names, params)
    guess = getattr(model, "with_initial_guess", None)
    return guess(dataset) if guess is not None else model


# -- parsing the name -------------------------------------------------------------------------------
def _parse_spec(spec: str) -> tuple[str, int | None, str | None]:
    match = _SPEC.match(spec)
    if match is None or match["name"] not in BUILTIN_NAMES:
        raise ModelError(f"'{spec}' is not a built-in model — choose one of {_choices()}")
    name, raw, column = match["name"], match["arg"], match["column"] or None
    takes_arg = BUILTIN_NAMES[name]
    if takes_arg and raw is None:
        example = "poly:2" if name == "poly" else "mlp:8"
        raise ModelError(f"'{name}' needs a size after a colon, e.g. '{example}'")
    if not takes_arg and raw is not None:
        raise ModelError(f"'{name}' takes no ':{raw}' — write just '{name}'")
    arg = None if raw is None else _size(name, raw)
    return name, arg, column


def _size(name: str, raw: str) -> int:
    limit, what = (MAX_DEGREE, "degree") if name == "poly" else (MAX_HIDDEN, "number of hidden units")
    if not raw.isdigit() or not 1 <= int(raw) <= limit:
        raise ModelError(f"'{name}:{raw}': the {what} must be a whole number from 1 to {limit}")
    return int(raw)


def _choices() -> str:
    return "linear, poly:N, exp_decay, logistic, michaelis_menten, gaussian, mlp:H"


def _single_input(spec: str, column: str | None, columns: tuple[str, ...]) -> str:
    if column:
        return column
    if not columns:
        return "x"
    if len(columns) > 1:
        name = spec.strip()
        raise ModelError(
            f"'{name}' takes one input column but the data have {len(columns)} "
            f"({', '.join(columns[:6])}) — name it, e.g. '{name}({columns[0]})'"
        )
    return columns[0]


def _check_columns(spec: str, inputs: Sequence[str], columns: Sequence[str]) -> None:
    missing = [c for c in inputs if columns and c not in columns]
    if missing:
        raise ModelError(f"'{spec.strip()}': no data column '{missing[0]}' — columns are {', '.join(columns)}")


def usable_name(name: str) -> bool:
    """Whether a column name can appear in a formula (an ASCII identifier, not a keyword, function or constant)."""
    from gradfit.formula import ALIASES, CONSTANTS, FUNCTIONS

    reserved = set(FUNCTIONS) | set(ALIASES) | set(CONSTANTS)
    return name.isascii() and name.isidentifier() and not keyword.iskeyword(name) and name not in reserved


def _check_usable(name: str) -> None:
    if not usable_name(name):
        raise ModelError(unusable_column_message(name))


def unusable_column_message(name: str) -> str:
    """Why column ``name`` cannot appear in a formula, with a name it could have."""
    import unicodedata

    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    suggestion = re.sub(r"\W+", "_", plain).strip("_") or "x"
    if not usable_name(suggestion):
        suggestion = f"{suggestion}_" if suggestion.isidentifier() else f"c_{suggestion}"
    return (
        f"column '{name}' cannot be used as a name in a formula — rename it to letters, digits and _ "
        f"(not a function or constant name), e.g. '{suggestion}'"
    )


# -- templates --------------------------------------------------------------------------------------
def _fresh(role: str, taken: set[str]) -> str:
    name = role
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _template(name: str, arg: int | None, inputs: tuple[str, ...]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The formula text and its ``(role, parameter)`` pairs, with parameter names clear of columns."""
    taken = set(inputs)
    if name == "linear" and len(inputs) > 1:
        roles = [(f"w_{c}", _fresh(f"w_{c}", taken)) for c in inputs] + [("b", _fresh("b", taken))]
        terms = [f"{p}*{c}" for (_, p), c in zip(roles, inputs)]
        return " + ".join(terms) + f" + {roles[-1][1]}", tuple(roles)
    x = inputs[0]
    if name in ("linear", "poly"):
        degree = 1 if name == "linear" else int(arg or 1)
        powers = range(degree, 0, -1)
        roles = [(("w" if degree == 1 else f"w{j}"), "") for j in powers] + [("b", "")]
        roles = [(role, _fresh(role, taken)) for role, _ in roles]
        terms = [f"{p}*{x}" + (f"**{j}" if j > 1 else "") for (_, p), j in zip(roles, powers)]
        return " + ".join(terms) + f" + {roles[-1][1]}", tuple(roles)
    role_names = _GUESS_ROLES[name]
    p = {role: _fresh(role, taken) for role in role_names}
    return _TEMPLATES[name].format(x=x, **p), tuple((role, p[role]) for role in role_names)


_TEMPLATES = {
    "exp_decay": "{a}*exp(-{k}*{x}) + {c}",
    "logistic": "{L}*sigmoid({k}*({x} - {x0})) + {c}",
    "michaelis_menten": "{vmax}*{x}/({km} + {x})",
    "gaussian": "{a}*exp(-({x} - {mu})**2/(2*{s}**2)) + {c}",
}
_GUESS_ROLES = {
    "exp_decay": ("a", "k", "c"),
    "logistic": ("L", "k", "x0", "c"),
    "michaelis_menten": ("vmax", "km"),
    "gaussian": ("a", "mu", "s", "c"),
}


def _formula(name: str, text: str, roles: tuple[tuple[str, str], ...], inputs: tuple[str, ...]) -> BuiltinFormulaModel:
    from gradfit.formula import parse

    parameters = tuple(Parameter(p) for _, p in roles)
    return BuiltinFormulaModel(inputs, parameters, parse(text), builtin=name, roles=roles)


def _mlp(label: str, inputs: tuple[str, ...], hidden: int | None, seed: int) -> BuiltinModuleModel:
    import torch

    width = int(hidden or 8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = torch.nn.Sequential(
            torch.nn.Linear(len(inputs), width), torch.nn.Tanh(), torch.nn.Linear(width, 1)
        )
    return BuiltinModuleModel(module, inputs, label=label)


# -- data-driven starting points ---------------------------------------------------------------------
def _offset_fit(features: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each row ``f`` of ``features (G, n)``: least squares ``y ≈ scale*f + offset``.

    Returns ``scale, offset, sse`` of shape ``(G,)``; rows that are constant or not finite get an
    infinite sse.
    """
    with np.errstate(all="ignore"):
        fm = features.mean(axis=1, keepdims=True)
        centred = features - fm
        ym = y.mean()
        var = (centred**2).sum(axis=1)
        scale = (centred @ (y - ym)) / var
        offset = ym - scale * fm[:, 0]
        sse = ((y - offset[:, None] - scale[:, None] * features) ** 2).sum(axis=1)
    bad = ~np.isfinite(sse) | (var <= 1e-300)
    sse[bad] = np.inf
    return scale, offset, sse


def _span(x: np.ndarray) -> float:
    span = float(np.ptp(x)) if x.size else 0.0
    return span if span > 0 else 1.0


def guess_exp_decay(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Starting ``(a, k, c)`` for ``a*exp(-k*x) + c``.

    ``k`` candidates: a log-spaced grid of rates (decay and growth) over the data's span, plus the
    classic estimate — ``c`` from the tail, ``a`` from the head, ``k`` from a log-linear fit of
    ``log|y - c|`` against ``x``; for each, ``a`` and ``c`` are solved exactly and the candidate with
    the smallest squared error wins.
    """
    x0, span = float(x.min()), _span(x)
    rates = np.geomspace(0.05, 50.0, 60) / span
    candidates = np.concatenate([rates, -rates[:20], _log_linear_rate(x, y)])
    shifted = x - x0
    k, scale, offset = _best_rate(candidates, shifted, y)
    k, scale, offset = _best_rate(k * np.geomspace(1 / 1.15, 1.15, 41), shifted, y)  # refine
    with np.errstate(all="ignore"):
        a = float(scale * np.exp(k * x0))
    return (a if np.isfinite(a) else scale), k, offset


def _best_rate(rates: np.ndarray, shifted: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    with np.errstate(all="ignore"):
        features = np.exp(-rates[:, None] * shifted[None, :])
    scale, offset, sse = _offset_fit(features, y)
    best = int(np.argmin(sse))
    return float(rates[best]), float(scale[best]), float(offset[best])


def _log_linear_rate(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``k`` from a log-linear fit of the head-to-tail decay (empty when it cannot be formed)."""
    order = np.argsort(x)
    xs, ys = x[order], y[order]
    m = max(1, len(ys) // 10)
    head, tail = ys[:m].mean(), ys[-m:].mean()
    sign = 1.0 if head >= tail else -1.0
    c = tail - sign * 0.05 * abs(head - tail)
    z = sign * (ys - c)
    keep = z > 0
    if keep.sum() < 2 or np.ptp(xs[keep]) == 0:
        return np.empty(0)
    slope = np.polyfit(xs[keep], np.log(z[keep]), 1)[0]
    return np.array([-slope]) if np.isfinite(slope) and slope != 0 else np.empty(0)


def guess_logistic(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Starting ``(L, k, x0, c)`` for ``L*sigmoid(k*(x - x0)) + c``.

    A grid of midpoints ``x0`` across the data and of steepnesses ``k > 0`` (a transition over
    1/40 to 8 times the span); ``L`` and ``c`` solved exactly for each, so a falling curve has
    ``L < 0``.
    """
    span = _span(x)
    mids = np.linspace(x.min(), x.max(), 41)
    rates = np.geomspace(0.5, 200.0, 40) / span
    kk, mm = (g.ravel() for g in np.meshgrid(rates, mids, indexing="ij"))
    with np.errstate(all="ignore"):
        features = 0.5 * (1.0 + np.tanh(0.5 * kk[:, None] * (x[None, :] - mm[:, None])))
    scale, offset, sse = _offset_fit(features, y)
    best = int(np.argmin(sse))
    return float(scale[best]), float(kk[best]), float(mm[best]), float(offset[best])


def guess_michaelis_menten(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Starting ``(vmax, km)`` for ``vmax*x/(km + x)``: a log grid of ``km``, ``vmax`` exact for each."""
    positive = x[x > 0]
    low, high = (positive.min(), positive.max()) if positive.size else (1.0, 10.0)
    km = np.geomspace(low / 20.0, high * 20.0, 120)
    with np.errstate(all="ignore"):
        features = x[None, :] / (km[:, None] + x[None, :])
        vmax = (features @ y) / (features**2).sum(axis=1)
        sse = ((y[None, :] - vmax[:, None] * features) ** 2).sum(axis=1)
    sse[~np.isfinite(sse)] = np.inf
    best = int(np.argmin(sse))
    return float(vmax[best]), float(km[best])


def guess_gaussian(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """Starting ``(a, mu, s, c)`` for ``a*exp(-(x - mu)**2/(2*s**2)) + c``.

    A grid of centres ``mu`` across the data and widths ``s`` from 1/100 of the span to the span;
    ``a`` (a peak or a dip) and ``c`` solved exactly for each.
    """
    span = _span(x)
    centres = np.linspace(x.min(), x.max(), 61)
    widths = np.geomspace(span / 100.0, span, 30)
    ss, mm = (g.ravel() for g in np.meshgrid(widths, centres, indexing="ij"))
    features = np.exp(-((x[None, :] - mm[:, None]) ** 2) / (2.0 * ss[:, None] ** 2))
    scale, offset, sse = _offset_fit(features, y)
    best = int(np.argmin(sse))
    return float(scale[best]), float(mm[best]), float(ss[best]), float(offset[best])


_GUESSES: dict[str, Callable[[np.ndarray, np.ndarray], tuple[float, ...]]] = {
    "exp_decay": guess_exp_decay,
    "logistic": guess_logistic,
    "michaelis_menten": guess_michaelis_menten,
    "gaussian": guess_gaussian,
}

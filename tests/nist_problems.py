"""NIST StRD reference problems: a loader for NIST's text files and the table of models.

Used by the NIST tests and benchmarks. Every problem carries its data, both starting points, the
certified values, standard deviations and residual sum of squares, and its model twice: as a gradfit
formula string (``formula``) and as a batched torch function (``model``) built from that same string,
so the two cannot drift apart.

Nelson models ``log(y)``: ``response`` says so and :attr:`NistProblem.target` is ``log(y)``.
Linear problems also give their design matrix (:meth:`NistProblem.design`).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "NIST_DIR",
    "NONLINEAR",
    "LINEAR",
    "NistProblem",
    "load",
    "nonlinear_problems",
    "linear_problems",
    "lre",
    "compile_formula",
    "compile_formula_numpy",
]

NIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "nist"  # /work/shared/nist

NONLINEAR = (
    "Misra1a", "Chwirut2", "Chwirut1", "Lanczos3", "Gauss1", "Gauss2", "DanWood", "Misra1b",
    "Kirby2", "Hahn1", "Nelson", "MGH17", "Lanczos1", "Lanczos2", "Gauss3", "Misra1c", "Misra1d",
    "Roszman1", "ENSO", "MGH09", "Thurber", "BoxBOD", "Rat42", "MGH10", "Eckerle4", "Rat43",
    "Bennett5",
)  # NIST's order: lower, average, higher difficulty
LINEAR = (
    "Norris", "Pontius", "NoInt1", "NoInt2", "Filip", "Longley",
    "Wampler1", "Wampler2", "Wampler3", "Wampler4", "Wampler5",
)

_GAUSS = "b1*exp(-b2*x) + b3*exp(-(x-b4)**2/b5**2) + b6*exp(-(x-b7)**2/b8**2)"
_LANCZOS = "b1*exp(-b2*x) + b3*exp(-b4*x) + b5*exp(-b6*x)"
_CUBIC_CUBIC = "(b1 + b2*x + b3*x**2 + b4*x**3) / (1 + b5*x + b6*x**2 + b7*x**3)"
_ENSO = (
    "b1 + b2*cos(2*pi*x/12) + b3*sin(2*pi*x/12) + b5*cos(2*pi*x/b4) + b6*sin(2*pi*x/b4)"
    " + b8*cos(2*pi*x/b7) + b9*sin(2*pi*x/b7)"
)

#: gradfit formula of each nonlinear model, transcribed from the "Model:" section of its file
NONLINEAR_FORMULAS: dict[str, str] = {
    "Bennett5": "b1*(b2+x)**(-1/b3)",
    "BoxBOD": "b1*(1-exp(-b2*x))",
    "Chwirut1": "exp(-b1*x)/(b2+b3*x)",
    "Chwirut2": "exp(-b1*x)/(b2+b3*x)",
    "DanWood": "b1*x**b2",
    "ENSO": _ENSO,
    "Eckerle4": "(b1/b2)*exp(-0.5*((x-b3)/b2)**2)",
    "Gauss1": _GAUSS,
    "Gauss2": _GAUSS,
    "Gauss3": _GAUSS,
    "Hahn1": _CUBIC_CUBIC,
    "Kirby2": "(b1 + b2*x + b3*x**2) / (1 + b4*x + b5*x**2)",
    "Lanczos1": _LANCZOS,
    "Lanczos2": _LANCZOS,
    "Lanczos3": _LANCZOS,
    "MGH09": "b1*(x**2 + x*b2) / (x**2 + x*b3 + b4)",
    "MGH10": "b1*exp(b2/(x+b3))",
    "MGH17": "b1 + b2*exp(-x*b4) + b3*exp(-x*b5)",
    "Misra1a": "b1*(1-exp(-b2*x))",
    "Misra1b": "b1*(1-(1+b2*x/2)**(-2))",
    "Misra1c": "b1*(1-(1+2*b2*x)**(-0.5))",
    "Misra1d": "b1*b2*x*((1+b2*x)**(-1))",
    "Nelson": "b1 - b2*x1*exp(-b3*x2)",
    "Rat42": "b1/(1+exp(b2-b3*x))",
    "Rat43": "b1/((1+exp(b2-b3*x))**(1/b4))",
    "Roszman1": "b1 - b2*x - arctan(b3/(x-b4))/pi",
    "Thurber": _CUBIC_CUBIC,
}


def _polynomial(degree: int) -> str:
    terms = ["b0", "b1*x"] + [f"b{k}*x**{k}" for k in range(2, degree + 1)]
    return " + ".join(terms[: degree + 1])


#: gradfit formula of each linear model (parameters b0.. as NIST's B0..)
LINEAR_FORMULAS: dict[str, str] = {
    "Norris": _polynomial(1),
    "Pontius": _polynomial(2),
    "NoInt1": "b1*x",
    "NoInt2": "b1*x",
    "Filip": _polynomial(10),
    "Longley": "b0 + " + " + ".join(f"b{k}*x{k}" for k in range(1, 7)),
    **{f"Wampler{i}": _polynomial(5) for i in range(1, 6)},
}

_RANGE = re.compile(r"(starting values|certified values|data)\s*\(lines\s+(\d+)\s+to\s+(\d+)\)", re.I)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


@dataclass(frozen=True, eq=False)
class NistProblem:
    """One NIST StRD problem.

    Attributes
    ----------
    name, kind, difficulty
        File name without ``.dat``; ``"nonlinear"`` or ``"linear"``; NIST's level (Lower/Average/Higher).
    x
        Predictors by name, each ``(n,)`` float64 (``x``, or ``x1``... when there are several).
    y
        Response as given in the file, ``(n,)``.
    response
        What the model predicts: ``"y"``, or ``"log(y)"`` for Nelson.
    param_names
        ``("b1", "b2", ...)`` (nonlinear) or ``("b0", "b1", ...)`` (linear, NIST's B0...).
    start1, start2
        NIST's two starting points (nonlinear problems), else ``None``.
    certified, certified_sd
        Certified parameter values and standard deviations.
    certified_rss
        Certified residual sum of squares.
    formula
        The model as a gradfit formula string.
    """

    name: str
    kind: str
    difficulty: str
    x: Mapping[str, np.ndarray]
    y: np.ndarray
    response: str
    param_names: tuple[str, ...]
    start1: np.ndarray | None
    start2: np.ndarray | None
    certified: np.ndarray
    certified_sd: np.ndarray
    certified_rss: float
    formula: str

    @property
    def n(self) -> int:
        """Number of observations."""
        return int(self.y.shape[0])

    @property
    def p(self) -> int:
        """Number of parameters."""
        return len(self.param_names)

    @property
    def target(self) -> np.ndarray:
        """The response the model predicts (``log(y)`` for Nelson)."""
        return np.log(self.y) if self.response == "log(y)" else self.y

    def starts(self) -> tuple[np.ndarray, np.ndarray]:
        """Both starting points (nonlinear problems only)."""
        assert self.start1 is not None and self.start2 is not None
        return self.start1, self.start2

    def model(self, x: Mapping[str, torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
        """Predictions ``(K, n)`` for parameters ``theta (K, p)`` and predictors ``(n,)`` each."""
        return _compiled(self.formula, self.param_names)(x, theta)

    def tensors(self, dtype: torch.dtype = torch.float64) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Predictors and target as tensors."""
        x = {k: torch.as_tensor(v, dtype=dtype) for k, v in self.x.items()}
        return x, torch.as_tensor(self.target, dtype=dtype)

    def residual_fn(self, dtype: torch.dtype = torch.float64) -> Callable[[torch.Tensor], torch.Tensor]:
        """``theta (K, p) -> model - target (K, n)``, ready for the least-squares solver."""
        x, target = self.tensors(dtype)
        compiled = _compiled(self.formula, self.param_names)
        return lambda theta: compiled(x, theta) - target

    def design(self) -> np.ndarray:
        """Design matrix ``(n, p)`` of a linear problem: one column per parameter."""
        if self.name == "Longley":
            return np.column_stack([np.ones(self.n)] + [self.x[f"x{k}"] for k in range(1, 7)])
        if self.name.startswith("NoInt"):
            return self.x["x"][:, None].copy()
        return np.column_stack([self.x["x"] ** k for k in range(self.p)])


def lre(estimate: np.ndarray | float, certified: np.ndarray | float, cap: float = 11.0) -> np.ndarray:
    """Log relative error ``-log10(|est - cert| / |cert|)``, capped at ``cap``.

    Where the certified value is 0 the absolute error is used instead (NIST's LAE).
    """
    est = np.asarray(estimate, dtype=float)
    cert = np.asarray(certified, dtype=float)
    err = np.abs(est - cert)
    rel = np.where(cert != 0, err / np.where(cert != 0, np.abs(cert), 1.0), err)
    with np.errstate(divide="ignore"):
        out = np.where(rel > 0, -np.log10(np.where(rel > 0, rel, 1.0)), cap)
    out = np.where(np.isfinite(est), out, 0.0)
    return np.clip(out, 0.0, cap)


# ---------------------------------------------------------------------------------------- parsing


def _lines(path: Path) -> list[str]:
    return path.read_text().replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _ranges(lines: list[str]) -> dict[str, tuple[int, int]]:
    found: dict[str, tuple[int, int]] = {}
    for line in lines[:15]:
        match = _RANGE.search(line)
        if match:
            found[match.group(1).lower().split()[0]] = (int(match.group(2)), int(match.group(3)))
    return found


def _block(lines: list[str], span: tuple[int, int]) -> list[str]:
    return lines[span[0] - 1 : span[1]]


def _numbers(text: str) -> list[float]:
    return [float(t) for t in re.findall(_NUMBER, text)]


def _data(lines: list[str], span: tuple[int, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rows = np.array([_numbers(line) for line in _block(lines, span) if line.strip()], dtype=np.float64)
    header = lines[span[0] - 2].split(":", 1)[-1].split()
    names = header[1:] if len(header) == rows.shape[1] else [f"x{k}" for k in range(1, rows.shape[1])]
    return rows[:, 0].copy(), {name: rows[:, k + 1].copy() for k, name in enumerate(names)}


def _difficulty(lines: list[str]) -> str:
    for line in lines[:60]:
        if "Level of Difficulty" in line:
            return line.split()[0]
    return "?"


def _parse_nonlinear(name: str, lines: list[str]) -> NistProblem:
    spans = _ranges(lines)
    rows = [line for line in _block(lines, spans["starting"]) if "=" in line]
    table = np.array([_numbers(line.split("=", 1)[1]) for line in rows], dtype=np.float64)
    names = tuple(line.split("=", 1)[0].strip() for line in rows)
    rss_line = next(line for line in _block(lines, spans["certified"]) if "Residual Sum of Squares" in line)
    y, x = _data(lines, spans["data"])
    return NistProblem(
        name=name,
        kind="nonlinear",
        difficulty=_difficulty(lines),
        x=x,
        y=y,
        response="log(y)" if name == "Nelson" else "y",
        param_names=names,
        start1=table[:, 0].copy(),
        start2=table[:, 1].copy(),
        certified=table[:, 2].copy(),
        certified_sd=table[:, 3].copy(),
        certified_rss=_numbers(rss_line.split(":", 1)[1])[0],
        formula=NONLINEAR_FORMULAS[name],
    )


def _parse_linear(name: str, lines: list[str]) -> NistProblem:
    spans = _ranges(lines)
    block = _block(lines, spans["certified"])
    params = [line.split() for line in block if re.match(r"\s*B\d+\s", line)]
    residual = next(line for line in block if line.strip().startswith("Residual") and len(_numbers(line)) >= 3)
    y, x = _data(lines, spans["data"])
    return NistProblem(
        name=name,
        kind="linear",
        difficulty=_difficulty(lines),
        x=x,
        y=y,
        response="y",
        param_names=tuple(p[0].lower() for p in params),
        start1=None,
        start2=None,
        certified=np.array([float(p[1]) for p in params]),
        certified_sd=np.array([float(p[2]) for p in params]),
        certified_rss=_numbers(residual)[1],
        formula=LINEAR_FORMULAS[name],
    )


@cache
def load(name: str) -> NistProblem:
    """Load the NIST problem ``name`` (e.g. ``"MGH09"``, ``"Filip"``)."""
    if name in NONLINEAR:
        return _parse_nonlinear(name, _lines(NIST_DIR / "nonlinear" / f"{name}.dat"))
    if name in LINEAR:
        return _parse_linear(name, _lines(NIST_DIR / "linear" / f"{name}.dat"))
    raise KeyError(f"unknown NIST problem {name!r}")


def nonlinear_problems() -> list[NistProblem]:
    """All 27 nonlinear problems, in NIST's order of difficulty."""
    return [load(name) for name in NONLINEAR]


def linear_problems() -> list[NistProblem]:
    """All 11 linear problems."""
    return [load(name) for name in LINEAR]


# ------------------------------------------------------------- formula -> torch (a test-side helper)

_TORCH_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "sin": torch.sin,
    "cos": torch.cos,
    "arctan": torch.atan,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}
_BINARY: dict[type, Callable[[object, object], object]] = {
    ast.Add: lambda a, b: a + b,  # type: ignore[operator]
    ast.Sub: lambda a, b: a - b,  # type: ignore[operator]
    ast.Mult: lambda a, b: a * b,  # type: ignore[operator]
    ast.Div: lambda a, b: a / b,  # type: ignore[operator]
    ast.Pow: lambda a, b: a**b,  # type: ignore[operator]
}
Env = Mapping[str, object]


_NUMPY_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "sin": np.sin,
    "cos": np.cos,
    "arctan": np.arctan,
}


def _compile_node(node: ast.AST, functions: Mapping[str, Callable[[object], object]]) -> Callable[[Env], object]:
    """Turn a whitelisted ``ast`` node into a closure ``env -> value`` (no ``eval``)."""
    if isinstance(node, ast.Expression):
        return _compile_node(node.body, functions)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        value = float(node.value)
        return lambda env: value
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            constant = _CONSTANTS[node.id]
            return lambda env: constant
        key = node.id
        return lambda env: env[key]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        operand = _compile_node(node.operand, functions)
        return lambda env: -operand(env)  # type: ignore[operator]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        op, left, right = _BINARY[type(node.op)], _compile_node(node.left, functions), _compile_node(node.right, functions)
        return lambda env: op(left(env), right(env))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 1:
        func, arg = functions[node.func.id], _compile_node(node.args[0], functions)
        return lambda env: func(arg(env))  # type: ignore[arg-type]
    raise ValueError(f"unsupported syntax in NIST formula: {ast.dump(node)}")


def compile_formula(formula: str, param_names: tuple[str, ...]) -> Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    """Batched torch function ``(x, theta (K, p)) -> (K, n)`` of a NIST formula string."""
    body = _compile_node(ast.parse(formula, mode="eval"), _TORCH_FUNCTIONS)  # type: ignore[arg-type]

    def model(x: Mapping[str, torch.Tensor], theta: torch.Tensor) -> torch.Tensor:
        env: dict[str, object] = dict(x)
        for i, name in enumerate(param_names):
            env[name] = theta[:, i : i + 1]
        out = body(env)
        n = next(iter(x.values())).shape[-1]
        return torch.broadcast_to(torch.as_tensor(out, dtype=theta.dtype), (theta.shape[0], n))

    return model


def compile_formula_numpy(formula: str, param_names: tuple[str, ...]) -> Callable[..., np.ndarray]:
    """numpy function ``f(x, *params) -> (n,)`` of a NIST formula string, in curve_fit's convention."""
    body = _compile_node(ast.parse(formula, mode="eval"), _NUMPY_FUNCTIONS)  # type: ignore[arg-type]

    def model(x: Mapping[str, np.ndarray], *params: float) -> np.ndarray:
        env: dict[str, object] = dict(x)
        env.update(zip(param_names, params))
        return np.broadcast_to(np.asarray(body(env), dtype=np.float64), next(iter(x.values())).shape)

    return model


@cache
def _compiled(formula: str, param_names: tuple[str, ...]) -> Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]:
    return compile_formula(formula, param_names)

"""Fuzzing the formula compiler: ``formula.parse`` -> ``evaluate.compile_torch`` / ``symbolic.diff``.

(a) Random *valid* formulas are generated as text from the grammar (numbers in every Python
    spelling, names, ``pi``/``e``, unary and binary operators, every whitelisted function and alias,
    redundant parentheses, whitespace, line breaks). The compiled torch program is compared
    with a reference written here, independently of gradfit: a numpy evaluator over Python's own
    ``ast`` of the same text. It carries forward-mode derivatives (the reference for the symbolic
    derivatives, which are also compared with torch autograd) and a running bound on how far two
    correct float64 implementations may drift apart (libm functions differ by a few ulp and
    cancellation amplifies that), so the tolerances are derived, not guessed.
(b) Random and adversarial strings (attribute access, dunders, lambdas, comprehensions, imports,
    calls of other names, deep nesting, huge literals, ``9**9**9``, unicode look-alikes, NUL bytes,
    random bytes and text, token soup, mutated formulas). Each ends in a compiled model (the formula
    and its gradient compiled and evaluated, as ``FormulaModel`` does) or a ``FormulaError`` whose
    position lies in the text, within ``TIME_LIMIT_S`` and ``MEMORY_LIMIT_MB`` (tracemalloc peak),
    while ``eval``/``exec``/``compile``/``__import__`` are patched to record calls and an audit hook
    records what ran: parsing may only build an AST, never import, execute or open anything.

Every test that runs cases counts them in :data:`CASES`; the numbers in the test names are the
hypothesis ``max_examples`` (checked by ``test_case_counts_in_names_match_the_settings``).
``benchmarks/reliability_counts.py`` runs these tests and writes the counts that actually ran to
``docs/reliability.md``.
"""

from __future__ import annotations

import ast
import builtins
import collections
import contextlib
import re
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from scipy import special

from gradfit.errors import FormulaError
from gradfit.evaluate import compile_torch
from gradfit.formula import (
    ALIASES,
    FUNCTIONS,
    MAX_DEPTH,
    MAX_LENGTH,
    Bin,
    Formula,
    Num,
    Var,
    depth,
    parse,
)
from gradfit.symbolic import diff, gradient

#: Cases run per test in this process (read by benchmarks/reliability_counts.py).
CASES: collections.Counter[str] = collections.Counter()
#: Points at which values and derivatives were compared (and skipped, with the reason).
CHECKED: collections.Counter[str] = collections.Counter()

TIME_LIMIT_S = 5.0  # generous: CI machines are small and tracemalloc slows parsing
MEMORY_LIMIT_MB = 50.0
EPS = float(np.finfo(np.float64).eps)
#: Absolute floor of every tolerance: below the normal range floats keep absolute, not relative,
#: precision (a subnormal result is only good to ~5e-324).
TINY = 1e-300

VALID_CASES = 2000
TOKEN_SOUP_CASES = 2000
TEXT_CASES = 1000
BYTES_CASES = 500
MUTATION_CASES = 1000


# ================================================================================================
# Reference: numpy over Python's ast, with forward-mode derivatives and a drift bound
# ================================================================================================
def _sec2(u: np.ndarray) -> np.ndarray:
    return 1.0 / np.cos(u) ** 2


#: name -> (f, f') in numpy/scipy, written independently of gradfit.evaluate.
REF_FUNCTIONS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "exp": (np.exp, np.exp),
    "log": (np.log, lambda u: 1.0 / u),
    "log10": (np.log10, lambda u: 1.0 / (u * np.log(10.0))),
    "log2": (np.log2, lambda u: 1.0 / (u * np.log(2.0))),
    "log1p": (np.log1p, lambda u: 1.0 / (1.0 + u)),
    "expm1": (np.expm1, np.exp),
    "sqrt": (np.sqrt, lambda u: 0.5 / np.sqrt(u)),
    "square": (np.square, lambda u: 2.0 * u),
    "sin": (np.sin, np.cos),
    "cos": (np.cos, lambda u: -np.sin(u)),
    "tan": (np.tan, _sec2),
    "arcsin": (np.arcsin, lambda u: 1.0 / np.sqrt(1.0 - u * u)),
    "arccos": (np.arccos, lambda u: -1.0 / np.sqrt(1.0 - u * u)),
    "arctan": (np.arctan, lambda u: 1.0 / (1.0 + u * u)),
    "sinh": (np.sinh, np.cosh),
    "cosh": (np.cosh, np.sinh),
    "tanh": (np.tanh, lambda u: 1.0 / np.cosh(u) ** 2),
    "sigmoid": (special.expit, lambda u: special.expit(u) * special.expit(-u)),
    "abs": (np.abs, np.sign),
    "sign": (np.sign, np.zeros_like),
    "erf": (special.erf, lambda u: 2.0 / np.sqrt(np.pi) * np.exp(-u * u)),
}
#: Size of the terms of slope formulas that cancel: 1 - tanh(u)**2 and s*(1 - s) (gradfit and
#: torch autograd) and expm1(u) + 1 (autograd) lose all relative accuracy where the slope is tiny.
SLOPE_TERMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "tanh": lambda u: 1.0 + np.tanh(u) ** 2,
    "sigmoid": lambda u: special.expit(u) * (1.0 + special.expit(u)),
    "expm1": lambda u: 1.0 + np.abs(np.expm1(u)),
}
REF_ALIASES = {"ln": "log", "asin": "arcsin", "acos": "arccos", "atan": "arctan", "atan2": "arctan2"}
REF_CONSTANTS = {"pi": np.pi, "e": np.e}
#: A few ulp: how far torch's and numpy's implementations of one function may differ.
FUNCTION_ULPS = 4.0
#: Relative drift below which two implementations are evaluating "the same" inputs.
STEADY = 1e-9


@dataclass
class Ref:
    """Reference value of a sub-expression at every point.

    ``drift`` bounds |torch - numpy| for this value (propagated to first order, plus
    ``FUNCTION_ULPS`` per library function); ``tangent[n]`` is d value / d n; ``scale[n]`` is the
    same chain rule with absolute values (the size of the terms the derivative sums, so the scale
    of its rounding). Derived flags: ``smooth`` -- every value and slope so far is finite and the
    derivative is defined; ``steady`` -- every value so far is within ``STEADY`` relative drift in
    the two implementations, or is the same non-finite value in both (computed from steady inputs).
    """

    value: np.ndarray
    drift: np.ndarray
    tangent: dict[str, np.ndarray]
    scale: dict[str, np.ndarray]
    free: frozenset[str] = frozenset()
    smooth: np.ndarray = field(default_factory=lambda: np.array(True))
    steady: np.ndarray = field(default_factory=lambda: np.array(True))

    def finish(self, parts: tuple[Ref, ...], smooth: Any = True, steady: Any = True) -> Ref:
        smooth = smooth & np.isfinite(self.value)
        steady = steady & (~np.isfinite(self.value) | (self.drift <= STEADY * np.abs(self.value)))
        for part in parts:
            smooth = smooth & part.smooth
            steady = steady & part.steady
            self.free = self.free | part.free
        for n in self.tangent:
            smooth = smooth & np.isfinite(self.tangent[n]) & np.isfinite(self.scale[n])
        self.smooth, self.steady = smooth, steady
        return self


#: Smallest normal float64: a partial derivative below it is a subnormal, good to 2**-1074 absolute
#: and not relatively, so the terms it multiplies are as uncertain as if it were this large.
NORMAL_FLOOR = float(np.finfo(np.float64).tiny)


def _size(partial: np.ndarray) -> np.ndarray:
    """|partial| as the scale of the rounding of a chain-rule term (at least :data:`NORMAL_FLOOR`)."""
    return np.maximum(np.abs(partial), NORMAL_FLOOR)


def _times(size: np.ndarray, drift: np.ndarray) -> np.ndarray:
    """|size| * drift, with 0 wherever drift is exactly 0 (no 0 * inf)."""
    return np.where(drift == 0, 0.0, np.abs(size) * drift)


class Reference:
    """Evaluate formula text with numpy by walking Python's own ``ast`` (not gradfit's tree)."""

    def __init__(self, env: dict[str, np.ndarray]) -> None:
        self.env = env
        self.names = tuple(env)
        self.n = len(next(iter(env.values())))

    def __call__(self, text: str) -> Ref:
        with np.errstate(all="ignore"):
            return self.node(ast.parse(text.strip(), mode="eval").body)

    def zeros(self) -> dict[str, np.ndarray]:
        return {n: np.zeros(self.n) for n in self.names}

    def node(self, node: ast.AST) -> Ref:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return self.leaf(np.full(self.n, float(node.value)), None)
        if isinstance(node, ast.Name):
            if node.id in REF_CONSTANTS:
                return self.leaf(np.full(self.n, REF_CONSTANTS[node.id]), None)
            return self.leaf(np.array(self.env[node.id], dtype=np.float64), node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
            return self.node(node.operand)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            a = self.node(node.operand)
            tangent = {n: -t for n, t in a.tangent.items()}
            return Ref(-a.value, a.drift, tangent, dict(a.scale)).finish((a,))
        if isinstance(node, ast.BinOp):
            return self.binary(type(node.op), self.node(node.left), self.node(node.right))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
            name = REF_ALIASES.get(node.func.id, node.func.id)
            args = [self.node(arg) for arg in node.args]
            if name == "pow":
                return self.power(*args)
            if name == "arctan2":
                return self.arctan2(*args)
            if name in ("minimum", "maximum"):
                return self.extreme(name == "maximum", *args)
            return self.function(name, args[0])
        raise AssertionError(f"the generator made something outside the grammar: {ast.dump(node)}")

    def leaf(self, value: np.ndarray, name: str | None) -> Ref:
        tangent = self.zeros()
        if name is not None:
            tangent[name] = np.ones(self.n)
        scale = {n: np.abs(t) for n, t in tangent.items()}
        free = frozenset() if name is None else frozenset({name})
        return Ref(value, np.zeros(self.n), tangent, scale, free).finish(())

    def binary(self, op: type, a: Ref, b: Ref) -> Ref:
        if op is ast.Pow:
            return self.power(a, b)
        x, y = a.value, b.value
        t, s = {}, {}
        if op in (ast.Add, ast.Sub):
            sign = 1.0 if op is ast.Add else -1.0
            v = x + sign * y
            drift = a.drift + b.drift
            for n in self.names:
                t[n] = a.tangent[n] + sign * b.tangent[n]
                s[n] = a.scale[n] + b.scale[n]
        elif op is ast.Mult:
            v = x * y
            drift = _times(y, a.drift) + _times(x, b.drift) + a.drift * b.drift
            for n in self.names:
                t[n] = a.tangent[n] * y + x * b.tangent[n]
                s[n] = a.scale[n] * _size(y) + _size(x) * b.scale[n]
        elif op is ast.Div:
            v = x / y
            margin = np.abs(y) - b.drift
            spread = (a.drift + _times(v, b.drift)) / np.where(margin > 0, margin, 1.0)
            drift = np.where(margin > 0, spread, np.inf)
            for n in self.names:
                t[n] = a.tangent[n] / y - x * b.tangent[n] / (y * y)
                s[n] = a.scale[n] * _size(1.0 / y) + _size(x / (y * y)) * b.scale[n]
        else:
            raise AssertionError(f"unexpected operator {op.__name__}")
        drift = drift + EPS * np.abs(v)
        # the quotient rule l'/r - l*r'/r**2 (gradfit's, and this reference's) overflows in r**2
        # for |r| > 1e154 and returns 0 where the slope may still be representable; see
        # docs/reliability.md ("known limits")
        smooth = ~((op is ast.Div) & np.isinf(y * y) & np.isfinite(y))
        return Ref(v, drift, t, s).finish((a, b), smooth=smooth)

    def power(self, a: Ref, b: Ref) -> Ref:
        x, y = a.value, b.value
        v = np.power(x, y)
        d_base = y * np.power(x, y - 1.0)
        d_exponent = v * np.log(x)  # nan for x < 0, where the exponent cannot move at all
        drift = _times(d_base, a.drift) + FUNCTION_ULPS * EPS * np.abs(v)
        drift = np.where(b.drift > 0, drift + _times(d_exponent, b.drift), drift)
        jumps = (b.drift > 0) & (x < 0)  # x**y is nan off the integers
        drift = np.where(jumps, np.inf, drift)
        # IEEE's special cases of pow are not all followed: torch takes x**0.5 as sqrt(x), so
        # (-inf)**0.5 is nan there and +inf in C99 (and numpy)
        special_case = ~np.isfinite(x) | ~np.isfinite(y)
        t, s = {}, {}
        for n in self.names:
            t[n] = d_base * a.tangent[n]
            s[n] = _size(d_base) * a.scale[n]
            if n in b.free:
                t[n] = t[n] + d_exponent * b.tangent[n]
                s[n] = s[n] + _size(d_exponent) * b.scale[n]
        # a variable exponent has a derivative only where the base is positive
        smooth = (x > 0) if b.free else True
        return Ref(v, drift, t, s).finish((a, b), smooth=smooth, steady=~jumps & ~special_case)

    def function(self, name: str, a: Ref) -> Ref:
        f, df = REF_FUNCTIONS[name]
        u = a.value
        v = np.asarray(f(u), dtype=np.float64)
        slope = np.asarray(df(u), dtype=np.float64)
        terms = _size(slope) if name not in SLOPE_TERMS else SLOPE_TERMS[name](u)
        drift = _times(slope, a.drift) + FUNCTION_ULPS * EPS * np.abs(v)
        steady: Any = True
        if name == "sign":  # a step: any drift across 0 changes the value by 1
            steps = (a.drift > 0) & (np.abs(u) <= 2 * a.drift)
            drift, steady = np.where(steps, np.inf, drift), ~steps
        t = {n: slope * a.tangent[n] for n in self.names}
        s = {n: terms * a.scale[n] for n in self.names}
        return Ref(v, drift, t, s).finish((a,), steady=steady)

    def arctan2(self, a: Ref, b: Ref) -> Ref:
        y, x = a.value, b.value
        v = np.arctan2(y, x)
        r2 = x * x + y * y
        drift = (_times(x, a.drift) + _times(y, b.drift)) / r2 + FUNCTION_ULPS * EPS * np.abs(v)
        cut = (x <= 2 * b.drift) & (np.abs(y) <= 2 * a.drift) & (a.drift > 0)
        drift = np.where(cut, np.inf, drift)  # the branch cut: the value jumps by 2*pi
        t = {n: (x * a.tangent[n] - y * b.tangent[n]) / r2 for n in self.names}
        s = {n: _size(x / r2) * a.scale[n] + _size(y / r2) * b.scale[n] for n in self.names}
        # x**2 + y**2 overflows beyond 1e154 in every implementation (see the quotient rule)
        return Ref(v, drift, t, s).finish((a, b), smooth=np.isfinite(r2), steady=~cut)


    def extreme(self, largest: bool, a: Ref, b: Ref) -> Ref:
        """maximum (``largest``) or minimum: continuous, with a derivative that jumps where the two
        arguments meet, so not smooth within their drift of a tie."""
        x, y = a.value, b.value
        v = np.maximum(x, y) if largest else np.minimum(x, y)
        first = (x > y) if largest else (x < y)
        tie = np.abs(x - y) <= 2 * (a.drift + b.drift)
        t = {n: np.where(first, a.tangent[n], b.tangent[n]) for n in self.names}
        s = {n: np.where(first, a.scale[n], b.scale[n]) for n in self.names}
        return Ref(v, np.maximum(a.drift, b.drift), t, s).finish((a, b), smooth=~tie)


def test_reference_covers_the_whole_whitelist() -> None:
    assert set(REF_FUNCTIONS) | {"arctan2", "minimum", "maximum"} == set(FUNCTIONS)
    assert set(REF_ALIASES) | {"pow"} == set(ALIASES)


def test_reference_evaluator_itself() -> None:
    x = np.array([0.5, 2.0])
    ref = Reference({"x": x})("-x**2 + pow(2, x)*atan2(x, 1) - 3/x + 0x10 + 1_0")
    expected = -(x**2) + 2**x * np.arctan(x) - 3 / x + 26
    np.testing.assert_allclose(ref.value, expected, rtol=1e-15)
    slope = -2 * x + np.log(2) * 2**x * np.arctan(x) + 2**x / (1 + x**2) + 3 / x**2
    np.testing.assert_allclose(ref.tangent["x"], slope, rtol=1e-14)
    assert np.all(ref.drift < 1e-13) and np.all(ref.smooth)


# ================================================================================================
# (a) Random valid formulas
# ================================================================================================
VARIABLES = ("x", "y", "z", "w1", "_t", "k_2", "nan", "inf", "Pi", "exp_")
FUNCTION_SPELLINGS = sorted(set(REF_FUNCTIONS) | {"ln", "asin", "acos", "atan"})
TWO_ARGUMENT_SPELLINGS = ("arctan2", "atan2", "pow", "minimum", "maximum")
BLANK = st.sampled_from(["", "", " ", "  ", "\t"])

numbers = st.one_of(
    st.integers(0, 10**6).map(str),
    st.floats(0.0, 1e6).map(repr),  # '0.5', '1e-05', '5e-324', '1000000.0'
    st.sampled_from(
        ["0", "1", "2", "3", "0.5", ".5", "5.", "1_000", "0x1F", "0o17", "0b101", "1e-3", "2.5E+2",
         "1e308", "5e-324", "123456789012345678901234567890", "00", "0.0"]
    ),
)
names = st.sampled_from(VARIABLES)
not_names = st.one_of(st.sampled_from(["pi", "e"]), numbers)
atoms = st.integers(0, 4).flatmap(lambda k: names if k < 3 else not_names)  # 3 in 5 are names


def _wrap(text: str, parenthesize: bool) -> str:
    return f"({text})" if parenthesize else text


def _grow(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.builds(
        lambda a, b, op, pa, pb, s1, s2: f"{_wrap(a, pa)}{s1}{op}{s2}{_wrap(b, pb)}",
        children, children, st.sampled_from(["+", "-", "*", "/", "**"]),
        st.booleans(), st.booleans(), BLANK, BLANK,
    )
    unary = st.builds(
        lambda sign, a, pa, s: f"{sign}{s}{_wrap(a, pa)}",
        st.sampled_from(["-", "+"]), children, st.booleans(), BLANK,
    )
    call = st.builds(
        lambda f, a, s, comma: f"{f}({s}{a}{',' if comma else ''})",
        st.sampled_from(FUNCTION_SPELLINGS), children, BLANK, st.integers(0, 5).map(lambda k: k == 0),
    )
    call2 = st.builds(
        lambda f, a, b, s: f"{f}({a},{s}{b})",
        st.sampled_from(TWO_ARGUMENT_SPELLINGS), children, children, BLANK,
    )
    multiline = children.map(lambda a: f"(\n  {a}\n)")
    return st.one_of(binary, unary, call, call2, multiline)


expressions = st.recursive(atoms, _grow, max_leaves=10)
formulas = st.builds(lambda lead, body, trail: f"{lead}{body}{trail}", BLANK, expressions, BLANK)


def _names_in_order(text: str) -> tuple[str, ...]:
    """Variable names in order of first appearance in the text (from Python's ast)."""
    tree = ast.parse(text.strip(), mode="eval")
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    found = [
        (node.lineno, node.col_offset, node.id)
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and id(node) not in called and node.id not in REF_CONSTANTS
    ]
    return tuple(dict.fromkeys(name for *_, name in sorted(found)))


def _ast_depth(text: str) -> int:
    best, stack = 0, [(ast.parse(text.strip(), mode="eval").body, 1)]
    while stack:
        node, level = stack.pop()
        best = max(best, level)
        stack.extend((child, level + 1) for child in ast.iter_child_nodes(node))
    return best


def _points(seed: int, names: tuple[str, ...], n: int = 7) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    special_points = np.array([0.0, 1.0, -0.5])
    return {name: np.concatenate([rng.uniform(-3.0, 3.0, n - 3), rng.permutation(special_points)])
            for name in names}


def _assert_values_agree(got: np.ndarray, ref: Ref, what: str) -> None:
    want = ref.value
    checked = np.isfinite(ref.drift) & np.isfinite(want)
    limit = 4.0 * ref.drift + 4.0 * EPS * np.abs(want) + TINY
    bad = checked & ~(np.abs(got - want) <= limit)
    assert not bad.any(), (what, got[bad], want[bad], limit[bad])
    same = (got == want) | (np.isnan(got) & np.isnan(want))  # nan and +-inf where numpy has them
    decided = ref.steady & ~np.isfinite(want)
    assert same[decided].all(), (what, got, want)
    CHECKED["values"] += int(checked.sum() + decided.sum())
    CHECKED["values skipped (drift unbounded)"] += int((~checked & ~decided).sum())


def fuzz(cases: int) -> settings:
    """Hypothesis settings for ``cases`` examples (the count in the test's name)."""
    return settings(
        max_examples=cases,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@fuzz(VALID_CASES)
@given(formulas, st.integers(0, 2**32 - 1))
@example("pow(-x*8.343151239655746e-201,8.343151239655746e-201)", 0)  # a folded underflow
@example("pow(-y*8.343151239655746e-201,x+8.343151239655746e-201)", 0)  # a regrouped one
@example("arctan2(5.225442706323749e-218,x**110)", 0)  # a subnormal partial, c/(x**110)**2
def test_random_valid_formulas_2000_cases(text: str, seed: int) -> None:
    """Compiled values equal the numpy reference; symbolic derivatives equal autograd."""
    assume(_ast_depth(text) <= MAX_DEPTH)
    formula = parse(text)
    assert formula.names == _names_in_order(text)
    env = _points(seed, formula.names) if formula.names else {"_": np.zeros(7)}
    ref = Reference(env)(text)
    tensors = {n: torch.tensor(v, dtype=torch.float64) for n, v in env.items()}

    (value,) = compile_torch([formula.tree])(tensors)
    with np.errstate(all="ignore"):  # comparisons involving inf and nan
        _assert_values_agree(np.broadcast_to(value.numpy(), (7,)), ref, text)
        if formula.names:
            _assert_derivatives_agree(formula, tensors, ref, text)
    CASES["random valid formulas"] += 1


def _assert_derivatives_agree(
    formula: Formula, tensors: dict[str, torch.Tensor], ref: Ref, what: str
) -> None:
    names = formula.names
    _, *symbolic = compile_torch([formula.tree, *gradient(formula.tree, names)])(tensors)
    leaves = {n: t.clone().requires_grad_(True) for n, t in tensors.items()}
    (out,) = compile_torch([formula.tree])(leaves)
    grads = torch.autograd.grad(out.sum(), [leaves[n] for n in names], allow_unused=True)
    for name, sym, auto in zip(names, symbolic, grads):
        sym = np.broadcast_to(sym.detach().numpy(), (7,))
        auto = np.zeros(7) if auto is None else auto.numpy()
        scale = ref.scale[name] + np.abs(ref.tangent[name])
        # autograd's own intermediate products may overflow (grad * other / (x**2 + y**2))
        versus_autograd = ref.smooth & np.isfinite(auto)
        versus_reference = ref.smooth & ref.steady
        near_autograd = np.abs(sym - auto) <= 1e-9 * scale + TINY
        near_reference = np.abs(sym - ref.tangent[name]) <= 1e-6 * scale + TINY
        assert near_autograd[versus_autograd].all(), (what, name, sym, auto)
        assert near_reference[versus_reference].all(), (what, name, sym, ref.tangent[name])
        CHECKED["derivatives vs autograd"] += int(versus_autograd.sum())
        CHECKED["derivatives vs reference"] += int(versus_reference.sum())
        CHECKED["derivatives skipped (not smooth)"] += int((~ref.smooth).sum())
        CHECKED["derivatives skipped (autograd not finite)"] += int((ref.smooth & ~np.isfinite(auto)).sum())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x - -1", lambda x: x + 1),
        ("-x**2", lambda x: -(x**2)),
        ("(-x)**2", lambda x: x**2),
        ("2**-x", lambda x: 2.0**-x),
        ("x**3**0.5", lambda x: x ** (3**0.5)),
        ("1/2/x", lambda x: 0.5 / x),
        ("pow(x, 2)*ln(e)", lambda x: x**2),
        ("atan2(x, -1)", lambda x: np.arctan2(x, -1.0)),
    ],
)
def test_precedence_and_spellings(text: str, expected: Callable[[np.ndarray], np.ndarray]) -> None:
    x = np.array([1.5, 0.25, 2.0])
    (value,) = compile_torch([parse(text).tree])({"x": torch.tensor(x, dtype=torch.float64)})
    np.testing.assert_allclose(value.numpy(), expected(x), rtol=1e-15)


# ================================================================================================
# (b) Untrusted text: a compiled model or a FormulaError, bounded, and nothing else runs
# ================================================================================================
_AUDIT: list[tuple[str, str]] | None = None
_WATCHED_EVENTS = ("exec", "compile", "import", "open", "os.", "subprocess.", "socket.", "ctypes.",
                   "shutil.", "urllib.", "builtins.input", "sys.settrace", "sys.setprofile")


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    if _AUDIT is not None and event.startswith(_WATCHED_EVENTS):
        _AUDIT.append((event, repr(args)[:80]))


sys.addaudithook(_audit_hook)  # records only while a guard below is active


@dataclass
class Record:
    """What guarded code asked for."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    events: list[tuple[str, str]] = field(default_factory=list)


@contextlib.contextmanager
def guarded(allow_imports: bool) -> Iterator[Record]:
    """Patch eval/exec/compile/__import__ to record (and refuse) anything but building an AST.

    ``compile`` is let through only with ``ast.PyCF_ONLY_AST`` (that is how ``ast.parse`` reads
    text); ``__import__`` only when ``allow_imports`` and the module is already loaded (the
    in-function ``import torch`` of the compiler).
    """
    global _AUDIT
    record = Record()
    real = {name: getattr(builtins, name) for name in ("eval", "exec", "compile", "__import__")}

    def refuse(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            record.calls.append((name, repr(args)[:80]))
            raise AssertionError(f"{name} was called")

        return call

    def compile_ast_only(source: Any, filename: Any, mode: str, flags: int = 0, *rest: Any,
                         **kwargs: Any) -> Any:
        if not flags & ast.PyCF_ONLY_AST:
            record.calls.append(("compile", repr(source)[:80]))
            raise AssertionError("compile() to code was called")
        return real["compile"](source, filename, mode, flags, *rest, **kwargs)

    def import_loaded(name: str, *args: Any, **kwargs: Any) -> Any:
        if not (allow_imports and name in sys.modules):
            record.calls.append(("__import__", name))
            raise AssertionError(f"import of {name} was attempted")
        return real["__import__"](name, *args, **kwargs)

    patches = {"eval": refuse("eval"), "exec": refuse("exec"), "compile": compile_ast_only,
               "__import__": import_loaded}
    for name, patch in patches.items():
        setattr(builtins, name, patch)
    _AUDIT = record.events
    try:
        yield record
    finally:
        _AUDIT = None
        for name, original in real.items():
            setattr(builtins, name, original)


@dataclass
class Outcome:
    formula: Formula | None
    error: FormulaError | None
    seconds: float
    peak_mb: float


def run_untrusted(text: Any) -> Outcome:
    """Parse ``text`` and, if it is a formula, build the model's program; check every guarantee."""
    tracemalloc.start()
    start = time.perf_counter()
    formula, error = None, None
    try:
        with guarded(allow_imports=False) as parsing:
            try:
                formula = parse(text)
            except FormulaError as caught:
                error = caught
        assert not parsing.calls, parsing.calls
        assert {event for event, _ in parsing.events} <= {"compile"}, parsing.events
        if formula is not None:
            with guarded(allow_imports=True) as building:
                _build_and_run(formula)
            assert not building.calls, building.calls
            assert not building.events, building.events
        seconds = time.perf_counter() - start
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert seconds < TIME_LIMIT_S, (repr(text)[:80], seconds)
    assert peak_mb < MEMORY_LIMIT_MB, (repr(text)[:80], peak_mb)
    if error is not None:
        _check_error(text, error)
    return Outcome(formula, error, seconds, peak_mb)


def _build_and_run(formula: Formula) -> None:
    """What FormulaModel does: the formula and its symbolic gradient in one program, evaluated."""
    names = formula.names
    program = compile_torch([formula.tree, *gradient(formula.tree, names)])
    values = torch.linspace(-2.0, 2.0, 5, dtype=torch.float64)
    outputs = program({n: values + 0.1 * i for i, n in enumerate(names)} or {"_": values})
    assert len(outputs) == 1 + len(names)
    assert all(o.shape == (5,) and o.dtype == torch.float64 for o in outputs)


def _check_error(text: Any, error: FormulaError) -> None:
    message = str(error)
    assert message and "\n" not in message and "; " in error.reason, message
    if not isinstance(text, str):
        assert error.position is None  # documented: not a string, nothing to point at
        return
    assert error.formula == text
    assert isinstance(error.position, int) and 0 <= error.position <= len(text), error.position
    if error.position == len(text):
        return  # the problem is at the end (e.g. an unfinished expression)
    char = text[error.position]
    if "non-ASCII" in error.reason:
        assert not char.isascii() and repr(char) in error.reason
    elif "control character" in error.reason:
        assert char < " " and repr(char) in error.reason
    elif "NUL" in error.reason:
        assert char == "\0"
    elif not any(word in error.reason for word in ("syntax", "empty", "long")):
        assert not char.isspace(), (text, error)  # it points at the offending token


def _nested(opening: str, inner: str, closing: str, times: int) -> str:
    return opening * times + inner + closing * times


def _product(names: list[str]) -> str:
    while len(names) > 1:
        names = [f"({a}*{b})" for a, b in zip(names[::2], names[1::2])] + names[len(names) & ~1:]
    return names[0]


#: (what it tries, text, whether it must be refused)
ADVERSARIAL: list[tuple[str, Any, bool]] = [
    # attribute access, dunders, escapes from a sandbox
    ("attribute", "x.real", True),
    ("dunder attribute", "x.__class__", True),
    ("subclasses", "().__class__.__bases__[0].__subclasses__()", True),
    ("function globals", "exp.__globals__['__builtins__']", True),
    ("dunder name is just a name", "__builtins__ + __class__", False),
    ("dunder call", "__import__('os').system('echo pwned')", True),
    ("builtins call", "eval('1')", True),
    ("exec call", "exec('import os')", True),
    ("compile call", "compile('1', '', 'eval')", True),
    ("open call", "open('/etc/passwd')", True),
    ("getattr call", "getattr(x, 'real')", True),
    ("globals call", "globals()", True),
    ("breakpoint", "breakpoint()", True),
    ("method call", "x.conjugate()", True),
    ("call of a call", "exp(x)(y)", True),
    ("call of a subscript", "[exp][0](x)", True),
    ("keyword argument", "exp(x=1)", True),
    ("star argument", "exp(*x)", True),
    ("double star argument", "exp(**x)", True),
    ("lambda", "lambda: 1", True),
    ("lambda called", "(lambda x: x)(1)", True),
    ("y combinator", "(lambda f: f(f))(lambda f: f(f))", True),
    ("list comprehension", "[i for i in x]", True),
    ("set comprehension", "{i for i in x}", True),
    ("dict comprehension", "{i: i for i in x}", True),
    ("generator", "sum(i for i in x)", True),
    ("walrus", "(y := 1)", True),
    ("conditional", "x if y else 0", True),
    ("comparison", "x < y", True),
    ("boolean", "x or y", True),
    ("not", "not x", True),
    ("invert", "~x", True),
    ("f-string", "f'{x}'", True),
    ("f-string escape", "f'{__import__(\"os\").system(\"id\")}'", True),
    ("string", "'x' * 10**9", True),
    ("bytes", "b'\\x00'", True),
    ("complex", "1j", True),
    ("ellipsis", "...", True),
    ("await", "await x", True),
    ("yield", "(yield x)", True),
    ("tuple", "x, y", True),
    ("empty tuple", "()", True),
    ("slice", "x[1:2]", True),
    ("matmul", "x @ y", True),
    ("xor as power", "x ^ 2", True),
    ("modulo", "x % 2", True),
    ("floor division", "x // 2", True),
    ("shift", "x << 2", True),
    # statements and imports
    ("import", "import os", True),
    ("from import", "from os import system", True),
    ("assignment", "x = 1", True),
    ("two statements", "x; import os", True),
    ("del", "del x", True),
    ("class", "class A: pass", True),
    ("semicolon", "x;", True),
    # nesting
    ("199 parentheses", _nested("(", "x", ")", 199), False),
    ("250 parentheses", _nested("(", "x", ")", 250), True),
    ("5000 parentheses", _nested("(", "x", ")", 5000), True),
    ("99 nested calls", _nested("sin(", "x", ")", MAX_DEPTH - 1), False),
    ("100 nested calls", _nested("sin(", "x", ")", MAX_DEPTH), True),
    ("3000 nested calls", _nested("exp(", "x", ")", 3000), True),
    ("9999 minus signs", "-" * 9999 + "x", True),
    ("9999 plus signs", "+" * 9999 + "x", True),
    ("long flat sum", "x" + "+x" * 4999, True),
    ("power chain", "x" + "**x" * 3000, True),
    ("99 nested divisions", _nested("x/(", "x", ")", 98), False),
    ("99 nested powers", _nested("x**(", "x", ")", 98), False),
    ("product of 128 parameters", _product([f"p{i}" for i in range(128)]), False),
    ("lists nested", _nested("[", "", "]", 3000), True),
    # literals
    ("power tower", "9**9**9", False),
    ("taller tower", "9**9**9**9**9**9", False),
    ("tower on a name", "x**9**9**9", False),
    ("huge float", "1e999", True),
    ("huge exponent", "1e" + "9" * 5000, True),
    ("tiny exponent", "1e-" + "9" * 5000, True),
    ("4299 digits", "1" * 4299, True),
    ("4301 digits", "1" * 4301, True),
    ("long hex", "0x" + "f" * 5000, True),
    ("long binary", "0b" + "1" * 5000, True),
    ("long mantissa", "1." + "1" * 5000, False),
    ("subnormal", "5e-324 * x", False),
    ("largest float", "1.7976931348623157e308 * x", False),
    ("overflowing product", "1e308 * 10 * x", False),
    ("leading zeros", "007", True),
    ("double underscore digits", "1__0", True),
    ("too long", "x" * (MAX_LENGTH + 1), True),
    ("longest allowed", "x+" * (MAX_LENGTH // 2 - 1) + "x", True),
    # unicode and control characters
    ("cyrillic a", "\u0430*x", True),
    ("greek omicron", "\u03bf + 1", True),
    ("fullwidth x", "\uff58 + 1", True),
    ("mathematical x", "\U0001d431 + 1", True),
    ("roman numeral ten", "\u2169 + 1", True),
    ("minus sign", "x \u2212 1", True),
    ("superscript two", "x\u00b2", True),
    ("pi letter", "\u03c0*x", True),
    ("no-break space", "x\u00a0+ 1", True),
    ("zero-width space", "x\u200b+1", True),
    ("right-to-left override", "x\u202e+1", True),
    ("line separator", "x\u2028+1", True),
    ("lone surrogate", "x\ud800", True),
    ("byte order mark", "\ufeffx", True),
    ("NUL byte", "x\0 + 1", True),
    ("NUL first", "\0", True),
    ("escape character", "x\x1b[31m", True),
    ("form feed", "x\f+1", True),
    ("delete character", "x\x7f", True),
    ("backslash continuation", "x + \\\n 1", False),
    ("carriage returns", "(x\r\n+\r1)", False),
    ("comment only", "# x", True),
    ("empty", "", True),
    ("blank", " \t\n ", True),
    # not even text
    ("bytes object", b"x + 1", True),
    ("None", None, True),
    ("integer", 3, True),
]


@pytest.mark.parametrize(("what", "text", "refused"), ADVERSARIAL, ids=[a[0] for a in ADVERSARIAL])
def test_adversarial_strings(what: str, text: Any, refused: bool) -> None:
    outcome = run_untrusted(text)
    assert (outcome.error is not None) == refused, (what, outcome.error)
    CASES["adversarial strings"] += 1


# --- hypothesis-generated untrusted text --------------------------------------------------------
_TOKENS = [
    # names: whitelisted, aliases, builtins, dunders, keywords
    *FUNCTIONS, *ALIASES, "pi", "e", "x", "y", "nan", "inf", "open", "eval", "exec", "getattr",
    "globals", "os", "sys", "__import__", "__class__", "__builtins__", "__globals__", "lambda",
    "for", "in", "if", "else", "import", "from", "not", "and", "or", "is", "None", "True", "await",
    "yield", "def", "class", "return", "del",
    # literals
    "0", "1", "2.5", "1e308", "1e999", "9**9**9", "0x1F", "1j", "'s'", "b'b'", "f'{x}'", "...",
    "1" * 30, "5e-324", "007", "1_0",
    # operators and punctuation
    "+", "-", "*", "/", "**", "//", "%", "@", "^", "~", "&", "|", "<<", "==", "<", ":=", "=", ".",
    ",", ":", ";", "(", ")", "[", "]", "{", "}", "\\\n", "#", "!", "$", "?", "`",
    # whitespace and odd characters
    " ", "  ", "\t", "\n", "\r", "\0", "\u2212", "\u0430", "\u00b2", "\u200b",
]
token_soup = st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=14).map(
    lambda tokens: "".join(tokens)
)
token_soup_spaced = st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=14).map(" ".join)


@st.composite
def mutated_formulas(draw: st.DrawFn) -> str:
    text = draw(expressions)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.sampled_from(_TOKENS))
        if kind == "insert":
            text = text[:where] + piece + text[where:]
        elif kind == "delete":
            text = text[:where] + text[where + 1 :]
        else:
            text = text[:where] + piece + text[where + len(piece) :]
    return text


@fuzz(TOKEN_SOUP_CASES)
@given(st.one_of(token_soup, token_soup_spaced))
def test_token_soup_2000_cases(text: str) -> None:
    run_untrusted(text)
    CASES["token soup"] += 1


@fuzz(TEXT_CASES)
@given(st.one_of(st.text(max_size=40), st.text(st.characters(max_codepoint=127), max_size=40)))
def test_random_text_1000_cases(text: str) -> None:
    run_untrusted(text)
    CASES["random text"] += 1


@fuzz(BYTES_CASES)
@given(st.binary(max_size=60))
def test_random_bytes_500_cases(raw: bytes) -> None:
    run_untrusted(raw.decode("latin-1"))
    run_untrusted(raw.decode("utf-8", errors="surrogateescape"))
    CASES["random bytes (as text, twice)"] += 1


@fuzz(MUTATION_CASES)
@given(mutated_formulas())
def test_mutated_formulas_1000_cases(text: str) -> None:
    run_untrusted(text)
    CASES["mutated formulas"] += 1


# ================================================================================================
# Bugs found by this fuzzing (regression tests)
# ================================================================================================
def test_long_formula_error_keeps_the_text_its_position_points_into() -> None:
    text = "x" * (MAX_LENGTH + 5)
    with pytest.raises(FormulaError) as info:
        parse(text)
    assert info.value.formula == text
    assert 0 <= info.value.position < len(info.value.formula)


def test_gradient_of_a_wide_product_stays_shallow_and_compiles() -> None:
    # a*(b*c) used to be re-associated even when 'a' was itself a product, which turned the
    # derivative of a balanced product of n names into a chain of depth n (RecursionError in
    # compile_torch for n ~ 300, quadratic size before that)
    names = [f"p{i}" for i in range(256)]
    formula = parse(_product(names))
    derivatives = gradient(formula.tree, names)
    assert max(depth(d) for d in derivatives) <= depth(formula.tree)
    values = {n: torch.full((2,), 1.0 + 1e-3 * i, dtype=torch.float64) for i, n in enumerate(names)}
    _, *columns = compile_torch([formula.tree, *derivatives])(values)
    product = np.prod([1.0 + 1e-3 * i for i in range(256)])
    for i in (0, 255):
        np.testing.assert_allclose(columns[i].numpy(), product / (1.0 + 1e-3 * i), rtol=1e-12)


def test_compile_torch_handles_trees_deeper_than_the_recursion_limit() -> None:
    # simplified derivatives can be ~3x deeper than their formula (x/(x/(x/...)) at MAX_DEPTH)
    text = _nested("x/(", "x", ")", MAX_DEPTH - 1)
    derivative = diff(parse(text).tree, "x")
    assert depth(derivative) > 2 * MAX_DEPTH
    tree = derivative
    for _ in range(sys.getrecursionlimit()):  # and deeper still
        tree = Bin("+", tree, Var("x"))
    x = torch.tensor([0.7], dtype=torch.float64)
    (value,) = compile_torch([tree])({"x": x})
    assert torch.isfinite(value).all()


def test_sign_keeps_nan_in_values_and_jacobians() -> None:
    # torch.sign(nan) is 0: a nan used to vanish from sign(u) and from d abs(u) = sign(u) du
    formula = parse("sign(x/x) + abs(w*x/x)")
    x = torch.tensor([0.0, 2.0], dtype=torch.float64)
    w = torch.tensor([3.0], dtype=torch.float64)
    value, slope = compile_torch([formula.tree, diff(formula.tree, "w")])({"x": x, "w": w})
    assert torch.isnan(value[0]) and torch.isnan(slope[0])
    assert value[1].item() == 4.0 and slope[1].item() == 1.0


def test_number_divided_by_tensor_is_one_correctly_rounded_division() -> None:
    # number / tensor used Tensor.__rtruediv__ = reciprocal() * number: off by one ulp for ~30%
    # of inputs, and inf where the reciprocal overflows (1e-5/1e-310 is 1e305)
    x = np.random.default_rng(0).uniform(0.1, 10.0, 1000)
    x[0] = 1e-310
    (value,) = compile_torch([parse("1e-5/x").tree])({"x": torch.tensor(x, dtype=torch.float64)})
    np.testing.assert_array_equal(value.numpy(), 1e-5 / x)


def test_signed_zero_constants_are_not_shared() -> None:
    # -0.0 == 0.0, so structural equality merged them and atan2(0, x) read -0.0 for x < 0
    formula = parse("arctan2(0, x) - arctan2(-0, x)")
    (value,) = compile_torch([formula.tree])({"x": torch.tensor([-1.0], dtype=torch.float64)})
    assert value.item() == pytest.approx(2 * np.pi)
    assert parse("-0").tree != parse("0").tree and hash(parse("-0").tree) != hash(parse("0").tree)
    assert diff(parse("-y").tree, "x") == Num(0.0)  # symbolic zeros stay unsigned


def test_case_counts_in_names_match_the_settings() -> None:
    module = sys.modules[__name__]
    named = {name: obj for name, obj in vars(module).items() if re.search(r"_\d+_cases$", name)}
    assert len(named) == 5
    for name, test in named.items():
        count = int(re.search(r"_(\d+)_cases$", name).group(1))
        assert test._hypothesis_internal_use_settings.max_examples == count, name

"""Tests for gradfit.symbolic: derivatives, simplification, printing, linearity.

Derivatives are checked against independent references: closed forms written here with numpy,
torch autograd, and 5-point finite differences, on random expression trees from hypothesis.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gradfit.errors import ModelError
from gradfit.evaluate import compile_torch, evaluate_numpy
from gradfit.formula import (
    ARITIES,
    BINARY_OPS,
    FUNCTIONS,
    MAX_DEPTH,
    Bin,
    Call,
    Expr,
    Neg,
    Num,
    Var,
    parse,
    walk,
)
from gradfit.symbolic import (
    DERIVATIVES,
    FOLDERS,
    ONE,
    ZERO,
    add,
    diff,
    div,
    gradient,
    is_linear_in,
    linear_design,
    mul,
    power,
    simplify,
    substitute,
    to_text,
)

VARS = ("x", "y", "z")
RANDOM = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tree(text: str) -> Expr:
    return parse(text).tree


# ------------------------------------------------------------------------------------------------
# Random trees over domains where every function is defined and smooth
# ------------------------------------------------------------------------------------------------
def _bounded(a: Expr) -> Expr:
    return Call("tanh", (a,))


def _positive(a: Expr) -> Expr:
    return Bin("+", Num(1.0), Call("square", (a,)))


_SMOOTH = ["sin", "cos", "tanh", "sigmoid", "arctan", "erf", "abs", "square"]
_GROWING = ["exp", "expm1", "sinh", "cosh"]
_POSITIVE_DOMAIN = ["log", "log10", "log2", "sqrt"]
_UNIT_DOMAIN = ["arcsin", "arccos", "tan"]

_leaves = st.one_of(
    st.sampled_from([Var(name) for name in VARS]),
    st.floats(-2.0, 2.0, allow_nan=False).map(Num),
)


def _extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    pairs = st.tuples(children, children)
    return st.one_of(
        st.builds(lambda op, ab: Bin(op, *ab), st.sampled_from(["+", "-", "*"]), pairs),
        pairs.map(lambda ab: Bin("/", ab[0], Bin("+", Num(1.5), Call("square", (ab[1],))))),
        st.builds(lambda a, k: Bin("**", a, Num(k)), children, st.sampled_from([2.0, 3.0])),
        pairs.map(lambda ab: Bin("**", _positive(ab[0]), _bounded(ab[1]))),
        children.map(Neg),
        st.builds(lambda f, a: Call(f, (a,)), st.sampled_from(_SMOOTH), children),
        st.builds(lambda f, a: Call(f, (_bounded(a),)), st.sampled_from(_GROWING), children),
        st.builds(
            lambda f, a: Call(f, (_positive(a),)), st.sampled_from(_POSITIVE_DOMAIN), children
        ),
        children.map(lambda a: Call("log1p", (Call("square", (a,)),))),
        st.builds(
            lambda f, a: Call(f, (Bin("*", Num(0.9), _bounded(a)),)),
            st.sampled_from(_UNIT_DOMAIN),
            children,
        ),
        pairs.map(lambda ab: Call("arctan2", (ab[0], _positive(ab[1])))),
    )


smooth_trees = st.recursive(_leaves, _extend, max_leaves=8)


def _points(seed: int, n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(-2.0, 2.0, n) for name in VARS}


def _values(expr: Expr, env: dict[str, np.ndarray]) -> np.ndarray:
    return np.broadcast_to(evaluate_numpy(expr, env), (6,))


def _autograd(expr: Expr, env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in env.items()}
    (value,) = compile_torch([expr])(leaves)
    if not value.requires_grad:
        return {name: np.zeros(6) for name in VARS}
    grads = torch.autograd.grad(value.sum(), list(leaves.values()), allow_unused=True)
    return {k: np.zeros(6) if g is None else g.numpy() for k, g in zip(leaves, grads)}


def _five_point(expr: Expr, env: dict[str, np.ndarray], name: str, h: np.ndarray) -> np.ndarray:
    def at(shift: float) -> np.ndarray:
        return _values(expr, {**env, name: env[name] + shift * h})

    return (-at(2) + 8 * at(1) - 8 * at(-1) + at(-2)) / (12 * h)


def _smooth_across_stencil(
    expr: Expr, env: dict[str, np.ndarray], name: str, h: np.ndarray
) -> np.ndarray:
    """Points where no abs() argument changes sign within the finite-difference stencil."""
    ok = np.ones(6, dtype=bool)
    kinks = [node.args[0] for node in walk(expr) if isinstance(node, Call) and node.func == "abs"]
    for arg in kinks:
        signs = [np.sign(_values(arg, {**env, name: env[name] + k * h})) for k in (-2, 0, 2)]
        ok &= (signs[0] == signs[1]) & (signs[1] == signs[2]) & (signs[1] != 0)
    return ok


@RANDOM
@given(smooth_trees, st.integers(0, 2**32 - 1))
def test_symbolic_derivative_matches_autograd_and_finite_differences(
    expr: Expr, seed: int
) -> None:
    env = _points(seed)
    f = _values(expr, env)
    assume(np.all(np.isfinite(f)) and np.max(np.abs(f)) < 1e6)
    auto = _autograd(expr, env)
    scale = 1.0 + np.max(np.abs(f))
    for name in VARS:
        hand = _values(diff(expr, name), env)
        assert np.all(np.isfinite(hand))
        np.testing.assert_allclose(hand, auto[name], rtol=1e-8, atol=1e-9 * scale)
        h = 1e-3 * (1.0 + np.abs(env[name]))
        fd = _five_point(expr, env, name, h)
        tolerance = 1e-5 * (1.0 + np.abs(hand)) + 1e-12 * scale / h
        smooth = _smooth_across_stencil(expr, env, name, h)
        assert np.all((np.abs(hand - fd) <= tolerance)[smooth]), (to_text(expr), name, hand, fd)


# ------------------------------------------------------------------------------------------------
# Each derivative rule against a closed form written independently here
# ------------------------------------------------------------------------------------------------
CLOSED_FORMS = {
    "exp": np.exp,
    "log": lambda u: 1 / u,
    "log10": lambda u: 1 / (u * np.log(10)),
    "log2": lambda u: 1 / (u * np.log(2)),
    "log1p": lambda u: 1 / (1 + u),
    "expm1": np.exp,
    "sqrt": lambda u: 0.5 * u**-0.5,
    "square": lambda u: 2 * u,
    "sin": np.cos,
    "cos": lambda u: -np.sin(u),
    "tan": lambda u: 1 / np.cos(u) ** 2,
    "arcsin": lambda u: 1 / np.sqrt(1 - u * u),
    "arccos": lambda u: -1 / np.sqrt(1 - u * u),
    "arctan": lambda u: 1 / (1 + u * u),
    "sinh": np.cosh,
    "cosh": np.sinh,
    "tanh": lambda u: 1 / np.cosh(u) ** 2,
    "sigmoid": lambda u: np.exp(-u) / (1 + np.exp(-u)) ** 2,
    "abs": np.sign,
    "sign": np.zeros_like,
    "erf": lambda u: 2 / np.sqrt(np.pi) * np.exp(-u * u),
}


def test_every_function_has_a_derivative_and_a_folder() -> None:
    assert set(DERIVATIVES) == set(ARITIES) == set(FOLDERS)
    assert set(ARITIES) - set(FUNCTIONS) == {"xlogy", "xmul"}  # derivative trees only
    assert set(CLOSED_FORMS) == {name for name, arity in FUNCTIONS.items() if arity == 1}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_derivative_rule_matches_closed_form(name: str) -> None:
    u = np.array([-0.7, -0.2, 0.15, 0.4, 0.85])
    if name in {"log", "log10", "log2", "sqrt"}:
        u = np.abs(u)
    derivative = diff(Call(name, (Var("u"),)), "u")
    np.testing.assert_allclose(
        _values_n(derivative, {"u": u}), CLOSED_FORMS[name](u), rtol=1e-13, atol=1e-15
    )
    # chain rule: d f(3u + 1)/du = 3 f'(3u + 1)
    inner = Bin("+", Bin("*", Num(3.0), Var("u")), Num(1.0))
    v = (u - 1) / 3
    chained = diff(Call(name, (inner,)), "u")
    np.testing.assert_allclose(
        _values_n(chained, {"u": v}), 3 * CLOSED_FORMS[name](u), rtol=1e-12, atol=1e-14
    )


def _values_n(expr: Expr, env: dict[str, np.ndarray]) -> np.ndarray:
    n = len(next(iter(env.values())))
    return np.broadcast_to(evaluate_numpy(expr, env), (n,))


def test_arctan2_partials_match_closed_form() -> None:
    y, x = np.array([0.3, -1.2, 2.0]), np.array([1.5, -0.4, -2.2])
    expr = tree("arctan2(y, x)")
    r2 = x * x + y * y
    np.testing.assert_allclose(_values_n(diff(expr, "y"), {"x": x, "y": y}), x / r2, rtol=1e-14)
    np.testing.assert_allclose(_values_n(diff(expr, "x"), {"x": x, "y": y}), -y / r2, rtol=1e-14)


def test_minimum_and_maximum_take_the_derivative_of_the_side_they_return() -> None:
    u, v = np.array([0.3, -1.2, 2.0, 0.5]), np.array([1.5, -2.4, -2.2, 0.5])  # the last a tie
    env = {"u": u, "v": v}
    larger, tie = (u > v).astype(float), u == v
    for name, first in (("maximum", larger), ("minimum", 1.0 - larger)):
        expr = tree(f"{name}(u, v)")
        np.testing.assert_array_equal(_values_n(expr, env), np.maximum(u, v) if name == "maximum" else np.minimum(u, v))
        du, dv = _values_n(diff(expr, "u"), env), _values_n(diff(expr, "v"), env)
        np.testing.assert_array_equal(du[~tie], first[~tie])
        np.testing.assert_array_equal(dv[~tie], 1.0 - first[~tie])
        assert du[tie] == dv[tie] == 0.5  # a subgradient at the kink
    assert simplify(tree("maximum(2, 3) + minimum(2, 3)")) == Num(5.0)
    from gradfit.symbolic import FOLDERS

    for name in ("maximum", "minimum"):  # nan from either side, as numpy's
        assert math.isnan(FOLDERS[name](math.nan, 1.0)) and math.isnan(FOLDERS[name](1.0, math.nan))


@pytest.mark.parametrize(
    ("text", "name", "expected"),
    [
        ("w*x + b", "w", "x"),
        ("w*x + b", "b", "1"),
        ("w*x + b", "x", "w"),
        ("w2*x**2 + w1*x + b", "x", "w2*(2*x) + w1"),
        ("a*exp(-k*t) + c", "k", "-(a*exp(-k*t)*t)"),
        ("x**3", "x", "3*x**2"),
        ("2**x", "x", "0.6931471805599453*2**x"),
        ("log(x)", "x", "1/x"),
        ("sqrt(x)", "x", "0.5/sqrt(x)"),
        ("sin(2*x)", "x", "2*cos(2*x)"),
        ("1/x", "x", "-(1/x**2)"),
        ("exp(x)", "y", "0"),
    ],
)
def test_derivative_text(text: str, name: str, expected: str) -> None:
    assert to_text(diff(tree(text), name)) == expected


def test_derivative_of_independent_expression_is_exactly_zero() -> None:
    assert diff(tree("exp(sin(y)*z) / (1 + y**2)"), "x") == ZERO
    assert diff(tree("x"), "x") == ONE


def test_general_power_rule() -> None:
    expr = tree("x**y")
    x, y = np.array([0.5, 1.5, 3.0]), np.array([-1.0, 0.5, 2.5])
    env = {"x": x, "y": y}
    np.testing.assert_allclose(_values_n(diff(expr, "x"), env), y * x ** (y - 1), rtol=1e-14)
    np.testing.assert_allclose(_values_n(diff(expr, "y"), env), x**y * np.log(x), rtol=1e-14)


def test_gradient_keeps_the_order_of_names() -> None:
    expr = tree("a*x + b")
    assert gradient(expr, ["b", "a"]) == [ONE, Var("x")]


def test_diff_of_a_deep_tree_does_not_overflow_the_stack() -> None:
    expr = tree("sin(" * (MAX_DEPTH - 1) + "x" + ")" * (MAX_DEPTH - 1))
    second = diff(diff(expr, "x"), "x")
    assert "sin" in to_text(second)
    x = np.array([0.3])
    assert np.isfinite(evaluate_numpy(second, {"x": x})).all()


# ------------------------------------------------------------------------------------------------
# simplify
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x*1 + 0", "x"),
        ("1*x - 0", "x"),
        ("x*0 + y", "y"),
        ("0*x", "0"),
        ("x**1", "x"),
        ("x**0", "1"),
        ("1**x", "1"),
        ("--x", "x"),
        ("-(-(-x))", "-x"),
        ("x - x", "0"),
        ("0 - x", "-x"),
        ("x + -y", "x - y"),
        ("x - -y", "x + y"),
        ("0/x", "0"),
        ("x/1", "x"),
        ("2*3*x", "6*x"),
        ("2*(3*x)", "6*x"),
        ("-(2*x)", "-2*x"),
        ("(-x)*(-y)", "x*y"),
        ("exp(0) * x", "x"),
        ("2**10", "1024"),
        ("sqrt(4) + x", "2 + x"),
        ("log(0) + x", "log(0) + x"),
        ("sqrt(-1)", "sqrt(-1)"),
        ("1/0", "1/0"),
        ("(-8)**(1/3)", "(-8)**0.3333333333333333"),
        ("1e308*10", "1e+308*10"),
        ("9**9**9", "9**387420489"),
        ("exp(1000)", "exp(1000)"),
    ],
)
def test_simplify_rules(text: str, expected: str) -> None:
    start = time.perf_counter()
    assert to_text(simplify(tree(text))) == expected
    assert time.perf_counter() - start < 0.5


@RANDOM
@given(smooth_trees, st.integers(0, 2**32 - 1))
def test_simplify_preserves_values(expr: Expr, seed: int) -> None:
    env = _points(seed)
    f = _values(expr, env)
    assume(np.all(np.isfinite(f)) and np.max(np.abs(f)) < 1e6)
    simpler = simplify(expr)
    np.testing.assert_allclose(
        _values(simpler, env), f, rtol=1e-9, atol=1e-9 * (1 + np.max(np.abs(f)))
    )
    assert simplify(simpler) == simpler


def test_substitute_replaces_and_simplifies() -> None:
    expr = tree("w*x + b")
    assert substitute(expr, {"w": 0.0, "b": 0.0}) == ZERO
    assert substitute(expr, {"w": 2, "x": Var("t")}) == tree("2*t + b")


# ------------------------------------------------------------------------------------------------
# to_text: minimal parentheses, exact round trip
# ------------------------------------------------------------------------------------------------
_any_numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([math.pi, -math.pi, math.e, 0.0, -0.0, 1e16, 123.0, 5e-324, 2.5]),
)
_any_leaves = st.one_of(
    st.sampled_from([Var(name) for name in ("x", "y_1", "alpha", "t_u", "e1", "E")]),
    _any_numbers.map(Num),
)


def _any_extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    return st.one_of(
        st.builds(Bin, st.sampled_from(BINARY_OPS), children, children),
        children.map(lambda c: Num(-c.value) if isinstance(c, Num) else Neg(c)),
        st.builds(
            lambda f, args: Call(f, args[: FUNCTIONS[f]]),
            st.sampled_from(sorted(FUNCTIONS)),
            st.tuples(children, children),
        ),
    )


any_trees = st.recursive(_any_leaves, _any_extend, max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(any_trees)
def test_to_text_round_trips_exactly(expr: Expr) -> None:
    text = to_text(expr)
    assert parse(text).tree == expr, text


@pytest.mark.parametrize(
    "text",
    [
        "w*x + b",
        "x - (y - z)",
        "x - y - z",
        "x/(y*z)",
        "x/y*z",
        "-x**2",
        "(-x)**2",
        "x**-y",
        "(x**y)**z",
        "x**y**z",
        "-(x + y)",
        "x*-y",
        "(-2)**x",
        "-2**x",
        "a*exp(-k*t) + c",
        "arctan2(y, x + 1)",
        "pi*e",
    ],
)
def test_to_text_uses_minimal_parentheses(text: str) -> None:
    assert to_text(tree(text)) == text


# ------------------------------------------------------------------------------------------------
# Linearity
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "params", "linear"),
    [
        ("w*x + b", ["w", "b"], True),
        ("w2*x**2 + w1*x + b", ["w2", "w1", "b"], True),
        ("a*exp(-k*t)", ["a", "k"], False),
        ("a*exp(-k*t)", ["a"], True),
        ("a*exp(-k*t)", ["k"], False),
        ("(w + b)*x", ["w", "b"], True),
        ("a*sin(x) + b*cos(x) - c/2 + 3", ["a", "b", "c"], True),
        ("w*x*b", ["w", "b"], False),
        ("w*x*b", ["w"], True),
        ("w**2*x", ["w"], False),
        ("x/w", ["w"], False),
        ("w/x", ["w"], True),
        ("exp(b)", ["b"], False),
        ("abs(a)*x", ["a"], False),
        ("sign(a)*x", ["a"], False),
        ("sign(a)*x + a", ["a"], False),
        # steps whose derivative simplifies to 0: arctan2(a, 0) = ±π/2, arctan2(0, a) = 0 or π
        ("arctan2(a, 0)*x + b", ["a", "b"], False),
        ("arctan2(0, a) + b*x", ["a", "b"], False),
        ("arctan2(a, 0) + a", ["a"], False),
        ("arctan2(x, 2)*a", ["a"], True),
        ("2**a", ["a"], False),
        ("a*a", ["a"], False),
        ("a - a + x", ["a"], True),
        ("x**2 + 1", ["a"], True),
        ("sqrt(x)*a + log(x)", ["a"], True),
        ("maximum(a*x, b)", ["a", "b"], False),
        ("minimum(x, 1)*a + b", ["a", "b"], True),
        ("maximum(a, 0)*x", ["a"], False),
    ],
)
def test_is_linear_in_truth_table(text: str, params: list[str], linear: bool) -> None:
    assert is_linear_in(tree(text), params) is linear


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("w*x + b", ["w", "b"]),
        ("w2*x**2 + w1*x + b + sin(x)", ["w2", "w1", "b"]),
        ("(w + b)*x - 3*c/x + exp(x)", ["b", "w", "c"]),
        ("a*sin(x) + b*cos(x) - c/2 + 3", ["a", "b", "c"]),
    ],
)
def test_linear_design_reconstructs_the_expression(text: str, params: list[str]) -> None:
    expr = tree(text)
    offset, columns = linear_design(expr, params)
    rng = np.random.default_rng(7)
    x = rng.uniform(0.5, 2.0, 9)
    values = {p: rng.normal() for p in params}
    env = {"x": x, **values}
    rebuilt = _values_n_x(offset, env, x) + sum(
        values[p] * _values_n_x(col, env, x) for p, col in zip(params, columns)
    )
    np.testing.assert_allclose(rebuilt, _values_n_x(expr, env, x), rtol=1e-12, atol=1e-12)
    for column in columns:
        assert not set(params) & set(parse(to_text(column)).names)


def _values_n_x(expr: Expr, env: dict[str, object], x: np.ndarray) -> np.ndarray:
    return np.broadcast_to(evaluate_numpy(expr, env), x.shape)


@pytest.mark.parametrize(
    "text", ["a*x + b + 0*log(x)", "log(x)*0 + a*x + b", "a*x + b + log(x) - log(x)", "a*x + b + 0/x", "a*x + b*(1 + 0*sqrt(x))"]
)
def test_linear_design_is_undefined_where_the_expression_is(text: str) -> None:
    """Simplifying 0*log(x) to 0 made the design finite where the model is NaN: fitted there."""
    x = np.linspace(-2.0, 2.0, 9)
    offset, columns = linear_design(tree(text), ["a", "b"])
    env = {"x": x, "a": 1.5, "b": -0.5}
    rebuilt = _values_n_x(offset, env, x) + sum(v * _values_n_x(c, env, x) for v, c in zip((1.5, -0.5), columns))
    np.testing.assert_array_equal(np.isfinite(rebuilt), np.isfinite(_values_n_x(tree(text), env, x)))
    assert not np.isfinite(rebuilt).all()
    assert linear_design(tree("w*x + b + sin(x)"), ["w", "b"])[0] == tree("sin(x)")  # total functions need no guard


def test_linear_design_rejects_nonlinear_models() -> None:
    with pytest.raises(ModelError, match="not linear"):
        linear_design(tree("a*exp(-k*t)"), ["a", "k"])


def test_a_power_with_a_parameter_exponent_has_a_finite_derivative_where_its_base_is_zero() -> None:
    # d(x**p)/dp = x**p*log(x) is 0 at x = 0 (p > 0), as autograd has it, not 0*(-inf) = NaN
    import torch

    from gradfit.evaluate import evaluate_numpy

    tree = diff(parse("a*x**p").tree, "p")
    x = np.array([0.0, 0.5, 2.0])
    values = evaluate_numpy(tree, {"a": 1.5, "p": 2.0, "x": x})
    p = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    expected = [torch.autograd.grad(1.5 * torch.tensor(v, dtype=torch.float64) ** p, p)[0].item() for v in x]
    np.testing.assert_allclose(values, expected, rtol=1e-14)
    assert values[0] == 0.0


@pytest.mark.parametrize(
    ("build", "a", "b"),
    [(mul, 1e-200, 1e-200), (div, 1e-200, 1e200), (power, 1e-200, 2.0), (add, 1e-308, -9.9e-309)],
)
def test_a_constant_that_underflows_stays_symbolic(build, a: float, b: float) -> None:
    # folded, 1e-200*1e-200 would be an exact 0 and x*0 -> 0 would drop the term it multiplies
    assert not isinstance(build(Num(a), Num(b)), Num)
    assert mul(Num(2.0), Num(3.0)) == Num(6.0) and mul(Num(0.0), Num(1e-200)) == ZERO


def test_the_derivative_of_a_power_of_tiny_constants_is_not_lost_to_underflow() -> None:
    # d/dx (-c*x)**c = c*(-c*x)**(c - 1)*(-c): folding c*(-c) gave 0 (found by the formula fuzz test)
    c = 8.343151239655746e-201
    (derivative,) = gradient(parse(f"pow(-x*{c!r}, {c!r})").tree, ["x"])
    x = np.array([-3.0, -0.5, -1e-3])
    closed_form = c * (-c * x) ** (c - 1.0) * -c
    np.testing.assert_allclose(evaluate_numpy(derivative, {"x": x}), closed_form, rtol=1e-14)
    assert np.all(closed_form != 0.0)


def test_a_number_times_a_product_is_not_regrouped_into_an_underflow() -> None:
    # d/dy (-y*c)**(x + c) = -c*((x + c)*(-y*c)**(x + c - 1)); regrouped as (-c*(x + c))*... the
    # first product underflows to 0 at x = 0, where the derivative is -2c (found by the fuzz test)
    c = 8.343151239655746e-201
    derivative = diff(parse(f"pow(-y*{c!r}, x + {c!r})").tree, "y")
    value = evaluate_numpy(derivative, {"x": np.array([0.0]), "y": np.array([-0.5])})
    np.testing.assert_allclose(value, [-2.0 * c], rtol=1e-14)
    assert to_text(mul(Num(2.0), mul(Var("x"), Var("y")))) == "2*(x*y)"
    assert to_text(mul(Var("z"), mul(Var("x"), Var("y")))) == "z*x*y"


@pytest.mark.parametrize("text", ["sqrt(a*x)", "(a*x)**0.5", "abs(a*x)**0.25", "arcsin(a*x)", "b*sqrt(a*x) + c"])
def test_a_steep_function_of_a_term_that_does_not_move_has_derivative_zero_not_nan(text: str) -> None:
    """At x = 0, sqrt(a*x) is 0 for every a: d/da is 0 (0 * inf was NaN, and such data could not be
    fitted). Elsewhere the derivative is the chain rule's, in numpy and in torch."""
    x = np.array([0.0, 0.25, 1.0])
    env = {"x": x, "a": 0.8, "b": 1.3, "c": 0.1}
    derivative = diff(tree(text), "a")
    values = np.broadcast_to(evaluate_numpy(derivative, env), x.shape)
    assert values[0] == 0.0
    step = 1e-6
    around = [np.broadcast_to(evaluate_numpy(tree(text), {**env, "a": 0.8 + h}), x.shape) for h in (step, -step)]
    np.testing.assert_allclose(values[1:], ((around[0] - around[1]) / (2 * step))[1:], rtol=1e-6)
    program = compile_torch([derivative])
    torch_values = program({"x": torch.tensor(x), "a": torch.tensor(0.8, dtype=torch.float64), "b": torch.tensor(1.3, dtype=torch.float64), "c": torch.tensor(0.1, dtype=torch.float64)})[0]
    np.testing.assert_allclose(np.broadcast_to(torch_values.numpy(), x.shape), values, rtol=1e-15)
    negative = np.broadcast_to(evaluate_numpy(diff(tree("sqrt(a - x)"), "a"), {"x": np.array([0.8]), "a": 0.8}), (1,))
    assert negative[0] == np.inf  # where the inner term does move, the slope is infinite, as it is

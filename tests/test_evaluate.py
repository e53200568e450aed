"""Tests for gradfit.evaluate: the compiled torch program vs the numpy reference."""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from gradfit.errors import ModelError
from gradfit.evaluate import compile_numpy, compile_torch, evaluate_numpy
from gradfit.formula import FUNCTIONS, Bin, Call, Expr, Neg, Num, Var, parse
from gradfit.symbolic import gradient

VARS = ("x", "y")


def tree(text: str) -> Expr:
    return parse(text).tree


class CountTorchCalls(TorchFunctionMode):
    """Counts every torch function / tensor method called inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


# ------------------------------------------------------------------------------------------------
# numpy reference vs compiled torch on random trees (domains kept valid by construction)
# ------------------------------------------------------------------------------------------------
def _safe_arg(func: str, a: Expr) -> Expr:
    if func in {"log", "log10", "log2", "sqrt", "log1p"}:
        return Bin("+", Num(0.5), Call("square", (a,)))
    if func in {"arcsin", "arccos", "tan"}:
        return Bin("*", Num(0.9), Call("tanh", (a,)))
    if func in {"exp", "expm1", "sinh", "cosh"}:
        return Call("sin", (a,))
    return a


def _extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    unary = sorted(name for name, arity in FUNCTIONS.items() if arity == 1)
    pairs = st.tuples(children, children)
    return st.one_of(
        st.builds(lambda op, ab: Bin(op, *ab), st.sampled_from(["+", "-", "*"]), pairs),
        pairs.map(lambda ab: Bin("/", ab[0], Bin("+", Num(2.0), Call("sin", (ab[1],))))),
        st.builds(lambda a, k: Bin("**", a, Num(k)), children, st.sampled_from([2.0, 3.0, -1.0])),
        children.map(Neg),
        st.builds(lambda f, a: Call(f, (_safe_arg(f, a),)), st.sampled_from(unary), children),
        pairs.map(lambda ab: Call("arctan2", ab)),
        st.builds(lambda f, ab: Call(f, ab), st.sampled_from(["minimum", "maximum"]), pairs),
    )


trees = st.recursive(
    st.one_of(st.sampled_from([Var(v) for v in VARS]), st.floats(-2, 2).map(Num)),
    _extend,
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(trees, st.integers(0, 2**32 - 1))
def test_compiled_torch_agrees_with_numpy_reference(expr: Expr, seed: int) -> None:
    rng = np.random.default_rng(seed)
    env = {v: rng.uniform(-2, 2, 7) for v in VARS}
    reference = np.broadcast_to(evaluate_numpy(expr, env), (7,))
    assume(np.all(np.isfinite(reference)) and np.max(np.abs(reference)) < 1e8)
    (value,) = compile_torch([expr])({k: torch.tensor(v) for k, v in env.items()})
    assert value.dtype == torch.float64 and value.shape == (7,)
    np.testing.assert_allclose(
        value.numpy(), reference, rtol=1e-10, atol=1e-10 * (1 + np.max(np.abs(reference)))
    )
    (on_numpy,) = compile_numpy([expr])(env)
    assert on_numpy.dtype == np.float64 and on_numpy.shape == (7,)
    np.testing.assert_allclose(on_numpy, reference, rtol=1e-12, atol=1e-12 * (1 + np.max(np.abs(reference))))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("log(x - 2)", [math.nan, math.nan]),
        ("sqrt(x - 2)", [math.nan, math.nan]),
        ("1/(x - 1)", [math.inf, -1.0]),
        ("(x - 1)/(x - 1)", [math.nan, 1.0]),
        ("(-8 + 0*x)**(1/3)", [math.nan, math.nan]),
        ("exp(1000*x)", [math.inf, 1.0]),
        ("9**9**9 + x", [math.inf, math.inf]),
        ("log(0*x)", [-math.inf, -math.inf]),
        ("sign(x - 1)", [0.0, -1.0]),
        ("sigmoid(-1000*x)", [0.0, 0.5]),
    ],
)
def test_edge_values_agree_and_raise_no_warnings(text: str, expected: list[float]) -> None:
    x = np.array([1.0, 0.0])
    reference = np.broadcast_to(evaluate_numpy(tree(text), {"x": x}), x.shape)
    (value,) = compile_torch([tree(text)])({"x": torch.tensor(x)})
    np.testing.assert_array_equal(reference, expected)
    np.testing.assert_array_equal(value.numpy(), reference)
    np.testing.assert_array_equal(compile_numpy([tree(text)])({"x": x})[0], reference)  # warnings are errors here


# ------------------------------------------------------------------------------------------------
# Shared sub-expressions are computed once
# ------------------------------------------------------------------------------------------------
def test_repeated_subexpressions_are_computed_once() -> None:
    program = compile_torch([tree("exp(x)*exp(x) + exp(x) + (x + 1)*(x + 1)")])
    with CountTorchCalls() as mode:
        program({"x": torch.linspace(0, 1, 5)})
    assert mode.calls["exp"] == 1
    assert program.n_ops == 6  # exp, *, +, x+1, *, +


def test_model_and_jacobian_share_work_in_one_pass() -> None:
    model = tree("a*exp(-k*t) + c")
    params = ["a", "k", "c"]
    exprs = [model, *gradient(model, params)]
    program = compile_torch(exprs)
    separate = sum(compile_torch([e]).n_ops for e in exprs)
    assert program.n_ops < separate
    t = torch.linspace(0, 5, 11, dtype=torch.float64)
    values = {"a": 2.0, "k": 0.3, "c": 0.5}
    env = {"t": t, **{name: torch.tensor(v, dtype=torch.float64) for name, v in values.items()}}
    with CountTorchCalls() as mode:
        f, da, dk, dc = program(env)
    assert mode.calls["exp"] == 1
    e = torch.exp(-0.3 * t)
    torch.testing.assert_close(f, 2 * e + 0.5)
    torch.testing.assert_close(da, e)
    torch.testing.assert_close(dk, -2 * t * e)
    torch.testing.assert_close(dc, torch.ones_like(t))


def test_identical_expressions_cost_nothing_extra() -> None:
    expr = tree("sin(x)*y + cos(x)")
    alone = compile_torch([expr]).n_ops
    assert compile_torch([expr, expr, tree("cos(x) + 0*y")]).n_ops == alone + 2  # 0*y, +


def test_constant_subexpressions_are_folded_at_compile_time() -> None:
    program = compile_torch([tree("exp(2)*x + sqrt(pi)*log(10)")])
    assert program.n_ops == 2
    x = torch.tensor([0.5, 1.5], dtype=torch.float64)
    torch.testing.assert_close(
        program({"x": x})[0], math.exp(2) * x + math.sqrt(math.pi) * math.log(10)
    )


def test_power_tower_compiles_instantly() -> None:
    start = time.perf_counter()
    program = compile_torch([tree("9**9**9 * x")])
    assert program.n_ops == 1 and time.perf_counter() - start < 0.5


# ------------------------------------------------------------------------------------------------
# dtype, device, broadcasting
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_preserved_including_constant_outputs(dtype: torch.dtype) -> None:
    model = tree("w*x + b + 0.1*exp(0.5) + arctan2(1, x) + pi")
    exprs = [model, *gradient(model, ["w", "b"]), Num(3.0)]
    x = torch.linspace(1, 2, 4, dtype=dtype)
    w, b = torch.tensor(2.0, dtype=dtype), torch.tensor(1.0, dtype=dtype)
    outputs = compile_torch(exprs)({"x": x, "w": w, "b": b})
    assert [o.dtype for o in outputs] == [dtype] * 4
    assert [tuple(o.shape) for o in outputs] == [(4,)] * 4
    torch.testing.assert_close(outputs[2], torch.ones(4, dtype=dtype))
    torch.testing.assert_close(outputs[3], torch.full((4,), 3.0, dtype=dtype))


def test_batched_parameters_broadcast_against_data() -> None:
    model = tree("a*exp(-k*t) + c")
    program = compile_torch([model, *gradient(model, ["a", "k", "c"])])
    rng = np.random.default_rng(3)
    t = np.linspace(0, 4, 9)
    a, k, c = (rng.uniform(0.5, 2, (5, 1)) for _ in range(3))
    env = {"t": t, "a": a, "k": k, "c": c}
    outputs = program({name: torch.tensor(value) for name, value in env.items()})
    assert all(o.shape == (5, 9) for o in outputs)
    for row in range(5):
        env = {"t": t, "a": a[row, 0], "k": k[row, 0], "c": c[row, 0]}
        np.testing.assert_allclose(outputs[0][row].numpy(), evaluate_numpy(model, env), rtol=1e-14)
    np.testing.assert_array_equal(outputs[3].numpy(), np.ones((5, 9)))


def test_without_broadcast_results_keep_their_own_shapes() -> None:
    program = compile_torch([tree("2*a"), tree("x + 1")], broadcast=False)
    a, x = torch.ones(3, 1), torch.zeros(4)
    first, second = program({"a": a, "x": x})
    assert first.shape == (3, 1) and second.shape == (4,)


def test_program_is_reusable_and_reports_its_inputs() -> None:
    program = compile_torch([parse("w*x + b"), tree("x**2")])
    assert program.names == ("w", "x", "b")
    assert program.n_outputs == 2
    x = torch.arange(3.0)
    first = program({"w": torch.tensor(2.0), "x": x, "b": torch.tensor(1.0)})
    second = program({"w": torch.tensor(3.0), "x": x, "b": torch.tensor(0.0)})
    torch.testing.assert_close(first[0], 2 * x + 1)
    torch.testing.assert_close(second[0], 3 * x)
    assert "n_ops" in repr(program)


def test_missing_input_raises_model_error() -> None:
    program = compile_torch([tree("w*x + b")])
    with pytest.raises(ModelError, match="no value for 'b'"):
        program({"w": torch.tensor(1.0), "x": torch.ones(2)})
    with pytest.raises(ModelError, match="no value for 'b'"):
        evaluate_numpy(tree("w*x + b"), {"w": 1.0, "x": np.ones(2)})


def test_compiled_program_works_with_autograd_and_torch_func() -> None:
    model = tree("a*sin(k*t) + c*t**2")
    names = ["a", "k", "c"]
    program = compile_torch([model, *gradient(model, names)])
    t = torch.linspace(0, 3, 7, dtype=torch.float64)

    def predict(theta: torch.Tensor) -> torch.Tensor:
        return program({"t": t, **dict(zip(names, theta))})[0]

    theta = torch.tensor([1.5, 0.7, -0.2], dtype=torch.float64)
    jacobian = torch.func.jacfwd(predict)(theta)
    columns = program({"t": t, **dict(zip(names, theta))})[1:]
    torch.testing.assert_close(jacobian, torch.stack(columns, dim=-1))


def test_evaluate_numpy_returns_float64_arrays() -> None:
    result = evaluate_numpy(tree("x/3"), {"x": [1, 2]})
    assert isinstance(result, np.ndarray) and result.dtype == np.float64
    np.testing.assert_array_equal(result, [1 / 3, 2 / 3])
    assert evaluate_numpy(tree("2*pi"), {}).shape == ()


# ------------------------------------------------------------------------------------------------
# the numpy program: same plan, numpy arrays
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_program_stacks_model_and_jacobian_in_the_inputs_dtype(dtype: type) -> None:
    model = tree("a*exp(-k*t) + c")
    exprs = [model, *gradient(model, ["a", "k", "c"])]
    t = np.linspace(0, 4, 9).astype(dtype)
    theta = np.array([[2.0, 0.5, 1.0], [1.0, 1.5, -1.0]], dtype=dtype)  # two fits
    env = {"t": t, "a": theta[:, 0:1], "k": theta[:, 1:2], "c": theta[:, 2:3]}
    stacked = compile_numpy(exprs).stacked(env)
    assert stacked.shape == (2, 9, 4) and stacked.dtype == dtype
    on_torch = compile_torch(exprs)({name: torch.as_tensor(value) for name, value in env.items()})
    for j, column in enumerate(on_torch):
        np.testing.assert_allclose(stacked[..., j], column.numpy(), rtol=1e-6 if dtype == np.float32 else 1e-15)
    np.testing.assert_array_equal(stacked[..., 3], 1.0)  # the constant column dc, broadcast by assignment


def test_numpy_program_shares_the_torch_programs_plan() -> None:
    exprs = [tree("exp(x)*exp(x) + exp(x) + (x + 1)*(x + 1)"), tree("exp(2)*x + sqrt(pi)*log(10)")]
    numpy_program, torch_program = compile_numpy(exprs), compile_torch(exprs)
    assert numpy_program.n_ops == torch_program.n_ops and numpy_program.names == torch_program.names
    with pytest.raises(ModelError, match="no value for 'x'"):
        numpy_program({})


def test_integer_inputs_and_parameters_give_real_values_not_truncated_ones():
    # the output array took the inputs' integer dtype: a*sqrt(x) + b at x = 2, 3, 5 gave [3 4 5]
    from gradfit.model import make_model

    model = make_model("a*sqrt(x) + b", ["x"])
    x = np.array([2, 3, 5])
    expected = 2.0 * np.sqrt(x) + 1.0
    np.testing.assert_allclose(model.predict({"x": x}, np.array([2, 1])), expected, rtol=1e-15)
    prediction, jacobian = model.predict_and_jacobian({"x": x}, np.array([2, 1]))
    np.testing.assert_allclose(prediction, expected, rtol=1e-15)
    np.testing.assert_allclose(jacobian[:, 0], np.sqrt(x), rtol=1e-15)

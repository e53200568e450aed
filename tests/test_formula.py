"""Tests for gradfit.formula: the whitelisted parser, its positions and its guards."""

from __future__ import annotations

import builtins
import math
import subprocess
import sys
import time

import pytest

from gradfit.errors import FormulaError
from gradfit.formula import (
    FUNCTIONS,
    MAX_DEPTH,
    MAX_LENGTH,
    Bin,
    Call,
    Formula,
    Neg,
    Num,
    Var,
    depth,
    free_names,
    parse,
)

x, y, w, b = Var("x"), Var("y"), Var("w"), Var("b")


# ------------------------------------------------------------------------------------------------
# Valid formulas
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("w*x + b", Bin("+", Bin("*", w, x), b)),
        ("w * x+b", Bin("+", Bin("*", w, x), b)),
        ("x - y - b", Bin("-", Bin("-", x, y), b)),
        ("x - (y - b)", Bin("-", x, Bin("-", y, b))),
        ("x**y**b", Bin("**", x, Bin("**", y, b))),
        ("-x**2", Neg(Bin("**", x, Num(2)))),
        ("(-x)**2", Bin("**", Neg(x), Num(2))),
        ("-2*x", Bin("*", Num(-2), x)),
        ("+x", x),
        ("--x", Neg(Neg(x))),
        ("x / 2.5e-3", Bin("/", x, Num(0.0025))),
        ("1_000 * x", Bin("*", Num(1000), x)),
        ("0x10", Num(16)),
        ("pi * e", Bin("*", Num(math.pi), Num(math.e))),
        ("exp(-x)", Call("exp", (Neg(x),))),
        ("ln(x)", Call("log", (x,))),
        ("asin(x) + acos(x)", Bin("+", Call("arcsin", (x,)), Call("arccos", (x,)))),
        ("atan(x)", Call("arctan", (x,))),
        ("atan2(y, x)", Call("arctan2", (y, x))),
        ("arctan2(y, x,)", Call("arctan2", (y, x))),
        ("pow(x, 3)", Bin("**", x, Num(3))),
        ("sigmoid(w*x)", Call("sigmoid", (Bin("*", w, x),))),
        ("  x", x),
        ("(x\n + y)", Bin("+", x, y)),
        ("(x\r\n + y)", Bin("+", x, y)),
    ],
)
def test_parse_builds_the_expected_tree(text: str, tree: object) -> None:
    assert parse(text).tree == tree


def test_every_whitelisted_function_parses() -> None:
    for name, arity in FUNCTIONS.items():
        args = ", ".join(["x"] * arity)
        assert parse(f"{name}({args})").tree == Call(name, (x,) * arity)


def test_names_are_listed_in_first_appearance_order() -> None:
    formula = parse("b + w*x + b*w + exp(k*x)")
    assert formula.names == ("b", "w", "x", "k")
    assert formula.parameters(["x"]) == ("b", "w", "k")
    assert formula.parameters({"x", "k"}) == ("b", "w")
    assert parse("pi * 2").names == ()


def test_formula_is_frozen_and_keeps_its_text() -> None:
    formula = parse("w*x + b")
    assert isinstance(formula, Formula)
    assert str(formula) == "w*x + b"
    with pytest.raises(AttributeError):
        formula.text = "x"  # type: ignore[misc]


def test_structurally_equal_trees_are_equal_and_hash_equal() -> None:
    first, second = parse("exp(-k*t) * (x + 1)").tree, parse("exp(-k * t)*(x+1)").tree
    assert first == second and hash(first) == hash(second)
    assert first != parse("exp(-k*t) * (x + 2)").tree
    assert Num(1) == Num(1.0) and Num(1) != Var("x")


def test_tree_helpers() -> None:
    tree = parse("a*exp(-k*t) + c").tree
    assert free_names(tree) == ("a", "k", "t", "c")
    assert depth(x) == 1
    assert depth(tree) == 6  # + -> * -> exp -> Neg -> * -> k


def test_num_rejects_non_finite_values() -> None:
    with pytest.raises(ValueError):
        Num(math.inf)
    with pytest.raises(ValueError):
        Num(math.nan)


# ------------------------------------------------------------------------------------------------
# Invalid formulas: message and 0-based position
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("x ^ 2", 2, "write a**b"),
        ("w*x + exq(x)", 6, "did you mean 'exp'"),
        ("sinn(x)", 0, "did you mean 'sin'"),
        ("frobnicate(x)", 0, "unknown function 'frobnicate'"),
        ("a + x.__class__", 4, "attribute access"),
        ("x[0]", 0, "indexing"),
        ("x +", 3, "invalid formula syntax"),
        ("(x", 0, "balance the parentheses"),
        ("x)", 1, "balance the parentheses"),
        ("2x", 0, "2*x"),
        ("x y", 2, "invalid formula syntax"),
        ("  x ^ 2", 4, "write a**b"),
        ("(x +\n y ^ 2)", 8, "write a**b"),
        ("x + 1e999", 4, "too large"),
        ("a*b + \u2179", 6, "type 'x' instead"),
        ("\u0430*x", 0, "CYRILLIC SMALL LETTER A"),
        ("x \u2212 1", 2, "type '-' instead"),
        ("x\u00b2", 1, "type '**2' instead"),
        ("x\0", 1, "NUL"),
        ("x\x1b", 1, "control character"),
        ("exp(x, y)", 0, "takes 1 argument"),
        ("arctan2(x)", 0, "takes 2 arguments"),
        ("exp(x, k=1)", 7, "keyword arguments"),
        ("exp * x", 0, "is a function"),
        ("1 + ln", 4, "is a function"),
        ("pi(2)", 0, "is a constant"),
        ("x + True", 4, "not a number"),
        ("x + None", 4, "not a number"),
        ("x + 'a'", 4, "strings"),
        ("b'x'", 0, "strings"),
        ("1j * x", 0, "complex"),
        ("f'{x}'", 0, "f-string"),
        ("x if y else w", 0, "conditional"),
        ("x < y", 0, "comparison"),
        ("x and y", 0, "'and'/'or'"),
        ("not x", 0, "unary 'not'"),
        ("~x", 0, "unary '~'"),
        ("x % 2", 2, "modulo"),
        ("x // 2", 2, "floor division"),
        ("x @ y", 2, "matrix"),
        ("(x := 1)", 1, ":="),
        ("x, y", 0, "tuple"),
        ("[x]", 0, "a list"),
        ("{x: 1}", 0, "a dict"),
        ("...", 0, "not a number"),
        ("", 0, "empty"),
        ("   ", 0, "empty"),
        ("(lambda: 1)()", 1, "only named functions"),
        ("__import__('os')", 0, "unknown function '__import__'"),
        ("[i for i in x]", 0, "comprehension"),
        ("x + (y for y in x)", 4, "generator"),
        ("x = 1", 2, "invalid formula syntax"),
        ("x; y", 1, "invalid formula syntax"),
    ],
)
def test_invalid_formulas_report_problem_and_position(
    text: str, position: int, fragment: str
) -> None:
    with pytest.raises(FormulaError) as info:
        parse(text)
    error = info.value
    assert fragment in str(error)
    assert error.position == position
    assert error.formula == text
    assert "\n" not in str(error)
    assert ";" in error.reason  # names the problem; then the fix


def test_non_string_input_is_rejected() -> None:
    with pytest.raises(FormulaError, match="must be a string"):
        parse(3)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# Adversarial input: always a FormulaError, always fast, never eval/exec
# ------------------------------------------------------------------------------------------------
ADVERSARIAL = [
    "__import__('os').system('echo pwned')",
    "x.__class__.__bases__[0].__subclasses__()",
    "(lambda: 1)()",
    "[i for i in x]",
    "globals()",
    "open('/etc/passwd')",
    "exp.__globals__",
    "().__class__",
    "'a' * 10**9",
    "(" * 5000 + "x" + ")" * 5000,
    "-" * 9999 + "x",
    "x" + "+x" * 4999,
    "exp(" * 150 + "x" + ")" * 150,
    "1" * 5000,
    "1" * 400 + "e999",
    "9" * 400 + ".0",
    "x\0 + 1",
    "\u2179 + 1",
    "\u0430 * x",
    "x" * (MAX_LENGTH + 1),
    "x + " + "y" * 9000 + "(",
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=lambda t: repr(t[:25]))
def test_adversarial_input_raises_formula_error_quickly(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval/exec must never be called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    start = time.perf_counter()
    with pytest.raises(FormulaError) as info:
        parse(text)
    assert time.perf_counter() - start < 1.0
    assert info.value.position is None or 0 <= info.value.position <= len(text)


def test_power_tower_parses_instantly_without_evaluating() -> None:
    start = time.perf_counter()
    tree = parse("9**9**9").tree
    assert time.perf_counter() - start < 0.5
    assert tree == Bin("**", Num(9), Bin("**", Num(9), Num(9)))


def test_nesting_limit_is_exact() -> None:
    legal = "sin(" * (MAX_DEPTH - 1) + "x" + ")" * (MAX_DEPTH - 1)
    assert depth(parse(legal).tree) == MAX_DEPTH
    too_deep = "sin(" * MAX_DEPTH + "x" + ")" * MAX_DEPTH
    with pytest.raises(FormulaError, match="nests too deeply"):
        parse(too_deep)
    assert depth(parse("x" + "+x" * (MAX_DEPTH - 1)).tree) == MAX_DEPTH


def test_large_but_finite_literals_are_accepted() -> None:
    assert parse("1e308").tree == Num(1e308)
    assert parse("1" + "0" * 300).tree == Num(1e300)
    with pytest.raises(FormulaError, match="too large"):
        parse("1" + "0" * 400)


def test_formula_modules_do_not_import_torch() -> None:
    code = (
        "import sys, gradfit\n"
        "before = 'torch' in sys.modules\n"
        "import gradfit.formula, gradfit.symbolic, gradfit.evaluate, gradfit.explain\n"
        "print(before, 'torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    if out[0] == "True":
        pytest.skip("the gradfit package itself imports torch")
    assert out == ["False", "False"]


@pytest.mark.parametrize(
    ("text", "word", "renamed"),
    [("a*exp(-lambda*t)", "lambda", "'lam' or 'lambda_'"), ("as*x + b", "as", "'as_'"), ("x + yield", "yield", "'yie' or 'yield_'"),
     ("def*x", "def", "'def_'"), ("b + for*x", "for", "'for_'")],
)
def test_a_reserved_word_as_a_name_is_named_with_a_rename_that_is_not_reserved(text: str, word: str, renamed: str) -> None:
    with pytest.raises(FormulaError, match=f"'{word}' is a reserved word .* rename it, e.g. {renamed} \\(at column") as info:
        parse(text)
    assert info.value.position == text.index(word)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("a*x # + b", "'#' is not allowed in a formula \\(Python would read the rest of the line as a comment\\); remove it"),
        ("1e-400*a*x + b", "number 1e-400 is too small for a float \\(it would be 0\\); use a larger value"),
        ("min(a*x, b)", "unknown function 'min'; did you mean 'minimum'\\?"),
        ("power(x, a)", "unknown function 'power'; write powers as x\\*\\*y"),
        ("a(x + 1)", "unknown function 'a'; to multiply, write a\\*\\(...\\)"),
        ("a*x\n+b", "invalid formula syntax: .*; a formula on several lines needs parentheses around it"),
        ("(a*x +\n b", "invalid formula syntax: .*; balance the parentheses"),
    ],
)
def test_text_python_reads_otherwise_or_a_user_writes_by_habit_is_refused_with_the_fix(text: str, reason: str) -> None:
    """A comment used to cut the formula short and a tiny literal to become 0, both silently."""
    with pytest.raises(FormulaError, match=reason):
        parse(text)


@pytest.mark.parametrize("text", ["0e5*a + x", "0.000*a + x", "0*a + x"])
def test_a_literal_zero_is_zero(text: str) -> None:
    assert parse(text).names == ("a", "x")


def test_the_constants_a_formula_names_are_recorded() -> None:
    assert parse("a*e**(-k*t) + pi*c + e").constants == ("e", "pi")
    assert parse("a*x").constants == ()

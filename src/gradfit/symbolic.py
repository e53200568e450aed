"""Symbolic differentiation, simplification and printing of expression trees.

This is the chapter's hand-derived chain rule, done by the computer: every function's derivative
rule sits in :data:`DERIVATIVES` next to its numeric rule in :data:`FOLDERS`, and :func:`diff`
applies the chain rule over the tree built by :func:`gradfit.formula.parse`. Trees are built
through small "smart constructors" (:func:`add`, :func:`mul`, ...) that apply safe identities and
fold constants, so derivatives come out readable.

Standard library only (no numpy, no torch).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Collection, Mapping, Sequence

from gradfit.errors import ModelError
from gradfit.formula import Bin, Call, Expr, Formula, Neg, Num, Var, children, free_names, walk

__all__ = [
    "ZERO",
    "ONE",
    "add",
    "sub",
    "mul",
    "div",
    "power",
    "neg",
    "call",
    "DERIVATIVES",
    "FOLDERS",
    "diff",
    "gradient",
    "simplify",
    "substitute",
    "to_text",
    "is_linear_in",
    "linear_design",
]

ZERO = Num(0.0)
ONE = Num(1.0)
TWO = Num(2.0)


def _as_expr(expr: Expr | Formula) -> Expr:
    return expr.tree if isinstance(expr, Formula) else expr


def _is_num(node: Expr, value: float | None = None) -> bool:
    return isinstance(node, Num) and (value is None or node.value == value)


# --------------------------------------------------------------------------------------------------
# Safe constant folding: fold only when the float result is finite (no overflow, no domain error).
# --------------------------------------------------------------------------------------------------
def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def _sign(x: float) -> float:
    return float((x > 0) - (x < 0))


#: Numeric rule of each function on Python floats (used for constant folding).
FOLDERS: dict[str, Callable[..., float]] = {
    "exp": math.exp,
    "log": math.log,
    "log10": math.log10,
    "log2": math.log2,
    "log1p": math.log1p,
    "expm1": math.expm1,
    "sqrt": math.sqrt,
    "square": lambda x: x * x,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "arcsin": math.asin,
    "arccos": math.acos,
    "arctan": math.atan,
    "sinh": math.sinh,
    "cosh": math.cosh,
    "tanh": math.tanh,
    "sigmoid": _sigmoid,
    "abs": abs,
    "sign": _sign,
    "erf": math.erf,
    "arctan2": math.atan2,
    "minimum": lambda x, y: x if math.isnan(x) or x < y else y,  # nan from either side, as numpy's
    "maximum": lambda x, y: x if math.isnan(x) or x > y else y,
    "xlogy": lambda x, y: 0.0 if x == 0 and y == y else x * math.log(y),
    "xmul": lambda x, y: 0.0 if x == 0 and y == y else x * y,
}

_BINARY_FOLDERS: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "**": math.pow,  # raises instead of returning complex or taking forever (9**9**9)
}


#: Folders whose result is zero only when an argument is: a zero from non-zero arguments underflowed.
_ZERO_ONLY_FROM_ZERO = frozenset({"*", "/", "**", "exp"})


def _fold(function: Callable[..., float], *values: float, kind: str = "") -> Num | None:
    """The constant ``function(*values)``, or None where folding would lose it.

    A result that is not finite, or that underflowed (subnormal, or a zero of ``kind`` from
    non-zero arguments such as ``1e-200 * 1e-200``), stays symbolic: a folded zero would be
    simplified away (``x * 0 -> 0``) although the expression, evaluated as written, is not zero.
    """
    try:
        result = function(*values)
    except (OverflowError, ValueError, ZeroDivisionError):
        return None
    if not (isinstance(result, float) and math.isfinite(result)):
        return None
    if 0.0 < abs(result) < sys.float_info.min:
        return None
    if result == 0.0 and kind in _ZERO_ONLY_FROM_ZERO and _nonzero_operands(kind, values):
        return None
    return Num(result + 0.0)  # zeros made here are unsigned (-0.0 + 0.0 is 0.0): see neg


def _nonzero_operands(kind: str, values: tuple[float, ...]) -> bool:
    """Whether a zero result of ``kind`` on ``values`` can only be an underflow."""
    return all(values) if kind == "*" else values[0] != 0.0


# --------------------------------------------------------------------------------------------------
# Smart constructors
# --------------------------------------------------------------------------------------------------
def neg(a: Expr) -> Expr:
    """Return ``-a``, simplified (``--x -> x``, ``-(2*x) -> -2*x``, constants folded).

    ``-0`` gives ``ZERO`` (``0.0``, not ``-0.0``, which is a different constant): a derivative
    that does not depend on the name is exactly ``ZERO``.
    """
    if isinstance(a, Num):
        return Num(0.0 - a.value)
    if isinstance(a, Neg):
        return a.arg
    if isinstance(a, Bin) and a.op == "*" and isinstance(a.left, Num):
        return mul(Num(-a.left.value), a.right)
    return Neg(a)


def add(a: Expr, b: Expr) -> Expr:
    """Return ``a + b``, simplified (``x + 0 -> x``, ``x + -y -> x - y``, constants folded)."""
    if isinstance(a, Num) and isinstance(b, Num):
        folded = _fold(_BINARY_FOLDERS["+"], a.value, b.value)
        if folded is not None:
            return folded
    if _is_num(a, 0.0):
        return b
    if _is_num(b, 0.0):
        return a
    if isinstance(b, Neg):
        return sub(a, b.arg)
    if isinstance(b, Num) and b.value < 0:
        return sub(a, Num(-b.value))
    if isinstance(a, Neg):
        return sub(b, a.arg)
    return Bin("+", a, b)


def sub(a: Expr, b: Expr) -> Expr:
    """Return ``a - b``, simplified (``x - 0 -> x``, ``0 - x -> -x``, ``x - x -> 0``...)."""
    if isinstance(a, Num) and isinstance(b, Num):
        folded = _fold(_BINARY_FOLDERS["-"], a.value, b.value)
        if folded is not None:
            return folded
    if _is_num(b, 0.0):
        return a
    if _is_num(a, 0.0):
        return neg(b)
    if a == b:
        return ZERO
    if isinstance(b, Neg):
        return add(a, b.arg)
    if isinstance(b, Num) and b.value < 0:
        return add(a, Num(-b.value))
    return Bin("-", a, b)


def mul(a: Expr, b: Expr) -> Expr:
    """Return ``a * b``, simplified (``x*1 -> x``, ``x*0 -> 0``, constants first and merged).

    A number or a name multiplying a product joins it on the left (``a*(b*c) -> a*b*c``); this may
    change the last bit of a result, never more. A larger ``a`` is not pushed in: that would turn
    the derivative of a balanced product of n names into a chain of depth n.
    """
    if isinstance(a, Num) and isinstance(b, Num):
        folded = _fold(_BINARY_FOLDERS["*"], a.value, b.value, kind="*")
        if folded is not None:
            return folded
    if _is_num(a, 0.0) or _is_num(b, 0.0):
        return ZERO
    if _is_num(a, 1.0):
        return b
    if _is_num(b, 1.0):
        return a
    if _is_num(a, -1.0):
        return neg(b)
    if _is_num(b, -1.0):
        return neg(a)
    if isinstance(a, Neg) and isinstance(b, Neg):
        return mul(a.arg, b.arg)
    if isinstance(a, Neg):
        return neg(mul(a.arg, b))
    if isinstance(b, Neg):
        return neg(mul(a, b.arg))
    if isinstance(b, Num) and not isinstance(a, Num):
        return mul(b, a)
    if isinstance(a, Num) and isinstance(b, Bin) and b.op == "*" and isinstance(b.left, Num):
        folded = _fold(_BINARY_FOLDERS["*"], a.value, b.left.value, kind="*")
        if folded is not None:
            return mul(folded, b.right)
    # x*(b*c) -> x*b*c reads left to right; a number stays outside (c1*(u*v)), as autograd's chain
    # rule multiplies: regrouped, (1e-200*u)*v can underflow where 1e-200*(u*v) does not
    if isinstance(a, Var) and isinstance(b, Bin) and b.op == "*" and not isinstance(b.left, Num):
        return mul(mul(a, b.left), b.right)
    return Bin("*", a, b)


def div(a: Expr, b: Expr) -> Expr:
    """Return ``a / b``, simplified (``x/1 -> x``, ``0/x -> 0``, constants folded)."""
    if isinstance(a, Num) and isinstance(b, Num):
        folded = _fold(_BINARY_FOLDERS["/"], a.value, b.value, kind="/")
        if folded is not None:
            return folded
    if _is_num(b, 1.0):
        return a
    if _is_num(b, -1.0):
        return neg(a)
    if _is_num(a, 0.0) and not _is_num(b, 0.0):
        return ZERO
    if isinstance(a, Neg):
        return neg(div(a.arg, b))
    if isinstance(b, Neg):
        return neg(div(a, b.arg))
    return Bin("/", a, b)


def power(a: Expr, b: Expr) -> Expr:
    """Return ``a ** b``, simplified (``x**1 -> x``, ``x**0 -> 1``, ``1**x -> 1``).

    Constants are folded only when the float result is finite, so ``9**9**9`` stays symbolic.
    """
    if isinstance(a, Num) and isinstance(b, Num):
        folded = _fold(_BINARY_FOLDERS["**"], a.value, b.value, kind="**")
        if folded is not None:
            return folded
    if _is_num(b, 0.0) or _is_num(a, 1.0):
        return ONE
    if _is_num(b, 1.0):
        return a
    return Bin("**", a, b)


def call(func: str, *args: Expr) -> Expr:
    """Return ``func(*args)``, folded to a constant when every argument is one and it is finite."""
    if all(isinstance(arg, Num) for arg in args):
        folded = _fold(FOLDERS[func], *(arg.value for arg in args), kind=func)
        if folded is not None:
            return folded
    return Call(func, tuple(args))


_BUILDERS: dict[str, Callable[[Expr, Expr], Expr]] = {
    "+": add,
    "-": sub,
    "*": mul,
    "/": div,
    "**": power,
}


# --------------------------------------------------------------------------------------------------
# Derivative rules: d f(u1, ..., uk) = sum_i partial_i(u1, ..., uk) * d u_i
# --------------------------------------------------------------------------------------------------
def _one_minus_square(u: Expr) -> Expr:
    return sub(ONE, power(u, TWO))


#: Partial derivatives of each function with respect to each of its arguments.
DERIVATIVES: dict[str, Callable[..., tuple[Expr, ...]]] = {
    "exp": lambda u: (call("exp", u),),
    "log": lambda u: (div(ONE, u),),
    "log10": lambda u: (div(ONE, mul(Num(math.log(10.0)), u)),),
    "log2": lambda u: (div(ONE, mul(Num(math.log(2.0)), u)),),
    "log1p": lambda u: (div(ONE, add(ONE, u)),),
    "expm1": lambda u: (call("exp", u),),
    "sqrt": lambda u: (div(Num(0.5), call("sqrt", u)),),
    "square": lambda u: (mul(TWO, u),),
    "sin": lambda u: (call("cos", u),),
    "cos": lambda u: (neg(call("sin", u)),),
    "tan": lambda u: (add(ONE, power(call("tan", u), TWO)),),
    "arcsin": lambda u: (div(ONE, call("sqrt", _one_minus_square(u))),),
    "arccos": lambda u: (neg(div(ONE, call("sqrt", _one_minus_square(u)))),),
    "arctan": lambda u: (div(ONE, add(ONE, power(u, TWO))),),
    "sinh": lambda u: (call("cosh", u),),
    "cosh": lambda u: (call("sinh", u),),
    "tanh": lambda u: (_one_minus_square(call("tanh", u)),),
    "sigmoid": lambda u: (mul(call("sigmoid", u), sub(ONE, call("sigmoid", u))),),
    "abs": lambda u: (call("sign", u),),
    "sign": lambda u: (ZERO,),  # piecewise constant; see is_linear_in
    "erf": lambda u: (mul(Num(2.0 / math.sqrt(math.pi)), call("exp", neg(power(u, TWO)))),),
    "arctan2": lambda y, x: (
        div(x, add(power(x, TWO), power(y, TWO))),
        neg(div(y, add(power(x, TWO), power(y, TWO)))),
    ),
    "minimum": lambda u, v: (_step(v, u), _step(u, v)),
    "maximum": lambda u, v: (_step(u, v), _step(v, u)),
    "xlogy": lambda x, y: (call("log", y), div(x, y)),
    "xmul": lambda x, y: (y, x),
}

#: functions whose derivative is infinite at a point where they are finite (``sqrt`` at 0)
_STEEP_FUNCTIONS = frozenset({"sqrt", "arcsin", "arccos"})


def _chain(inner: Expr, outer: Expr) -> Expr:
    """``inner * outer`` of the chain rule (``du * f'(u)``), 0 where ``du`` is 0 even if ``f'(u)``
    is infinite there: ``sqrt(a*x)`` does not move with ``a`` at ``x = 0``, so its derivative is 0,
    not ``0 * inf``."""
    if isinstance(inner, Num):
        return mul(inner, outer)
    return call("xmul", inner, outer)


def _step(u: Expr, v: Expr) -> Expr:
    """1 where ``u > v``, 0 where ``u < v``, 1/2 at a tie: the derivative of ``maximum(u, v)``
    along ``u`` (and of ``minimum(v, u)``)."""
    return mul(Num(0.5), add(ONE, call("sign", sub(u, v))))

#: Functions whose derivative is zero almost everywhere but which are not constant.
_STEP_FUNCTIONS = frozenset({"sign"})


def _diff_bin(node: Bin, dl: Expr, dr: Expr) -> Expr:
    left, right = node.left, node.right
    if node.op == "+":
        return add(dl, dr)
    if node.op == "-":
        return sub(dl, dr)
    if node.op == "*":
        return add(mul(dl, right), mul(left, dr))
    if node.op == "/":
        return sub(div(dl, right), div(mul(left, dr), power(right, TWO)))
    # power: d(l**r) = r*l**(r-1)*dl + l**r*log(l)*dr, where l**r*log(l) is 0 at l = 0 (xlogy)
    slope = mul(right, power(left, sub(right, ONE)))
    steep = not (isinstance(right, Num) and (right.value >= 1.0 or right.value == 0.0))  # l**(r-1) may be inf at l = 0
    base_part = _chain(dl, slope) if steep else mul(slope, dl)
    if _is_num(dr, 0.0):
        return base_part
    constant_base = isinstance(left, Num) and left.value != 0
    exponent_part = mul(mul(node, call("log", left)) if constant_base else call("xlogy", node, left), dr)
    return add(base_part, exponent_part)


def diff(expr: Expr | Formula, name: str) -> Expr:
    """Differentiate a tree with respect to one name.

    Parameters
    ----------
    expr
        Expression tree (or a parsed :class:`~gradfit.formula.Formula`).
    name
        The variable to differentiate by.

    Returns
    -------
    Expr
        The simplified partial derivative; exactly ``Num(0.0)`` when ``expr`` does not depend on
        ``name``.
    """
    memo: dict[Expr, Expr] = {}

    def rec(node: Expr) -> Expr:
        found = memo.get(node)
        if found is not None:
            return found
        if isinstance(node, Num):
            result: Expr = ZERO
        elif isinstance(node, Var):
            result = ONE if node.name == name else ZERO
        elif isinstance(node, Neg):
            result = neg(rec(node.arg))
        elif isinstance(node, Bin):
            result = _diff_bin(node, rec(node.left), rec(node.right))
        elif isinstance(node, Call):
            partials = DERIVATIVES[node.func](*node.args)
            result = ZERO
            steep = node.func in _STEEP_FUNCTIONS
            for partial, arg in zip(partials, node.args):
                inner = rec(arg)
                result = add(result, _chain(inner, partial) if steep else mul(partial, inner))
        else:
            raise TypeError(f"not an expression node: {node!r}")
        memo[node] = result
        return result

    return rec(_as_expr(expr))


def gradient(expr: Expr | Formula, names: Sequence[str]) -> list[Expr]:
    """Return the partial derivatives of ``expr`` with respect to each of ``names``, in order.

    Parameters
    ----------
    expr
        Expression tree.
    names
        Variables to differentiate by.

    Returns
    -------
    list of Expr
        ``[diff(expr, n) for n in names]``.
    """
    return [diff(expr, name) for name in names]


# --------------------------------------------------------------------------------------------------
# Rebuilding: simplification and substitution
# --------------------------------------------------------------------------------------------------
def _rebuild(expr: Expr, leaf: Callable[[Var], Expr]) -> Expr:
    memo: dict[Expr, Expr] = {}

    def rec(node: Expr) -> Expr:
        found = memo.get(node)
        if found is not None:
            return found
        if isinstance(node, Num):
            result: Expr = node
        elif isinstance(node, Var):
            result = leaf(node)
        elif isinstance(node, Neg):
            result = neg(rec(node.arg))
        elif isinstance(node, Bin):
            result = _BUILDERS[node.op](rec(node.left), rec(node.right))
        elif isinstance(node, Call):
            result = call(node.func, *(rec(arg) for arg in node.args))
        else:
            raise TypeError(f"not an expression node: {node!r}")
        memo[node] = result
        return result

    return rec(expr)


def simplify(expr: Expr | Formula) -> Expr:
    """Simplify a tree with safe identities and overflow-proof constant folding.

    Applies ``x+0``, ``x*1``, ``x*0``, ``x**1``, ``x**0``, ``--x``, ``x-x`` and folds constant
    sub-expressions only when the float result is finite (``9**9**9`` is left alone, instantly).

    Parameters
    ----------
    expr
        Expression tree.

    Returns
    -------
    Expr
        An equivalent tree (equal values wherever the original is finite).
    """
    current = _as_expr(expr)
    for _ in range(8):
        simpler = _rebuild(current, lambda var: var)
        if simpler == current:
            break
        current = simpler
    return current


def substitute(expr: Expr | Formula, values: Mapping[str, Expr | float]) -> Expr:
    """Replace names by expressions or numbers, then simplify.

    Parameters
    ----------
    expr
        Expression tree.
    values
        Name -> replacement (an :class:`Expr` or a finite number).

    Returns
    -------
    Expr
        The substituted, simplified tree.
    """
    replacement = {
        name: value if isinstance(value, Expr) else Num(float(value))
        for name, value in values.items()
    }
    return _rebuild(_as_expr(expr), lambda var: replacement.get(var.name, var))


# --------------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------------
_ADD, _MUL, _UNARY, _POW, _ATOM = 1, 2, 3, 4, 5
_PRECEDENCE = {"+": _ADD, "-": _ADD, "*": _MUL, "/": _MUL, "**": _POW}
_SPACED = {"+": " + ", "-": " - ", "*": "*", "/": "/", "**": "**"}


def _number_text(value: float) -> str:
    if value == math.pi:
        return "pi"
    if value == math.e:
        return "e"
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _text(node: Expr) -> tuple[str, int]:
    if isinstance(node, Num):
        if math.copysign(1.0, node.value) < 0:  # -0.0 too: it prints as "-0"
            return "-" + _number_text(-node.value), _UNARY
        return _number_text(node.value), _ATOM
    if isinstance(node, Var):
        return node.name, _ATOM
    if isinstance(node, Call):
        return f"{node.func}({', '.join(_text(arg)[0] for arg in node.args)})", _ATOM
    if isinstance(node, Neg):
        return "-" + _wrap(_text(node.arg), _UNARY), _UNARY
    if isinstance(node, Bin):
        level = _PRECEDENCE[node.op]
        if node.op == "**":
            left = _wrap(_text(node.left), _ATOM)
            right = _wrap(_text(node.right), _UNARY)
        else:
            left = _wrap(_text(node.left), level)
            right = _wrap(_text(node.right), level + 1)
        return f"{left}{_SPACED[node.op]}{right}", level
    raise TypeError(f"not an expression node: {node!r}")


def _wrap(text_and_level: tuple[str, int], needed: int) -> str:
    text, level = text_and_level
    return text if level >= needed else f"({text})"


def to_text(expr: Expr | Formula) -> str:
    """Print a tree as formula text with the fewest parentheses that keep its structure.

    Parameters
    ----------
    expr
        Expression tree.

    Returns
    -------
    str
        Text such that ``parse(to_text(expr)).tree`` has the same structure (and so the same values)
        as ``expr``; ``pi`` and ``e`` are printed by name.
    """
    return _text(_as_expr(expr))[0]


# --------------------------------------------------------------------------------------------------
# Linearity
# --------------------------------------------------------------------------------------------------
def is_linear_in(expr: Expr | Formula, params: Collection[str]) -> bool:
    """Tell whether an expression is linear (affine) in the given parameters.

    True when no parameter appears in any partial derivative with respect to the parameters (and
    none sits inside a piecewise-constant function such as ``sign``). ``w2*x**2 + w1*x + b`` is
    linear in ``w2, w1, b``; ``a*exp(-k*t)`` is not linear in ``a, k``.

    Parameters
    ----------
    expr
        Expression tree.
    params
        Parameter names; other names are treated as known inputs.

    Returns
    -------
    bool
    """
    tree = _as_expr(expr)
    wanted = set(params)
    for node in walk(tree):
        if isinstance(node, Call) and _piecewise_constant_in(node, wanted & set(free_names(node))):
            return False
    for name in wanted:
        if wanted & set(free_names(diff(tree, name))):
            return False
    return True


def _piecewise_constant_in(node: Call, names: set[str]) -> bool:
    """A call that depends on one of ``names`` with a derivative that is zero almost everywhere:
    ``sign(a)``, or ``arctan2(a, 0)`` (a step of height π), whose derivatives simplify to 0."""
    if not names:
        return False
    return node.func in _STEP_FUNCTIONS or any(_is_zero(diff(node, name)) for name in names)


def _is_zero(node: Expr) -> bool:
    return isinstance(node, Num) and node.value == 0.0  # -0.0 too


def linear_design(expr: Expr | Formula, params: Sequence[str]) -> tuple[Expr, list[Expr]]:
    """Split a linear model into an offset and one design column per parameter.

    Parameters
    ----------
    expr
        Expression tree, linear in ``params`` (see :func:`is_linear_in`).
    params
        Parameter names, in the order wanted for the columns.

    Returns
    -------
    offset : Expr
        ``expr`` with every parameter set to 0.
    columns : list of Expr
        ``d expr / d p`` for each parameter; ``expr == offset + sum(p * column)``.

    Raises
    ------
    ModelError
        If ``expr`` is not linear in ``params``.
    """
    tree = _as_expr(expr)
    if not is_linear_in(tree, params):
        raise ModelError(
            f"formula {to_text(tree)!r} is not linear in {', '.join(params)};"
            " use a nonlinear (least-squares or gradient) solver"
        )
    columns = gradient(tree, params)
    offset = substitute(tree, {name: ZERO for name in params})
    guard = _lost_domain(tree, [offset, *columns], set(params))
    if guard is not None:  # 0*guard, unsimplified: NaN or inf where the model as written is undefined
        offset = Bin("+", offset, Bin("*", ZERO, guard))
    return offset, columns


#: functions that are finite wherever their arguments are
_TOTAL_FUNCTIONS = frozenset({"sin", "cos", "tanh", "sigmoid", "abs", "sign", "erf", "arctan", "arctan2", "minimum", "maximum", "square"})


def _lost_domain(tree: Expr, kept: Sequence[Expr], params: Collection[str]) -> Expr | None:
    """The sum of the parameter-free terms of ``tree`` that can be NaN or inf (a log, a square root,
    a division, a power, an exp) and that simplifying left out of the ``kept`` trees (``0*log(x)``,
    ``log(x) - log(x)``), or None. Without them the design would be finite where the model is not."""
    present = {node for root in kept for node in walk(root)}
    lost: list[Expr] = []

    def visit(node: Expr) -> None:
        if node in present:
            return
        partial = (isinstance(node, Call) and node.func not in _TOTAL_FUNCTIONS) or (isinstance(node, Bin) and node.op in ("/", "**"))
        if partial and not params & set(free_names(node)):
            lost.append(node)  # its own sub-terms are in it
            return
        for child in children(node):
            visit(child)

    visit(tree)
    if not lost:
        return None
    total = lost[0]
    for term in lost[1:]:
        total = Bin("+", total, term)
    return total

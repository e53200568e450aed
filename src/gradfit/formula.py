"""Parse formula strings into a small, safe expression tree.

A formula is a Python-syntax arithmetic expression such as ``"a * exp(-k * t) + c"``. It is read
with :func:`ast.parse` in ``"eval"`` mode and only whitelisted node kinds are converted into our
own frozen tree (:class:`Num`, :class:`Var`, :class:`Neg`, :class:`Bin`, :class:`Call`); anything
else raises :class:`~gradfit.errors.FormulaError` with the 0-based character offset of the
problem. User text is never passed to ``eval``, ``exec`` or ``compile``.

This module imports only the standard library (no numpy, no torch), so the command line can check a
formula before the heavy imports happen.
"""

from __future__ import annotations

import ast
import difflib
import keyword
import math
import re
import unicodedata
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from gradfit.errors import FormulaError

__all__ = [
    "Expr",
    "Num",
    "Var",
    "Neg",
    "Bin",
    "Call",
    "Formula",
    "FUNCTIONS",
    "ALIASES",
    "CONSTANTS",
    "BINARY_OPS",
    "MAX_LENGTH",
    "MAX_DEPTH",
    "parse",
    "children",
    "free_names",
    "walk",
    "depth",
]

#: Longest formula text accepted, in characters.
MAX_LENGTH = 10_000
#: Deepest expression tree accepted (a leaf has depth 1). Keeps every recursive algorithm safe.
MAX_DEPTH = 100

#: Whitelisted functions and their number of arguments.
FUNCTIONS: dict[str, int] = {
    "exp": 1,
    "log": 1,
    "log10": 1,
    "log2": 1,
    "log1p": 1,
    "expm1": 1,
    "sqrt": 1,
    "square": 1,
    "sin": 1,
    "cos": 1,
    "tan": 1,
    "arcsin": 1,
    "arccos": 1,
    "arctan": 1,
    "sinh": 1,
    "cosh": 1,
    "tanh": 1,
    "sigmoid": 1,
    "abs": 1,
    "sign": 1,
    "erf": 1,
    "arctan2": 2,
    "minimum": 2,
    "maximum": 2,
}
#: Functions that appear only in derivative trees, never in a formula: ``xlogy(a, b) = a·log(b)``,
#: 0 where ``a`` is 0 (the derivative of ``b**p`` along ``p``, which is 0 at ``b = 0``), and
#: ``xmul(a, b) = a·b``, 0 where ``a`` is 0 (the chain rule ``du·f'(u)`` where ``f'`` is infinite but
#: ``u`` does not move: ``sqrt(a*x)`` along ``a`` at ``x = 0``).
DERIVATIVE_FUNCTIONS: dict[str, int] = {"xlogy": 2, "xmul": 2}
#: Arity of every function a tree may call.
ARITIES: dict[str, int] = {**FUNCTIONS, **DERIVATIVE_FUNCTIONS}
#: Accepted alternative spellings, mapped to the canonical name. ``pow(a, b)`` becomes ``a ** b``.
ALIASES: dict[str, str] = {
    "ln": "log",
    "asin": "arcsin",
    "acos": "arccos",
    "atan": "arctan",
    "atan2": "arctan2",
    "pow": "**",
}
#: Named constants.
CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
#: Binary operators of the tree.
BINARY_OPS = ("+", "-", "*", "/", "**")


# --------------------------------------------------------------------------------------------------
# Tree
# --------------------------------------------------------------------------------------------------
class Expr:
    """Base class of expression-tree nodes.

    Nodes are frozen dataclasses: structurally equal trees compare equal and hash equal (the hash is
    computed once per node), which is what common-subexpression elimination relies on.
    """

    __slots__ = ()


def _set_hash(node: Expr, key: tuple) -> None:
    object.__setattr__(node, "_hash", hash(key))


@dataclass(frozen=True, eq=False, repr=True)
class Num(Expr):
    """A finite floating-point constant.

    ``-0.0`` and ``0.0`` are different constants (``arctan2(0.0, -1) = pi`` but
    ``arctan2(-0.0, -1) = -pi``; ``1/-0.0 = -inf``), so they neither compare nor hash equal: a
    shared sub-expression must compute the same values.
    """

    value: float
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        value = float(self.value)
        if not math.isfinite(value):
            raise ValueError(f"Num needs a finite value, got {value!r}")
        object.__setattr__(self, "value", value)
        _set_hash(self, (Num, value, math.copysign(1.0, value)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Num):
            return NotImplemented
        return self.value == other.value and (
            math.copysign(1.0, self.value) == math.copysign(1.0, other.value)
        )

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, eq=True, repr=True)
class Var(Expr):
    """A free name: a data input or a parameter (the caller decides which)."""

    name: str
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set_hash(self, (Var, self.name))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, eq=True, repr=True)
class Neg(Expr):
    """Unary minus."""

    arg: Expr
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _set_hash(self, (Neg, self.arg))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, eq=True, repr=True)
class Bin(Expr):
    """Binary operation; ``op`` is one of ``+ - * / **``."""

    op: str
    left: Expr
    right: Expr
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in BINARY_OPS:
            raise ValueError(f"unknown binary operator {self.op!r}")
        _set_hash(self, (Bin, self.op, self.left, self.right))

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, eq=True, repr=True)
class Call(Expr):
    """Call of a whitelisted function (canonical name, see :data:`FUNCTIONS`)."""

    func: str
    args: tuple[Expr, ...]
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if ARITIES.get(self.func) != len(self.args):
            raise ValueError(f"bad function call {self.func!r} with {len(self.args)} argument(s)")
        object.__setattr__(self, "args", tuple(self.args))
        _set_hash(self, (Call, self.func, self.args))

    def __hash__(self) -> int:
        return self._hash


def children(node: Expr) -> tuple[Expr, ...]:
    """Return the direct sub-expressions of ``node``."""
    if isinstance(node, Neg):
        return (node.arg,)
    if isinstance(node, Bin):
        return (node.left, node.right)
    if isinstance(node, Call):
        return node.args
    return ()


def walk(node: Expr) -> Iterator[Expr]:
    """Yield every node of the tree in pre-order (left to right).

    Parameters
    ----------
    node
        Root of the tree.

    Yields
    ------
    Expr
        The nodes, root first.
    """
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(children(current)))


def free_names(node: Expr) -> tuple[str, ...]:
    """Return the free names of a tree in first-appearance (left-to-right) order.

    Parameters
    ----------
    node
        Root of the tree.

    Returns
    -------
    tuple of str
        Distinct variable names.
    """
    seen: dict[str, None] = {}
    for sub in walk(node):
        if isinstance(sub, Var):
            seen.setdefault(sub.name, None)
    return tuple(seen)


def depth(node: Expr) -> int:
    """Return the depth of a tree (a leaf has depth 1).

    Parameters
    ----------
    node
        Root of the tree.

    Returns
    -------
    int
        Length of the longest root-to-leaf path, counted in nodes.
    """
    best = 0
    stack = [(node, 1)]
    while stack:
        current, level = stack.pop()
        best = max(best, level)
        stack.extend((child, level + 1) for child in children(current))
    return best


@dataclass(frozen=True)
class Formula:
    """A parsed formula.

    Attributes
    ----------
    text
        The formula as written.
    tree
        Its expression tree.
    names
        Free names in first-appearance order; each becomes a data input or a parameter.
    """

    text: str
    tree: Expr
    names: tuple[str, ...]
    constants: tuple[str, ...] = ()

    def parameters(self, inputs: Collection[str]) -> tuple[str, ...]:
        """Return the names that are not data inputs, in first-appearance order.

        Parameters
        ----------
        inputs
            Names of the data columns.

        Returns
        -------
        tuple of str
            The parameter names.
        """
        inputs = set(inputs)
        return tuple(name for name in self.names if name not in inputs)

    def __str__(self) -> str:
        return self.text


# --------------------------------------------------------------------------------------------------
# Text checks before the parser sees anything
# --------------------------------------------------------------------------------------------------
_LOOKALIKES = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",  # en dash
    "\u2014": "-",  # em dash
    "\u00d7": "*",  # multiplication sign
    "\u22c5": "*",  # dot operator
    "\u00b7": "*",  # middle dot
    "\u2217": "*",  # asterisk operator
    "\u00f7": "/",  # division sign
    "\u2044": "/",  # fraction slash
    "\u00b2": "**2",
    "\u00b3": "**3",
    "\u03c0": "pi",
    "\u00a0": " ",  # no-break space
    "\u0430": "a",  # Cyrillic look-alikes
    "\u0435": "e",
    "\u043e": "o",
    "\u0440": "p",
    "\u0441": "c",
    "\u0445": "x",
    "\u0443": "y",
    "\u0456": "i",
    "\u0410": "A",
    "\u0412": "B",
    "\u0415": "E",
    "\u041a": "K",
    "\u041c": "M",
    "\u041d": "H",
    "\u041e": "O",
    "\u0420": "P",
    "\u0421": "C",
    "\u0422": "T",
    "\u0425": "X",
    "\u03bf": "o",  # Greek omicron
    "\u039f": "O",
    "\u0391": "A",
    "\u0392": "B",
    "\u0395": "E",
}


def _ascii_suggestion(char: str) -> str | None:
    if char in _LOOKALIKES:
        return _LOOKALIKES[char]
    folded = unicodedata.normalize("NFKC", char)
    if folded.isascii() and folded.strip():
        return folded
    return None


def _check_characters(text: str) -> None:
    for position, char in enumerate(text):
        if char == "\0":
            raise FormulaError("formula contains a NUL byte; remove it", text, position)
        if not char.isascii():
            name = unicodedata.name(char, f"U+{ord(char):04X}")
            hint = _ascii_suggestion(char)
            fix = f"type '{hint}' instead" if hint else "formulas use plain ASCII only"
            raise FormulaError(
                f"non-ASCII character {char!r} ({name}) in formula; {fix}", text, position
            )
        if char == "#":
            raise FormulaError(
                "'#' is not allowed in a formula (Python would read the rest of the line as a comment); remove it",
                text,
                position,
            )
        if char < " " and char not in "\t\n\r":
            raise FormulaError(
                f"control character {char!r} in formula; remove it", text, position
            )


# --------------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------------
class _Source:
    """Maps ``ast`` (line, column) pairs of the stripped text to offsets in the original text."""

    def __init__(self, text: str, start: int) -> None:
        self.text = text
        self.start = start
        self.line_starts = [start]
        for match in re.finditer("\n", text[start:]):
            self.line_starts.append(start + match.end())

    def offset(self, lineno: int | None, col: int | None) -> int:
        if lineno is None or col is None:
            return self.start
        line = min(max(lineno, 1), len(self.line_starts)) - 1
        return min(self.line_starts[line] + max(col, 0), len(self.text))

    def start_of(self, node: ast.AST) -> int:
        return self.offset(getattr(node, "lineno", None), getattr(node, "col_offset", None))

    def end_of(self, node: ast.AST) -> int:
        return self.offset(getattr(node, "end_lineno", None), getattr(node, "end_col_offset", None))

    def snippet(self, node: ast.AST, limit: int = 40) -> str:
        piece = " ".join(self.text[self.start_of(node) : self.end_of(node)].split())
        return piece if len(piece) <= limit else piece[: limit - 3] + "..."

    def operator_offset(self, left: ast.AST, right: ast.AST) -> int:
        """Offset of the operator token between two operands (skips blanks and ')')."""
        position = self.end_of(left)
        stop = self.start_of(right)
        while position < stop and self.text[position] in " \t\r\n)":
            position += 1
        return position


# --------------------------------------------------------------------------------------------------
# Conversion of whitelisted ast nodes
# --------------------------------------------------------------------------------------------------
_ALLOWED_NAMES_HINT = "only numbers, names, + - * / ** and calls of whitelisted functions"

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_BAD_BINOPS = {
    ast.BitXor: "'^' is not a power operator; write a**b",
    ast.Mod: "'%' (modulo) is not supported; formulas must be differentiable",
    ast.FloorDiv: "'//' (floor division) is not supported; use '/'",
    ast.MatMult: "'@' (matrix product) is not supported; use '*'",
    ast.BitAnd: "'&' is not supported; use + - * / **",
    ast.BitOr: "'|' is not supported; use + - * / **",
    ast.LShift: "'<<' is not supported; use + - * / **",
    ast.RShift: "'>>' is not supported; use + - * / **",
}
_BAD_NODES = {
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Slice: "slicing",
    ast.Lambda: "a lambda",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.Compare: "a comparison",
    ast.BoolOp: "'and'/'or'",
    ast.IfExp: "a conditional expression",
    ast.NamedExpr: "assignment with ':='",
    ast.Starred: "'*' unpacking",
    ast.Tuple: "a tuple (expressions separated by commas)",
    ast.List: "a list",
    ast.Set: "a set",
    ast.Dict: "a dict",
    ast.JoinedStr: "an f-string",
    ast.FormattedValue: "an f-string",
    ast.Await: "'await'",
    ast.Yield: "'yield'",
    ast.YieldFrom: "'yield from'",
}


class _Converter:
    """Turns a whitelisted :mod:`ast` tree into :class:`Expr` nodes."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.constants: dict[str, None] = {}  # the constants the text names, in order

    def fail(self, message: str, position: int) -> FormulaError:
        return FormulaError(message, self.source.text, position)

    def convert(self, node: ast.AST, level: int = 1) -> Expr:
        if level > MAX_DEPTH:
            raise self.fail(
                f"formula nests too deeply (more than {MAX_DEPTH} levels: a sum or product of more than {MAX_DEPTH} "
                "terms counts as that many); split or simplify it",
                self.source.start_of(node),
            )
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node, level)
        if isinstance(node, ast.BinOp):
            return self.binary(node, level)
        if isinstance(node, ast.Call):
            return self.call(node, level)
        what = _BAD_NODES.get(type(node), f"'{type(node).__name__}' syntax")
        snippet = self.source.snippet(node)
        raise self.fail(
            f"{what} ({snippet}) is not allowed in a formula; use {_ALLOWED_NAMES_HINT}",
            self.source.start_of(node),
        )

    def constant(self, node: ast.Constant) -> Num:
        value = node.value
        position = self.source.start_of(node)
        if isinstance(value, bool) or value is None or value is Ellipsis:
            raise self.fail(f"{value!r} is not a number; use a numeric literal", position)
        if isinstance(value, complex):
            raise self.fail("complex numbers are not supported; use real numbers", position)
        if isinstance(value, (str, bytes)):
            raise self.fail("strings are not allowed in a formula; use numbers and names", position)
        if not isinstance(value, (int, float)):
            raise self.fail(f"unsupported literal {value!r}; use a number", position)
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise self.fail(
                f"number {self.source.snippet(node)} is too large for a float; use a smaller value",
                position,
            )
        if number == 0.0 and re.match(r"\d*\.?\d*", self.source.snippet(node).replace("_", "")).group().strip("0.") != "":
            raise self.fail(
                f"number {self.source.snippet(node)} is too small for a float (it would be 0); use a larger value, or rescale the data",
                position,
            )
        return Num(number)

    def name(self, node: ast.Name) -> Expr:
        name = node.id
        position = self.source.start_of(node)
        if name in CONSTANTS:
            self.constants[name] = None
            return Num(CONSTANTS[name])
        if name in FUNCTIONS or name in ALIASES:
            raise self.fail(
                f"'{name}' is a function, not a value; call it as {name}(...)"
                " or rename the variable",
                position,
            )
        return Var(name)

    def unary(self, node: ast.UnaryOp, level: int) -> Expr:
        if isinstance(node.op, ast.UAdd):
            return self.convert(node.operand, level + 1)
        if isinstance(node.op, ast.USub):
            operand = self.convert(node.operand, level + 1)
            if isinstance(operand, Num):
                return Num(-operand.value)
            return Neg(operand)
        symbol = "not" if isinstance(node.op, ast.Not) else "~"
        raise self.fail(
            f"unary '{symbol}' is not allowed; only unary + and - are", self.source.start_of(node)
        )

    def binary(self, node: ast.BinOp, level: int) -> Expr:
        op = _BINOPS.get(type(node.op))
        if op is None:
            message = _BAD_BINOPS.get(type(node.op), "unsupported operator; use + - * / **")
            raise self.fail(message, self.source.operator_offset(node.left, node.right))
        left = self.convert(node.left, level + 1)
        right = self.convert(node.right, level + 1)
        return Bin(op, left, right)

    def call(self, node: ast.Call, level: int) -> Expr:
        func = node.func
        if not isinstance(func, ast.Name):
            raise self.fail(
                f"only named functions can be called, not '{self.source.snippet(func)}';"
                f" allowed: {', '.join(sorted(FUNCTIONS))}",
                self.source.start_of(func),
            )
        name = func.id
        position = self.source.start_of(func)
        canonical = ALIASES.get(name, name)
        if name in CONSTANTS:
            raise self.fail(f"'{name}' is a constant, not a function; write {name}*(...)", position)
        if canonical not in FUNCTIONS and canonical != "**":
            raise self.fail(_unknown_function_message(name), position)
        if node.keywords:
            keyword = node.keywords[0]
            raise self.fail(
                f"keyword arguments are not allowed in {name}(...); pass values by position",
                self.source.start_of(keyword),
            )
        arity = 2 if canonical == "**" else FUNCTIONS[canonical]
        if len(node.args) != arity:
            plural = "argument" if arity == 1 else "arguments"
            raise self.fail(
                f"{name}() takes {arity} {plural}, got {len(node.args)}; fix the call", position
            )
        args = tuple(self.convert(arg, level + 1) for arg in node.args)
        if canonical == "**":
            return Bin("**", args[0], args[1])
        return Call(canonical, args)


#: names users reach for that gradfit spells otherwise
_FUNCTION_SPELLINGS = {"min": "minimum", "max": "maximum", "power": "**"}


def _unknown_function_message(name: str) -> str:
    known = sorted(set(FUNCTIONS) | set(ALIASES))
    spelt = _FUNCTION_SPELLINGS.get(name)
    close = [spelt] if spelt in known else difflib.get_close_matches(name, known, n=1)
    allowed = ", ".join(sorted(FUNCTIONS))
    if spelt == "**":
        return f"unknown function '{name}'; write powers as x**y"
    if close:
        return f"unknown function '{name}'; did you mean '{close[0]}'? (allowed: {allowed})"
    return f"unknown function '{name}'; to multiply, write {name}*(...) (the functions are: {allowed})"


# --------------------------------------------------------------------------------------------------
# Syntax errors
# --------------------------------------------------------------------------------------------------
def _syntax_hint(message: str) -> str:
    lowered = message.lower()
    if "decimal literal" in lowered:
        return "write multiplication explicitly, e.g. 2*x"
    if "never closed" in lowered or "unmatched" in lowered or "does not match" in lowered:
        return "balance the parentheses"
    if "parenthes" in lowered:
        return "use fewer nested parentheses"
    if "comma" in lowered:
        return "put an operator between the terms, e.g. x*y"
    return "check the operators and parentheses near there"


def _syntax_error(text: str, source: _Source, error: SyntaxError) -> FormulaError:
    message = (error.msg or "invalid syntax").split(" (")[0]
    if "Exceeds the limit" in message:
        digits = max(re.finditer(r"\d+", text), key=lambda m: len(m.group()), default=None)
        position = digits.start() if digits else 0
        return FormulaError(
            "integer literal has too many digits; write it in scientific notation, e.g. 1e30",
            text,
            position,
        )
    if error.offset is None or error.offset < 1:
        position = len(text.rstrip())
    else:
        position = source.offset(error.lineno, error.offset - 1)
    reserved = next((m for m in re.finditer(r"[A-Za-z_]\w*", text) if keyword.iskeyword(m.group())), None)
    if reserved is not None:  # e.g. a decay rate called lambda
        word = reserved.group()
        return FormulaError(
            f"'{word}' is a reserved word (formulas follow Python's syntax) and cannot name a parameter or "
            f"column; rename it, e.g. {_renamed(word)}",
            text,
            reserved.start(),
        )
    hint = _syntax_hint(message)
    if "\n" in text.strip() and text.count("(") == text.count(")"):
        hint = "a formula on several lines needs parentheses around it, e.g. '(a*x\\n + b)', or write it on one line"
    return FormulaError(f"invalid formula syntax: {message}; {hint}", text, position)


def _renamed(word: str) -> str:
    """Suggested names for a reserved word: ``'lam' or 'lambda_'`` (only the second for short words)."""
    short = word[:3]
    return f"'{short}' or '{word}_'" if short != word and not keyword.iskeyword(short) else f"'{word}_'"


def constant_name_note(name: str) -> str:
    """Why ``name`` is not a parameter when it is one of :data:`CONSTANTS` (else an empty text)."""
    if name not in CONSTANTS:
        return ""
    return f" ('{name}' in a formula is the constant {CONSTANTS[name]:.6g}: call the parameter otherwise, e.g. '{name}0')"


def _parse_ast(text: str, source: _Source) -> ast.expr:
    body = text[source.start :].replace("\r", " ")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(body, mode="eval").body
    except SyntaxError as error:
        raise _syntax_error(text, source, error) from None
    except (RecursionError, MemoryError, ValueError, OverflowError):
        raise FormulaError(
            "formula is too deeply nested for the parser; split or simplify it", text, source.start
        ) from None


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------
def parse(text: str) -> Formula:
    """Parse a formula string into a :class:`Formula`.

    Parameters
    ----------
    text
        An arithmetic expression in Python syntax, e.g. ``"w * x + b"``. Allowed: numbers, names,
        unary ``+``/``-``, ``+ - * / **``, the functions in :data:`FUNCTIONS` (and :data:`ALIASES`),
        and the constants ``pi`` and ``e``.

    Returns
    -------
    Formula
        The text, its tree and its free names in first-appearance order.

    Raises
    ------
    FormulaError
        If the text is not a valid formula; ``position`` is the 0-based offset of the problem.
    """
    if not isinstance(text, str):
        raise FormulaError(f"formula must be a string, got {type(text).__name__}; pass text")
    if len(text) > MAX_LENGTH:
        raise FormulaError(
            f"formula is {len(text)} characters long (limit {MAX_LENGTH}); shorten it",
            text,  # the whole text: ``position`` is an offset into ``formula``
            MAX_LENGTH,
        )
    _check_characters(text)
    stripped = text.lstrip()
    if not stripped:
        raise FormulaError("formula is empty; write an expression such as 'w * x + b'", text, 0)
    source = _Source(text, len(text) - len(stripped))
    converter = _Converter(source)
    tree = converter.convert(_parse_ast(text, source))
    return Formula(text=text, tree=tree, names=free_names(tree), constants=tuple(converter.constants))

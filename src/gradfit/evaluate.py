"""Evaluate expression trees: compiled programs for torch and numpy, and a numpy reference.

:func:`compile_torch` turns several trees into one straight-line program over "slots": every
structurally distinct sub-expression gets one slot and is computed once per call, so a model and its
symbolic Jacobian columns, which share most of their sub-expressions, cost one pass::

    tree = parse("a * exp(-k * t) + c").tree
    program = compile_torch([tree, *gradient(tree, ["a", "k", "c"])])
    f, df_da, df_dk, df_dc = program({"t": t, "a": a, "k": k, "c": c})   # a, k, c: (K, 1); t: (n,)

:func:`compile_numpy` builds the same program over numpy arrays, for evaluations so small that
torch's per-operation cost would dominate (single least-squares fits); its ``stacked`` method fills
the model and its Jacobian columns into one array. Constant sub-expressions are folded once, at
compile time; at call time a program runs only the array operations. :func:`evaluate_numpy` is the
plain recursive reference evaluator the tests compare both programs with. Neither this module's
import nor the numpy functions import torch.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from gradfit.errors import ModelError
from gradfit.formula import Bin, Call, Expr, Formula, Neg, Num, Var, children, free_names

__all__ = ["NUMPY_FUNCTIONS", "CompiledExpressions", "NumpyProgram", "compile_numpy", "compile_torch", "evaluate_numpy"]

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _xlogy(x: Any, y: Any) -> Any:
    """``x * log(y)``, and 0 where ``x`` is 0 (unless ``y`` is NaN), as ``torch.xlogy``: the
    derivative of ``b**p`` along ``p`` is ``xlogy(b**p, b)``, 0 at ``b = 0`` (not used in formulas:
    derivative trees only)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        product = np.multiply(x, np.log(y))
    return np.where((np.asarray(x) == 0) & ~np.isnan(y), 0.0, product)

def _xmul(x: Any, y: Any) -> Any:
    """``x * y``, and 0 where ``x`` is 0 (unless ``y`` is NaN): the chain rule ``du * f'(u)`` where
    ``u`` does not move (derivative trees only)."""
    with np.errstate(invalid="ignore", over="ignore"):
        product = np.multiply(x, y)
    return np.where((np.asarray(x) == 0) & ~np.isnan(y), 0.0, product)


#: Reference implementation of every whitelisted function with numpy.
NUMPY_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "exp": np.exp,
    "log": np.log,
    "log10": np.log10,
    "log2": np.log2,
    "log1p": np.log1p,
    "expm1": np.expm1,
    "sqrt": np.sqrt,
    "square": np.square,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "arcsin": np.arcsin,
    "arccos": np.arccos,
    "arctan": np.arctan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "abs": np.abs,
    "sign": np.sign,
    "erf": _erf,
    "arctan2": np.arctan2,
    "minimum": np.minimum,
    "maximum": np.maximum,
    "xlogy": _xlogy,
    "xmul": _xmul,
}

_BINARY = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "**": operator.pow,
}

_TORCH_NAMES = {
    "exp": "exp",
    "log": "log",
    "log10": "log10",
    "log2": "log2",
    "log1p": "log1p",
    "expm1": "expm1",
    "sqrt": "sqrt",
    "square": "square",
    "sin": "sin",
    "cos": "cos",
    "tan": "tan",
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "sinh": "sinh",
    "cosh": "cosh",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "abs": "abs",
    "sign": "sign",
    "erf": "erf",
    "arctan2": "atan2",
    "minimum": "minimum",
    "maximum": "maximum",
    "xlogy": "xlogy",
}


def _as_expr(expr: Expr | Formula) -> Expr:
    return expr.tree if isinstance(expr, Formula) else expr


def _missing(name: str, env: Mapping[str, Any]) -> ModelError:
    have = ", ".join(sorted(env)) or "nothing"
    return ModelError(f"no value for '{name}' (given: {have}); pass a value for every name")


# --------------------------------------------------------------------------------------------------
# numpy reference
# --------------------------------------------------------------------------------------------------
def evaluate_numpy(expr: Expr | Formula, env: Mapping[str, Any]) -> np.ndarray:
    """Evaluate a tree with numpy in float64 (the reference evaluator).

    Parameters
    ----------
    expr
        Expression tree.
    env
        Name -> value (array-like or number); values broadcast like numpy arrays.

    Returns
    -------
    numpy.ndarray
        The value, float64; IEEE results (``inf``/``nan``) where the math is undefined, no warnings.

    Raises
    ------
    ModelError
        If a name of the tree has no value in ``env``.
    """
    memo: dict[Expr, np.ndarray] = {}

    def rec(node: Expr) -> np.ndarray:
        found = memo.get(node)
        if found is not None:
            return found
        if isinstance(node, Num):
            result = np.float64(node.value)
        elif isinstance(node, Var):
            if node.name not in env:
                raise _missing(node.name, env)
            result = np.asarray(env[node.name], dtype=np.float64)
        elif isinstance(node, Neg):
            result = -rec(node.arg)
        elif isinstance(node, Bin):
            result = _BINARY[node.op](rec(node.left), rec(node.right))
        elif isinstance(node, Call):
            result = NUMPY_FUNCTIONS[node.func](*(rec(arg) for arg in node.args))
        else:
            raise TypeError(f"not an expression node: {node!r}")
        memo[node] = result
        return result

    with np.errstate(all="ignore"):
        return np.asarray(rec(_as_expr(expr)), dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# compiled programs: one builder, two backends (torch and numpy)
# --------------------------------------------------------------------------------------------------
Resolver = Callable[[str, tuple[bool, ...]], Callable[..., Any]]


class _Builder:
    """Assigns one slot per distinct sub-expression and records the ops in topological order.

    ``resolve(name, constant_mask)`` gives the backend's function for an operation (``"neg"``, a
    binary operator or a whitelisted function), knowing which arguments are Python-float constants.
    """

    def __init__(self, resolve: Resolver) -> None:
        self.resolve = resolve
        self.slot_of: dict[Expr, int] = {}
        self.constants: dict[int, float] = {}
        self.inputs: dict[str, int] = {}
        self.ops: list[tuple[Callable[..., Any], tuple[int, ...], int]] = []
        self.count = 0

    def new_slot(self) -> int:
        self.count += 1
        return self.count - 1

    def constant(self, value: float) -> int:
        slot = self.new_slot()
        self.constants[slot] = float(value)
        return slot

    def visit(self, root: Expr) -> int:
        """Return the slot of ``root``, first giving slots to all its sub-expressions.

        The walk uses an explicit stack, not recursion: simplified derivative trees can be a few
        times deeper than the formula they come from, deeper than Python's recursion limit allows.
        """
        stack: list[tuple[Expr, bool]] = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if node in self.slot_of:
                continue
            if isinstance(node, (Num, Var)):
                self.slot_of[node] = self.leaf(node)
            elif ready:  # every child has its slot
                self.slot_of[node] = self.operation(node)
            else:
                stack.append((node, True))
                stack.extend((child, False) for child in reversed(children(node)))
        return self.slot_of[root]

    def leaf(self, node: Num | Var) -> int:
        if isinstance(node, Num):
            return self.constant(node.value)
        slot = self.inputs.get(node.name)
        if slot is None:
            slot = self.inputs[node.name] = self.new_slot()
        return slot

    def operation(self, node: Expr) -> int:
        if isinstance(node, Neg):
            name, args = "neg", (node.arg,)
        elif isinstance(node, Bin):
            name, args = node.op, (node.left, node.right)
        elif isinstance(node, Call):
            name, args = node.func, node.args
        else:
            raise TypeError(f"not an expression node: {node!r}")
        arg_slots = tuple(self.slot_of[arg] for arg in args)
        if all(slot in self.constants for slot in arg_slots):
            return self.constant(_fold_numpy(name, [self.constants[s] for s in arg_slots]))
        constant_mask = tuple(slot in self.constants for slot in arg_slots)
        slot = self.new_slot()
        self.ops.append((self.resolve(name, constant_mask), arg_slots, slot))
        return slot


def _torch_resolver(torch: Any) -> Resolver:
    def resolve(name: str, constant_mask: tuple[bool, ...]) -> Callable[..., Any]:
        if name == "neg":
            return torch.neg
        if name == "/" and constant_mask == (True, False):
            # number / tensor would run Tensor.__rtruediv__, i.e. reciprocal() * number: two
            # roundings, and inf for denominators below ~5.6e-309
            return _with_tensor_constants(torch.div, constant_mask)
        if name in _BINARY:
            return _BINARY[name]
        if name == "sign":
            return _sign_keeping_nan(torch)
        if name == "xmul":
            return _xmul_torch(torch)
        function = getattr(torch, _TORCH_NAMES[name])
        if len(constant_mask) == 2 and any(constant_mask):
            return _with_tensor_constants(function, constant_mask)
        return function

    return resolve


def _numpy_resolve(name: str, constant_mask: tuple[bool, ...]) -> Callable[..., Any]:
    if name == "neg":
        return np.negative
    if name in _BINARY:
        return _BINARY[name]
    return NUMPY_FUNCTIONS[name]


def _xmul_torch(torch: Any) -> Callable[[Any, Any], Any]:
    """The torch twin of :func:`_xmul` (either argument may be a Python float)."""

    def xmul(x: Any, y: Any) -> Any:
        product = x * y
        keep = ~((torch.as_tensor(x) == 0) & ~torch.isnan(torch.as_tensor(y)))
        return torch.where(keep, product, torch.zeros_like(product))

    return xmul


def _sign_keeping_nan(torch: Any) -> Callable[[Any], Any]:
    """``torch.sign`` maps nan to 0; numpy (the reference) keeps nan, and so must the program.

    Otherwise a nan would vanish from a model's values, and from its Jacobian through
    ``d abs(u) = sign(u) * du``.
    """

    def sign(x: Any) -> Any:
        return torch.where(torch.isnan(x), x, torch.sign(x))

    return sign


def _fold_numpy(name: str, values: list[float]) -> float:
    with np.errstate(all="ignore"):
        if name == "neg":
            return float(-values[0])
        arrays = [np.float64(v) for v in values]
        if name in _BINARY:
            return float(_BINARY[name](*arrays))
        return float(NUMPY_FUNCTIONS[name](*arrays))


def _with_tensor_constants(
    function: Callable[..., Any], constant_mask: tuple[bool, ...]
) -> Callable[..., Any]:
    """Wrap a torch function that needs tensors so a Python-float argument becomes a 0-d tensor
    (made once per dtype and device: on a GPU each new one would be a blocking copy)."""
    import torch

    tensor_index = constant_mask.index(False)
    made: dict[tuple[Any, ...], Any] = {}

    def tensor(value: float, like: Any) -> Any:
        key = (value, like.dtype, like.device)
        if key not in made:
            made[key] = torch.as_tensor(value, dtype=like.dtype, device=like.device)
        return made[key]

    def wrapped(*args: Any) -> Any:
        like = args[tensor_index]
        return function(*[tensor(arg, like) if is_constant else arg for arg, is_constant in zip(args, constant_mask)])

    return wrapped


def _release_plan(
    ops: list[tuple[Callable[..., Any], tuple[int, ...], int]], keep: set[int]
) -> list[tuple[Callable[..., Any], int, int, int, tuple[int, ...]]]:
    """Flatten ops to ``(function, arg, arg2 or -1, out, slots to free after it)``.

    A slot is freed right after its last use (unless it is an output), which bounds the memory of
    large batched evaluations.
    """
    last_use: dict[int, int] = {}
    for index, (_, args, _) in enumerate(ops):
        for slot in args:
            last_use[slot] = index
    produced = {out for _, _, out in ops}
    dead: list[list[int]] = [[] for _ in ops]
    for slot, index in last_use.items():
        if slot in produced and slot not in keep:
            dead[index].append(slot)
    return [
        (fn, args[0], args[1] if len(args) > 1 else -1, out, tuple(dead[i]))
        for i, (fn, args, out) in enumerate(ops)
    ]


class _Program:
    """A straight-line program over slots, shared by both backends.

    Attributes
    ----------
    names
        Input names the program reads from the mapping it is called with.
    n_ops
        Number of array operations per call (after sharing and constant folding).
    n_outputs
        Number of results per call.
    """

    def __init__(self, exprs: Sequence[Expr], resolve: Resolver) -> None:
        builder = _Builder(resolve)
        outputs = [builder.visit(expr) for expr in exprs]
        self._template: list[Any] = [None] * builder.count
        for slot, value in builder.constants.items():
            self._template[slot] = value
        self._inputs = tuple(builder.inputs.items())
        self._ops = _release_plan(builder.ops, set(outputs))
        self._outputs = tuple(outputs)
        self._constant_outputs = {
            slot: builder.constants[slot] for slot in outputs if slot in builder.constants
        }
        self._shapes: dict[tuple[Any, ...], Any] = {}
        self.names = tuple(dict.fromkeys(name for expr in exprs for name in free_names(expr)))
        self.n_ops = len(builder.ops)
        self.n_outputs = len(outputs)

    def _run(self, env: Mapping[str, Any]) -> list[Any]:
        """Every slot after one pass (outputs filled; dead intermediates released)."""
        slots = list(self._template)
        try:
            for name, slot in self._inputs:
                slots[slot] = env[name]
        except KeyError as error:
            raise _missing(error.args[0], env) from None
        for function, first, second, out, dead in self._ops:
            if second < 0:
                slots[out] = function(slots[first])
            else:
                slots[out] = function(slots[first], slots[second])
            for slot in dead:
                slots[slot] = None
        return slots

    def _input_values(self, slots: list[Any], env: Mapping[str, Any], array_type: type) -> list[Any]:
        values = [slots[slot] for _, slot in self._inputs]
        if not values:  # constant expressions only: take shape/dtype from whatever was passed
            values = [v for v in env.values() if isinstance(v, array_type)]
        return values

    def _broadcast_shape(self, shapes: tuple[Any, ...], broadcast_shapes: Callable[..., Any]) -> Any:
        # broadcasting shapes costs ~1-10 us; the shapes rarely change between calls
        shape = self._shapes.get(shapes)
        if shape is None:
            if len(self._shapes) > 64:
                self._shapes.clear()
            shape = broadcast_shapes(*shapes)
            self._shapes[shapes] = shape
        return shape

    def __repr__(self) -> str:
        return f"{type(self).__name__}(names={self.names}, n_outputs={self.n_outputs}, n_ops={self.n_ops})"


class CompiledExpressions(_Program):
    """A straight-line torch program evaluating several trees at once (see :func:`compile_torch`)."""

    def __init__(self, exprs: Sequence[Expr], broadcast: bool) -> None:
        import torch

        super().__init__(exprs, _torch_resolver(torch))
        self._torch = torch
        self._broadcast = broadcast
        self._constants: dict[tuple[Any, ...], Any] = {}

    def __call__(self, env: Mapping[str, Any]) -> list[Any]:
        """Evaluate every expression.

        Parameters
        ----------
        env
            Name -> tensor for every name in :attr:`names`; shapes must broadcast together.

        Returns
        -------
        list of torch.Tensor
            One tensor per expression. With ``broadcast=True`` every result has the broadcast shape
            of the input tensors the program reads (constant results always do, as expanded views,
            not copies; when the program reads no input, every tensor in ``env`` counts).
        """
        slots = self._run(env)
        results = [slots[slot] for slot in self._outputs]
        if self._constant_outputs or self._broadcast:
            results = self._finish(results, self._input_values(slots, env, self._torch.Tensor))
        return results

    def _finish(self, results: list[Any], tensors: list[Any]) -> list[Any]:
        shape = self._broadcast_shape(tuple(t.shape for t in tensors), self._torch.broadcast_shapes)
        finished = []
        for slot, result in zip(self._outputs, results):
            if slot in self._constant_outputs:
                result = self._constant_tensor(result, tensors).expand(shape)
            elif self._broadcast and result.shape != shape:
                result = result.expand(shape)
            finished.append(result)
        return finished

    def _constant_tensor(self, value: float, tensors: list[Any]) -> Any:
        dtype, device = _common_dtype_device(self._torch, tensors)
        key = (value, dtype, device)
        tensor = self._constants.get(key)
        if tensor is None:
            if len(self._constants) > 64:
                self._constants.clear()
            tensor = self._torch.tensor(value, dtype=dtype, device=device)
            self._constants[key] = tensor
        return tensor


class NumpyProgram(_Program):
    """The same straight-line program on numpy arrays (see :func:`compile_numpy`).

    On problems of a few hundred points a numpy operation costs about a fifth of an eager torch
    one, which is what single least-squares fits are made of.
    """

    def __call__(self, env: Mapping[str, Any]) -> list[np.ndarray]:
        """Evaluate every expression; results are read-only views of the broadcast shape of the
        inputs (as :meth:`CompiledExpressions.__call__` with ``broadcast=True``)."""
        slots, shape, dtype = self._evaluate(env)
        return [np.broadcast_to(np.asarray(slots[slot], dtype=dtype), shape) for slot in self._outputs]

    def stacked(self, env: Mapping[str, Any]) -> np.ndarray:
        """Every expression in one array ``(*shape, n_outputs)``: output ``j`` is ``[..., j]``.

        Filling one array by assignment broadcasts constant and lower-dimensional results for
        free, so a model and its Jacobian columns come back without any stacking copy.
        """
        slots, shape, dtype = self._evaluate(env)
        out = np.empty((*shape, self.n_outputs), dtype=dtype)
        for j, slot in enumerate(self._outputs):
            out[..., j] = slots[slot]
        return out

    def _evaluate(self, env: Mapping[str, Any]) -> tuple[list[Any], tuple[int, ...], np.dtype[Any]]:
        with np.errstate(all="ignore"):
            slots = self._run(env)
        values = self._input_values(slots, env, np.ndarray)
        shape = self._broadcast_shape(tuple(np.shape(v) for v in values), np.broadcast_shapes)
        dtype = np.result_type(*values) if values else np.dtype(np.float64)
        if not np.issubdtype(dtype, np.inexact):  # integer data and parameters: the model is real-valued
            dtype = np.dtype(np.float64)
        return slots, shape, dtype


def _common_dtype_device(torch: Any, tensors: list[Any]) -> tuple[Any, Any]:
    if not tensors:
        return torch.get_default_dtype(), torch.device("cpu")
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype, tensors[0].device


def compile_torch(
    exprs: Sequence[Expr | Formula], *, broadcast: bool = True
) -> CompiledExpressions:
    """Compile trees into one torch program that shares common sub-expressions.

    Parameters
    ----------
    exprs
        Expression trees (or parsed formulas) to evaluate together, e.g. a model and its partial
        derivatives from :func:`gradfit.symbolic.gradient`.
    broadcast
        If true (default), expand every result to the broadcast shape of all input tensors, so a
        constant Jacobian column such as ``d(w*x + b)/db = 1`` comes back with the data's shape.

    Returns
    -------
    CompiledExpressions
        Callable ``program(env) -> list[Tensor]``, where ``env`` maps every name in
        ``program.names`` to a tensor. Build it once and call it many times: a call runs only the
        torch operations. Constants are Python floats, so they never change the inputs' dtype or
        device; the results support autograd and ``torch.func`` transforms.
    """
    return CompiledExpressions([_as_expr(expr) for expr in exprs], broadcast)


def compile_numpy(exprs: Sequence[Expr | Formula]) -> NumpyProgram:
    """Compile trees into one numpy program that shares common sub-expressions.

    The numpy twin of :func:`compile_torch` (same slots, sharing and constant folding), for
    evaluations too small for torch's per-operation cost. Results keep the inputs' dtype (Python
    constants never promote float32); IEEE values (``inf``/``nan``) where the math is undefined,
    without warnings.

    Parameters
    ----------
    exprs
        Expression trees (or parsed formulas) to evaluate together.

    Returns
    -------
    NumpyProgram
        ``program(env)`` gives a list of arrays of the inputs' broadcast shape;
        ``program.stacked(env)`` gives them as the last axis of one array.
    """
    return NumpyProgram([_as_expr(expr) for expr in exprs], _numpy_resolve)

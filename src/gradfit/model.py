"""Models: an ordered list of parameters and a forward function built from torch ops.

A model is built from a formula string, a Python callable, or a ``torch.nn.Module``. Parametric models
(formula and callable) evaluate ``predict(inputs, theta)`` where ``theta`` has shape ``(..., p)``: a
leading batch dimension ``(K, p)`` with inputs of shape ``(K, n)`` evaluates K groups at once by
broadcasting. Module models own their parameters and evaluate ``predict(inputs)``.

Parametric models take torch tensors or numpy arrays and answer in the same kind: formula models
run a compiled program of either backend (numpy for small fits, where torch's per-operation cost
would dominate; torch for batches, devices and autograd), callables run on torch and convert.

This module imports torch only inside functions, so that building a formula model (and finding its
errors), and evaluating it on numpy arrays, cost no torch import.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gradfit.errors import ModelError

if TYPE_CHECKING:
    import torch

    from gradfit.formula import Formula

__all__ = [
    "Parameter",
    "ParametricModel",
    "FormulaModel",
    "CallableModel",
    "ModuleModel",
    "make_model",
    "parse_assignments",
    "parse_bounds",
    "parameter_overrides",
    "overrides_from",
    "check_params_by_name",
    "check_bounds_by_name",
]


@dataclass(frozen=True)
class Parameter:
    """One parameter of a parametric model.

    Parameters
    ----------
    name
        The parameter's name, as it appears in the formula or the function signature.
    init
        Starting value; ``None`` lets gradfit choose (1.0 unless a guess is available).
    lower, upper
        Bounds; infinite (or None) when unbounded.
    fixed
        Keep the parameter at ``init`` instead of estimating it.
    """

    name: str
    init: float | None = None
    lower: float = -math.inf
    upper: float = math.inf
    fixed: bool = False

    def __post_init__(self) -> None:
        for side, unbounded in (("lower", -math.inf), ("upper", math.inf)):
            value = getattr(self, side)
            if value is None:
                object.__setattr__(self, side, unbounded)
            elif not isinstance(value, (int, float)) or isinstance(value, bool):
                try:
                    object.__setattr__(self, side, float(value))
                except (TypeError, ValueError):
                    raise ModelError(f"parameter '{self.name}' has {side} bound {value!r} — give a number, or None for no bound") from None
        if not self.lower <= self.upper:
            raise ModelError(
                f"parameter '{self.name}' has lower bound {self.lower} above upper bound "
                f"{self.upper} — swap or widen the bounds"
            )
        if self.fixed and self.init is None:
            raise ModelError(f"parameter '{self.name}' is fixed but has no value — give it one")
        if self.init is not None and not math.isfinite(self.init):
            kind = "fixed value" if self.fixed else "starting value"
            raise ModelError(f"parameter '{self.name}' has {kind} {self.init} — give a finite number")
        if self.fixed and not self.lower <= self.init <= self.upper:
            raise ModelError(
                f"parameter '{self.name}' is fixed at {self.init:g}, outside its bounds [{self.lower:g}, {self.upper:g}] "
                "— change the value or the bounds"
            )

    @property
    def start(self) -> float:
        """The starting value: ``init`` (default 1), moved inside the bounds if needed.

        A value outside goes to the nearest bound, a thousandth of the bound's scale inside it (a
        bound is often where the model stops being defined, as ``log(k)`` at ``k = 0``), as lmfit
        clips a value to its bounds; without ``init``, to the middle of a finite box.
        """
        value = 1.0 if self.init is None else float(self.init)
        if self.lower <= value <= self.upper:
            return value
        if self.init is None and math.isfinite(self.lower) and math.isfinite(self.upper):
            return 0.5 * (self.lower + self.upper)
        return _nearest_inside(value, self.lower, self.upper)

    @property
    def bounded(self) -> bool:
        """Whether either bound is finite."""
        return math.isfinite(self.lower) or math.isfinite(self.upper)


def _nearest_inside(value: float, lower: float, upper: float) -> float:
    bound = lower if value < lower else upper
    margin = min(1e-3 * max(1.0, abs(bound)), 0.5 * (upper - lower))  # never past the middle of the box
    return bound + margin if bound == lower else bound - margin


@dataclass(frozen=True)
class ParametricModel:
    """Base class of models whose parameters form one vector ``theta``.

    Attributes
    ----------
    input_names
        Names of the data columns the model reads, in order.
    parameters
        The model's parameters, in the order of ``theta``'s last axis.
    """

    input_names: tuple[str, ...]
    parameters: tuple[Parameter, ...]

    @functools.cached_property
    def param_names(self) -> tuple[str, ...]:
        """Names of the parameters, in the order of ``theta``."""
        return tuple(p.name for p in self.parameters)

    @property
    def n_params(self) -> int:
        """Number of parameters, fixed ones included."""
        return len(self.parameters)

    @property
    def is_linear(self) -> bool:
        """Whether the model is known to be linear in its parameters."""
        return False

    @property
    def description(self) -> str:
        """A short human-readable description of the model."""
        raise NotImplementedError

    def predict(self, inputs: Mapping[str, Any], theta: Any) -> Any:
        """Evaluate the model.

        Parameters
        ----------
        inputs
            Input columns, each of shape ``(n,)`` or ``(K, n)``: torch tensors, or numpy arrays
            when ``theta`` is one.
        theta
            Parameters of shape ``(p,)`` or ``(K, p)``, a torch tensor or a numpy array.

        Returns
        -------
        torch.Tensor or numpy.ndarray
            Predictions broadcast from the inputs' and parameters' shapes, of ``theta``'s kind.
        """
        raise NotImplementedError

    def predict_and_jacobian(self, inputs: Mapping[str, Any], theta: Any) -> tuple[Any, Any]:
        """Predictions ``(..., n)`` and their exact Jacobian ``(..., n, p)`` at ``theta``.

        The default differentiates :meth:`predict` by forward-mode autograd on torch (numpy
        arguments are converted there and the results back); formula models override it with
        their symbolic derivatives.
        """
        import torch

        if isinstance(theta, np.ndarray):
            prediction, jac = self.predict_and_jacobian(_as_tensors(inputs), torch.from_numpy(theta))
            return prediction.detach().cpu().numpy(), jac.detach().cpu().numpy()

        def forward(t: torch.Tensor, columns: Mapping[str, torch.Tensor]) -> torch.Tensor:
            return self.predict(columns, t)

        jacobian = torch.func.jacfwd(forward)
        if theta.ndim > 1:  # K fits: map over theta's rows, and over inputs given per fit (K, n)
            batched = {name: 0 if column.ndim > 1 else None for name, column in inputs.items()}
            jacobian = torch.func.vmap(jacobian, in_dims=(0, batched))
        return self.predict(inputs, theta), jacobian(theta, dict(inputs))

    def with_parameters(self, overrides: Mapping[str, Mapping[str, Any]]) -> ParametricModel:
        """Return a copy whose named parameters have the given fields replaced.

        Parameters
        ----------
        overrides
            ``{name: {"init": 1.0, "lower": 0.0, "fixed": True, ...}}``.
        """
        unknown = set(overrides) - set(self.param_names)
        if unknown:
            from gradfit.formula import constant_name_note

            name = sorted(unknown)[0]
            raise ModelError(
                f"'{name}' is not a parameter of the model{constant_name_note(name)} — its parameters are "
                f"{', '.join(self.param_names)}"
            )
        params = tuple(
            replace(p, **overrides[p.name]) if p.name in overrides else p for p in self.parameters
        )
        return replace(self, parameters=params)


def _param_slices(theta: Any, count: int) -> list[Any]:
    """Split ``theta (..., p)`` into p arrays of shape ``(..., 1)`` that broadcast against inputs."""
    if isinstance(theta, np.ndarray):
        return [theta[..., j : j + 1] for j in range(count)]
    return list(theta.unsqueeze(-1).unbind(-2)) if count else []


def _as_tensors(columns: Mapping[str, Any]) -> dict[str, Any]:
    """numpy columns as torch tensors (shared memory where possible)."""
    import torch

    return {name: torch.as_tensor(values) for name, values in columns.items()}


@dataclass(frozen=True)
class FormulaModel(ParametricModel):
    """A model given as a formula such as ``"w2*x**2 + w1*x + b"``.

    Names in the formula that are data columns are inputs; the others are parameters. The formula is
    parsed into an expression tree and compiled to torch operations; it is never evaluated as Python.
    """

    formula: Formula | None = None

    @property
    def text(self) -> str:
        """The formula's text."""
        assert self.formula is not None
        return self.formula.text

    @property
    def description(self) -> str:
        """The formula's text, as :attr:`text`."""
        return self.text

    @property
    def is_linear(self) -> bool:
        """Whether the formula is linear in its parameters, found symbolically (cached per formula)."""
        return _is_linear(self.formula.tree, self.param_names)

    def _env(self, inputs: Mapping[str, Any], theta: Any) -> dict[str, Any]:
        env: dict[str, Any] = dict(inputs)
        env.update(zip(self.param_names, _param_slices(theta, self.n_params)))
        return env

    def predict(self, inputs: Mapping[str, Any], theta: Any) -> Any:
        """Evaluate the formula with the compiled program of ``theta``'s kind.

        Parameters
        ----------
        inputs
            Input columns, each of shape ``(n,)`` or ``(K, n)``: numpy arrays when ``theta`` is a
            numpy array, torch tensors when it is a tensor.
        theta
            Parameters of shape ``(p,)`` or ``(..., p)``, in the order of :attr:`param_names`.

        Returns
        -------
        numpy.ndarray or torch.Tensor
            Predictions broadcast from the inputs' and parameters' shapes, of ``theta``'s kind.
        """
        trees = (self.formula.tree,)
        if isinstance(theta, np.ndarray):
            return _numpy_program(trees).stacked(self._env(inputs, theta))[..., 0]
        (out,) = _compiled(trees)(self._env(inputs, theta))
        return out

    def derivative_trees(self) -> tuple[Any, ...]:
        """Symbolic partial derivatives of the formula, one per parameter."""
        return _derivatives(self.formula.tree, self.param_names)

    def predict_and_jacobian(self, inputs: Mapping[str, Any], theta: Any) -> tuple[Any, Any]:
        """Predictions ``(..., n)`` and the symbolic Jacobian ``(..., n, p)`` in one pass."""
        trees = (self.formula.tree, *self.derivative_trees())
        if isinstance(theta, np.ndarray):
            out = _numpy_program(trees).stacked(self._env(inputs, theta))
            return out[..., 0], out[..., 1:]
        import torch

        prediction, *columns = _compiled(trees)(self._env(inputs, theta))
        return prediction, torch.stack(columns, dim=-1)

    def jacobian(self, inputs: Mapping[str, Any], theta: Any) -> Any:
        """The symbolic Jacobian ``(..., n, p)`` at ``theta``."""
        return self.predict_and_jacobian(inputs, theta)[1]

    def linear_trees(self) -> tuple[Any, tuple[Any, ...]]:
        """For a model linear in its parameters: the offset tree and one column tree per parameter."""
        offset, *columns = _linear_trees(self.formula.tree, self.param_names)
        return offset, tuple(columns)

    def design(self, inputs: Mapping[str, Any]) -> tuple[Any, Any]:
        """For a model linear in its parameters: ``offset (n,)`` and design matrix ``A (n, p)``.

        The model equals ``offset + A @ theta``. numpy inputs give numpy arrays, tensors tensors.
        """
        trees = _linear_trees(self.formula.tree, self.param_names)
        if all(isinstance(v, np.ndarray) for v in inputs.values()):
            out = _numpy_program(trees).stacked(dict(inputs))
            return out[..., 0], out[..., 1:]
        import torch

        offset, *columns = _compiled(trees)(dict(inputs))
        shape = torch.broadcast_shapes(offset.shape, *(c.shape for c in columns))
        return offset.expand(shape), torch.stack([c.expand(shape) for c in columns], dim=-1)


@functools.lru_cache(maxsize=256)
def _is_linear(tree: Any, names: tuple[str, ...]) -> bool:
    from gradfit.symbolic import is_linear_in

    return is_linear_in(tree, list(names))


@functools.lru_cache(maxsize=256)
def _linear_trees(tree: Any, names: tuple[str, ...]) -> tuple[Any, ...]:
    from gradfit.symbolic import linear_design

    offset, columns = linear_design(tree, list(names))
    return (offset, *columns)


@functools.lru_cache(maxsize=256)
def _compiled(trees: tuple[Any, ...]) -> Any:
    """One compiled torch program per set of trees, shared by every model built from them."""
    from gradfit.evaluate import compile_torch

    return compile_torch(list(trees))


@functools.lru_cache(maxsize=256)
def _numpy_program(trees: tuple[Any, ...]) -> Any:
    """The numpy twin of :func:`_compiled`."""
    from gradfit.evaluate import compile_numpy

    return compile_numpy(list(trees))


@functools.lru_cache(maxsize=256)
def _derivatives(tree: Any, names: tuple[str, ...]) -> tuple[Any, ...]:
    from gradfit.symbolic import gradient

    return tuple(gradient(tree, list(names)))


@functools.lru_cache(maxsize=256)
def parse_formula(text: str) -> Formula:
    """:func:`gradfit.formula.parse`, cached: formulas are parsed once per process."""
    from gradfit.formula import parse

    return parse(text)



def _broadcast_to_inputs(
    out: torch.Tensor | float, inputs: Mapping[str, torch.Tensor], theta: torch.Tensor
) -> torch.Tensor:
    """Give a prediction the full ``(..., n)`` shape even when the formula ignores some inputs."""
    import torch

    out = torch.as_tensor(out, dtype=theta.dtype, device=theta.device)
    shapes = [out.shape, theta.shape[:-1] + (1,)] + [t.shape for t in inputs.values()]
    try:
        return torch.broadcast_to(out, torch.broadcast_shapes(*shapes))
    except RuntimeError as error:
        points = tuple(next(iter(inputs.values())).shape) if inputs else ()
        raise ModelError(
            f"the model returned shape {tuple(out.shape)} for inputs of shape {points} — return one value per point"
        ) from error


@dataclass(frozen=True)
class CallableModel(ParametricModel):
    """A model given as a Python function ``f(x, a, b, ...)`` of torch tensors.

    Arguments named after data columns are inputs; if none is, the first argument is the input (as
    in lmfit and ``scipy.optimize.curve_fit``). The remaining arguments are the parameters; their
    default values, when numbers, are the starting values.
    """

    function: Callable[..., Any] | None = None
    argument_names: tuple[str, ...] = ()
    input_arguments: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        """The function's name and its arguments, as ``"f(x, a, b)"``."""
        name = getattr(self.function, "__name__", "function")
        return f"{name}({', '.join(self.argument_names)})"

    def predict(self, inputs: Mapping[str, Any], theta: Any) -> Any:
        """Call the function on the input columns and the parameters.

        One fit (``theta`` of shape ``(p,)``, columns ``(n,)``) calls the function once with scalar
        parameters; K fits (``theta (K, p)``) map it over the fits with ``torch.func.vmap``. numpy
        arguments are evaluated on torch without gradients and converted back.

        Parameters
        ----------
        inputs
            Input columns, each of shape ``(n,)`` or ``(K, n)``.
        theta
            Parameters of shape ``(p,)`` or ``(K, p)``, a torch tensor or a numpy array.

        Returns
        -------
        torch.Tensor or numpy.ndarray
            Predictions of shape ``(n,)`` or ``(K, n)``, of ``theta``'s kind.

        Raises
        ------
        ModelError
            If the function raises, returns a shape that does not broadcast to the inputs,
            computes in a lower precision than ``theta``, or ``theta`` is not ``(p,)`` or ``(K, p)``.
        """
        if isinstance(theta, np.ndarray):  # the function is written for torch: evaluate there
            import torch

            with torch.no_grad():
                out = self.predict(_as_tensors(inputs), torch.from_numpy(theta))
            return out.cpu().numpy()
        if theta.shape[:-1].numel() == 1 and all(inputs[col].ndim <= 1 for col in self.input_names):
            # one fit: the function sees scalar parameters and 1-D columns, as it is written, so that
            # an operation along the data (cumsum(x, 0), x[:5], x / x[0]) runs along the points
            single = theta.reshape(-1)
            out = _broadcast_to_inputs(self._call(inputs, list(single.unbind(0))), inputs, single)
            return out.reshape(theta.shape[:-1] + out.shape)
        return self._batched(inputs, theta)

    def _batched(self, inputs: Mapping[str, Any], theta: Any) -> Any:
        """K fits ``theta (K, p)`` (columns ``(n,)`` shared, or ``(K, n)`` one row per fit): the function
        is mapped over the fits (``torch.func.vmap``), so that each call sees one fit as above."""
        import torch

        if theta.ndim != 2:
            raise ModelError(f"a Python function model takes parameters of shape (p,) or (K, p), got {tuple(theta.shape)}")
        columns = [inputs[col] for col in self.input_names]
        dims = tuple(0 if column.ndim == 2 else None for column in columns)

        def one(t: Any, *values: Any) -> Any:
            named = dict(zip(self.input_names, values))
            return _broadcast_to_inputs(self._call(named, list(t.unbind(0))), named, t)

        return torch.func.vmap(one, in_dims=(0, *dims))(theta, *columns)

    def _call(self, inputs: Mapping[str, Any], params: list[Any]) -> Any:
        values = dict(zip(self.param_names, params))
        values.update({arg: inputs[col] for arg, col in zip(self.input_arguments, self.input_names)})
        try:
            out = self.function(**{name: values[name] for name in self.argument_names})
        except Exception as error:  # the user's code: say where it failed, keep the cause chained
            first_line = (str(error).strip().splitlines() or [""])[0]
            if "numpy" in first_line:  # np.exp(tensor): torch's own advice (detach) would cut the gradient
                raise ModelError(
                    f"the model function {self.description} calls numpy on the torch tensors it is given "
                    f"({type(error).__name__}) — use torch's functions (torch.exp for np.exp), or pass the model as a "
                    "formula such as 'a*exp(-k*t)'"
                ) from error
            raise ModelError(
                f"the model function {self.description} raised {type(error).__name__}: {first_line} — it is called "
                "with torch tensors and must compute with torch operations"
            ) from error
        _check_precision(out, params[0] if params else None)
        return out


def _check_precision(out: Any, param: Any) -> None:
    """A function computing in a lower precision than the fit would stop it at its own rounding."""
    import torch

    if not (isinstance(out, torch.Tensor) and isinstance(param, torch.Tensor) and out.is_floating_point()):
        return
    if torch.finfo(out.dtype).eps > torch.finfo(param.dtype).eps:
        returned, fitted = (str(dtype).removeprefix("torch.") for dtype in (out.dtype, param.dtype))
        raise ModelError(
            f"the model function returns {returned} values in a {fitted} fit, whose rounding would stop the fit "
            f"early — compute in the dtype of the tensors it is given, or fit with dtype='{returned}'"
        )


@dataclass(frozen=True)
class ModuleModel:
    """A ``torch.nn.Module`` whose input is the stacked input columns ``(n, d)``.

    The module's own tensors are its parameters; they are trained in place by the gradient solvers,
    in the fit's dtype and on its device, and the module returns to its own dtype and device
    afterwards (:meth:`placement_kept`). With scaling on (the default) it is trained on
    standardised inputs and output, so its raw outputs are in standardised units: predict with
    the result's ``predict``, or fit with ``scale=False`` to call the module directly.
    """

    module: Any
    input_names: tuple[str, ...]

    @property
    def description(self) -> str:
        """The module's class name."""
        return type(self.module).__name__

    @property
    def n_params(self) -> int:
        """Number of scalar trainable parameters."""
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the module's parameter tensors."""
        return tuple(name for name, p in self.module.named_parameters() if p.requires_grad)

    def stack_inputs(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Stack input columns into the ``(n, d)`` matrix the module consumes."""
        import torch

        return torch.stack([inputs[name] for name in self.input_names], dim=-1)

    def as_module_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the dtype and on the device of the module's floating-point tensors (a no-op
        during a fit, where both are the fit's; afterwards the module is back in its own)."""
        reference = self._floating_tensor()
        return x if reference is None else x.to(dtype=reference.dtype, device=reference.device)

    @contextlib.contextmanager
    def placement_kept(self) -> Iterator[None]:
        """Move the module back to the dtype and device it had when the block began, whatever
        the block did to it (a fit moves it to its own dtype and device), also when it fails; its
        (sub)modules return to their training or evaluation modes too."""
        reference = self._floating_tensor()
        placement = None if reference is None else {"dtype": reference.dtype, "device": reference.device}
        try:
            with self.evaluating(False):
                yield
        finally:
            if placement is not None:
                self.module.to(**placement)

    @contextlib.contextmanager
    def evaluating(self, evaluate: bool = True) -> Iterator[None]:
        """Evaluation mode (``module.eval()``: dropout off, batch norm's running statistics) inside the
        block when ``evaluate``, and every (sub)module's own mode back afterwards."""
        modes = [(module, module.training) for module in self.module.modules()]
        if evaluate:
            self.module.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    def _floating_tensor(self) -> torch.Tensor | None:
        tensors = (*self.module.parameters(), *self.module.buffers())
        return next((t for t in tensors if t.is_floating_point()), None)

    def predict(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Evaluate the module on the input columns; returns shape ``(n,)``.

        Raises
        ------
        ModelError
            If the module gives more than one number per row: ``y`` is one column.
        """
        return one_output(self.module(self.stack_inputs(inputs)))


def one_output(out: torch.Tensor) -> torch.Tensor:
    """A network's output ``(n,)``, ``(n, 1)`` or ``(n, 1, ...)`` as ``(n,)``.

    Raises
    ------
    ModelError
        If it gives more than one number per row: ``y`` is one column.
    """
    if out.dim() <= 1:
        return out
    rows = out.reshape(out.shape[0], -1)
    if rows.shape[1] != 1:
        raise ModelError(f"the network gives {rows.shape[1]} outputs per row and y is one column — give its last layer one output")
    return rows[:, 0]


def make_model(
    spec: Any,
    input_names: Collection[str] | None = None,
    params: Sequence[Parameter] | Mapping[str, Any] | None = None,
    as_parameters: Collection[str] = (),
) -> ParametricModel | ModuleModel:
    """Build a model from a formula string, a callable, a ``torch.nn.Module`` or a model.

    Parameters
    ----------
    spec
        ``"w*x + b"``, ``def f(x, w, b): ...``, an ``nn.Module``, an existing model, or the name of
        a built-in model (``"linear"``, ``"poly:2"``, ``"exp_decay"``, ``"mlp:8"``... see
        :mod:`gradfit.builtin_models`).
    input_names
        Names of the available data columns. Formula names found here are inputs.
    params
        Overrides for parameters: a sequence of :class:`Parameter` or a mapping of
        name to starting value (or to a dict of Parameter fields).
    as_parameters
        Formula names to treat as parameters even where a data column has the same name.

    Returns
    -------
    ParametricModel or ModuleModel
    """
    columns = tuple(c for c in input_names or () if c not in as_parameters)
    from gradfit.builtin_models import builtin_model, is_builtin

    if isinstance(spec, str) and not is_builtin(spec):
        model: ParametricModel | ModuleModel = _formula_model(spec, columns)
    elif is_builtin(spec):
        model = builtin_model(spec, columns)
    elif isinstance(spec, (ParametricModel, ModuleModel)):
        model = spec
    elif _is_module(spec):
        _check_forward(spec)
        model = ModuleModel(spec, columns)
    elif callable(spec):
        model = _callable_model(spec, columns)
    else:
        raise ModelError(
            f"cannot build a model from {type(spec).__name__} — give a formula string, a "
            "function or a torch.nn.Module"
        )
    if params and isinstance(model, ParametricModel):
        model = model.with_parameters(overrides_from(params))
    return model


def _check_forward(module: Any) -> None:
    """A network is called with one tensor ``(n, d)`` of its input columns."""
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in signature.parameters.values() if p.kind in positional and p.default is p.empty]
    if len(required) > 1:
        raise ModelError(
            f"the network's forward takes {len(required)} arguments ({', '.join(required)}), and a fit calls it with one "
            "tensor (n, d) of the input columns — write forward(self, x) and take the columns from x"
        )


def _is_module(obj: Any) -> bool:
    return any(cls.__name__ == "Module" and cls.__module__.startswith("torch.nn") for cls in type(obj).__mro__)


@functools.lru_cache(maxsize=256)
def _formula_model(text: str, columns: tuple[str, ...]) -> FormulaModel:
    """The model of a formula over the data columns (models are immutable: built once, shared)."""
    from gradfit.errors import FormulaError
    from gradfit.formula import CONSTANTS

    try:
        formula = parse_formula(text)
    except FormulaError as error:  # 't.u' reads as attribute access: say the column needs a name
        from gradfit.builtin_models import unusable_column_message

        named = [c for c in columns if c in text and not (c.isascii() and c.isidentifier())]
        if named:
            raise ModelError(unusable_column_message(max(named, key=len))) from error
        raise
    shadowed = [name for name in formula.constants if name in columns]
    if shadowed:  # the formula reads the constant, and would silently leave the column out
        raise ModelError(
            f"'{shadowed[0]}' in the formula '{text}' is the constant {shadowed[0]} = {CONSTANTS[shadowed[0]]:.6g}, but the "
            f"data also have a column '{shadowed[0]}' — rename that column to use it in the formula, or leave it out of the "
            "data to mean the constant"
        )
    inputs = tuple(name for name in formula.names if name in columns)
    names = tuple(name for name in formula.names if name not in columns)
    if not names:
        raise ModelError(
            f"the formula '{text}' has no parameters: every name in it is a data column "
            f"({', '.join(inputs) or 'none'}) — add a parameter such as 'w*x + b'"
        )
    if columns and not inputs:  # a constant model is fitted only to data that have nothing else (a typo, else)
        raise ModelError(
            f"the formula '{text}' uses no data column{_typo_hint(names, columns)}{_constant_hint(columns)} — columns are "
            f"{', '.join(columns)} (a constant model is fitted to data with the target column alone)"
        )
    return FormulaModel(inputs, tuple(Parameter(n) for n in names), formula)


def _constant_hint(columns: Sequence[str]) -> str:
    """A note for columns that a formula reads as its constants (``e``, ``pi``)."""
    from gradfit.formula import CONSTANTS

    shadowed = [c for c in columns if c in CONSTANTS]
    return f" ('{shadowed[0]}' in a formula is the constant {shadowed[0]}: rename that column)" if shadowed else ""


def _typo_hint(names: Sequence[str], columns: Sequence[str]) -> str:
    import difflib

    for name in names:
        close = difflib.get_close_matches(name, columns, n=1)
        if close and not close[0].isidentifier():
            return f"; the column '{close[0]}' is not a name a formula can use: rename it, e.g. to '{_as_name(close[0])}'"
        if close:
            return f"; did you mean '{close[0]}' instead of '{name}'?"
    unusable = [c for c in columns if not c.isidentifier()]
    if len(columns) == 1 and len(columns[0].split()) > 1:  # 't y': a file separated by spaces, read as one column
        return f"; the data have one column, '{columns[0]}': separate the columns of the file with commas, semicolons or tabs"
    return f"; columns such as '{unusable[0]}' are not names a formula can use: rename them" if unusable else ""


def _as_name(column: str) -> str:
    """A formula name like ``column``: other characters become underscores."""
    name = re.sub(r"\W+", "_", column).strip("_") or "x"
    return name if name.isidentifier() else f"x_{name}"


def _callable_model(function: Callable[..., Any], columns: tuple[str, ...]) -> CallableModel:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot read the signature of {function!r} — pass a plain function") from exc
    arguments = [
        a
        for a in signature.parameters.values()
        if a.kind in (a.POSITIONAL_ONLY, a.POSITIONAL_OR_KEYWORD, a.KEYWORD_ONLY)
    ]
    label = getattr(function, "__name__", "the function")
    if any(a.kind == a.VAR_POSITIONAL for a in signature.parameters.values()) and len(arguments) <= 1:
        raise ModelError(f"{label} takes its parameters as *args (as curve_fit's f(x, *p)) — name each one, e.g. f(x, a, k)")
    names = tuple(a.name for a in arguments)
    inputs = tuple(n for n in names if n in columns)
    if not inputs and len(columns) > 1:  # one column feeds the first argument whatever its name; several cannot
        raise ModelError(
            f"no argument of {label}({', '.join(names)}) names a data column — the columns are {', '.join(columns)}: "
            f"name its inputs after them, e.g. f({', '.join(columns[:2])}, ...)"
        )
    inputs = inputs or names[:1]
    feeding = inputs if set(inputs) <= set(columns) or len(columns) != 1 else columns
    params = tuple(
        Parameter(a.name, a.default if isinstance(a.default, (int, float)) else None)
        for a in arguments
        if a.name not in inputs
    )
    if not params:
        raise ModelError(f"{label} has no parameters besides its inputs — add arguments for the parameters, e.g. f(x, w, b)")
    return CallableModel(feeding, params, function, names, inputs)


#: why starts and bounds go by name, not in a list as curve_fit's p0 and (lower, upper)
_BY_NAME = "a list would depend on the order of the parameters, which a formula sets by first appearance"


def check_params_by_name(params: Any) -> None:
    """Refuse ``params`` that are neither a mapping nor Parameter objects (a list of numbers, as
    curve_fit's ``p0``), with the form to use."""
    if params is None or isinstance(params, Mapping):
        return
    if isinstance(params, (list, tuple)) and all(isinstance(p, Parameter) for p in params):
        return
    raise ModelError(
        f"params must give the starting values by name, e.g. params={{'a': 1.0, 'k': 0.5}} (or Parameter objects), "
        f"got {type(params).__name__} {_short(params)} — {_BY_NAME}"
    )


def check_bounds_by_name(bounds: Any) -> None:
    """Refuse ``bounds`` that are neither a mapping nor a string (curve_fit's ``(lower, upper)``)."""
    if bounds is None or isinstance(bounds, (Mapping, str)):
        return
    raise ModelError(
        f"bounds must give each parameter's bounds by name, e.g. bounds={{'k': (0, 10), 'c': (0, None)}} or "
        f"bounds='k>=0, 0<c<10', got {type(bounds).__name__} {_short(bounds)} — {_BY_NAME}"
    )


def _short(value: Any) -> str:
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 40 else text[:37] + "..."


def overrides_from(params: Sequence[Parameter] | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Parameter field overrides from Parameter objects or a mapping of names to values or fields."""
    check_params_by_name(params)
    if isinstance(params, Mapping):
        misnamed = [(name, value.name) for name, value in params.items() if isinstance(value, Parameter) and value.name != name]
        if misnamed:
            key, name = misnamed[0]
            raise ModelError(f"params['{key}'] is Parameter('{name}', ...): which parameter is meant? — use the same name for both")
        return {name: _fields(value) for name, value in params.items()}
    return {
        p.name: {"init": p.init, "lower": p.lower, "upper": p.upper, "fixed": p.fixed} for p in params
    }


def _fields(value: Any) -> dict[str, Any]:
    if isinstance(value, Parameter):
        return {"init": value.init, "lower": value.lower, "upper": value.upper, "fixed": value.fixed}
    return dict(value) if isinstance(value, Mapping) else {"init": float(value)}


def parse_assignments(text: str, option: str = "--init", columns: bool = False) -> dict[str, Any]:
    """Parse ``"w=1, b=0"`` into ``{"w": 1.0, "b": 0.0}``.

    Parameters
    ----------
    text
        Comma-separated ``name=value`` pairs.
    option
        The option the text came from, named in error messages.
    columns
        Keep a value that is not a number as text: the name of a column that holds each group's
        start (``k=k_guess``, group fits).
    """
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, raw = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise ModelError(f"{option} expects name=value pairs such as 'w=1,b=0', got '{item}'")
        if name in values:
            raise ModelError(f"{option} gives '{name}' twice — keep one value")
        try:
            value = float(raw)
        except ValueError:
            if columns and raw.strip():
                values[name] = raw.strip()
                continue
            raise ModelError(f"{option}: '{raw.strip()}' is not a number (in '{item}')") from None
        if not math.isfinite(value):
            raise ModelError(f"{option}: '{name}' must be a finite number, got '{raw.strip()}'")
        values[name] = value
    return values


_COMPARISON = re.compile(r"\s*(<=|>=|<|>|=)\s*")


def parse_bounds(text: str) -> dict[str, dict[str, float]]:
    """Parse bounds such as ``"b>=0, 0<k<10, w<=5"`` into Parameter field overrides.

    Parameters
    ----------
    text
        Comma-separated comparisons of one parameter name with a number (``k>=0``, ``5>w``) or a
        chain with the name in the middle and both signs the same way (``0<k<10``, ``10>k>0``);
        ``<`` and ``<=`` are treated alike (bounds are closed), and ``inf`` is a number.

    Returns
    -------
    dict
        ``{"k": {"lower": 0.0, "upper": 10.0}, ...}``.

    Raises
    ------
    ModelError
        For anything else, a bound given twice, or a bound that leaves no room (``k > inf``).
    """
    bounds: dict[str, dict[str, float]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        parts = _COMPARISON.split(item)
        terms, operators = parts[0::2], parts[1::2]
        names = [i for i, t in enumerate(terms) if t.isidentifier() and t.lower() not in _INFINITIES]
        if len(names) != 1 or not _readable_chain(len(terms), names[0], operators):
            raise ModelError(f"--bounds: cannot read '{item}' — write e.g. 'b>=0, 0<k<10'")
        name = terms[names[0]]
        for left, operator, right in zip(terms, operators, terms[1:]):
            side, value = _bound_from(left, operator, right, name, item)
            if side in bounds.setdefault(name, {}):
                raise ModelError(f"--bounds: '{name}' has two {side} bounds (in '{text}') — give each once")
            bounds[name][side] = value
    return bounds


#: names that read as numbers in bounds
_INFINITIES = ("inf", "infinity")


def _readable_chain(n_terms: int, position: int, operators: list[str]) -> bool:
    """``name op number``, ``number op name``, or ``number op name op number`` with both ``op`` alike."""
    if "=" in operators:
        return False
    if n_terms == 2:
        return True
    return n_terms == 3 and position == 1 and operators[0][0] == operators[1][0]


def _bound_from(left: str, operator: str, right: str, name: str, item: str) -> tuple[str, float]:
    number_side, below = (right, operator.startswith("<")) if left == name else (left, operator.startswith(">"))
    try:
        value = float(number_side)
    except ValueError:
        raise ModelError(f"--bounds: '{number_side}' is not a number (in '{item}')") from None
    side = "upper" if below else "lower"
    if math.isnan(value) or value == (-math.inf if below else math.inf):
        raise ModelError(f"--bounds: '{item}' leaves '{name}' no value — give a finite {side} bound")
    return side, value


def parameter_overrides(
    init: Mapping[str, float] | None = None,
    bounds: Mapping[str, Mapping[str, float]] | None = None,
    fix: Mapping[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Merge starting values, bounds and fixed values into Parameter field overrides.

    Raises
    ------
    ModelError
        If a parameter is given both a starting value and a fixed value (``--init k=3 --fix k=1``:
        one of the two would be dropped without a word).
    """
    check_fixed_not_started(init or {}, fix or {})
    merged: dict[str, dict[str, Any]] = {}
    for name, value in (init or {}).items():
        merged.setdefault(name, {})["init"] = float(value)
    for name, limits in (bounds or {}).items():
        merged.setdefault(name, {}).update(limits)
    for name, value in (fix or {}).items():
        merged.setdefault(name, {}).update(init=float(value), fixed=True)
    return merged


def check_fixed_not_started(starts: Mapping[str, Any], fix: Mapping[str, float]) -> None:
    """Refuse a parameter given both a start (a number, or a column of starts) and a fixed value.

    Raises
    ------
    ModelError
        Naming the first such parameter.
    """
    both = sorted(set(starts) & set(fix))
    if both:
        name, start = both[0], starts[both[0]]
        shown = f"column '{start}'" if isinstance(start, str) else f"{float(start):g}"
        raise ModelError(
            f"parameter '{name}' has a starting value ({shown}) and a fixed value ({float(fix[name]):g}) — "
            "a fixed parameter is not fitted: drop one of the two"
        )

"""FitOptions: every setting of a fit in one validated, frozen record."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import numpy as np

from gradfit.errors import OptionError
from gradfit.losses import check_loss

__all__ = ["FitOptions", "SOLVER_NAMES", "DTYPES"]

SOLVER_NAMES = ("auto", "linear", "lm", "gn", "gradient")
DTYPES = ("float64", "float32")
#: where torch work runs (``auto``: a CUDA device when there is one)
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class FitOptions:
    """Settings of :func:`gradfit.fit` (its keyword options), checked when made.

    Attributes
    ----------
    solver
        ``"auto"`` (least squares for parametric least-squares fits, gradient descent for networks
        and ``mae``), ``"linear"``, ``"lm"``, ``"gn"`` or ``"gradient"``.
    optimizer, optimizer_options
        A ``torch.optim`` name (``"adam"``), class, factory or optimizer, and its keyword arguments
        (``{"lr": 1e-2}``); naming one chooses gradient descent.
    loss, loss_scale
        ``"mse"``, ``"mae"``, ``"huber"``, ``"soft_l1"`` or ``"cauchy"``, and the robust losses'
        residual scale (scipy's ``f_scale``).
    epochs, batch_size
        Gradient descent: the most epochs, and the minibatch size (None: the full batch).
    val, seed
        Fraction of rows held out for validation, and the seed of that split and of minibatches.
    target, patience, plateau
        Gradient descent: stop at this monitored loss; stop after ``patience`` epochs without
        improvement (early stopping); halve the learning rate after ``plateau`` such epochs.
    scale
        Standardise inputs and parameters before solving (results are in the data's units).
    dtype, device
        ``"float64"`` or ``"float32"``; ``"cpu"``, ``"cuda"`` or ``"auto"`` for torch work.
    absolute_sigma, confidence
        Treat sigma as absolute (as ``curve_fit``), and the coverage of intervals and bands.
    max_iter, starts
        Least squares: iterations per start (None: the solver's default, which starts a fit that
        fails again from jittered points; given, a hard limit with no such restarts), and starting
        points solved as one batch (the best is kept).
    checkpoint, checkpoint_every, resume
        Gradient descent: a file to save the run's state to every ``checkpoint_every`` epochs, and
        a checkpoint to continue from.
    nan_policy
        ``"raise"`` on missing or non-finite values, or ``"omit"`` their rows.
    callback
        ``callback(epoch, train_loss, val_loss)`` after each epoch of gradient descent.
    """

    solver: str = "auto"
    optimizer: Any = None
    optimizer_options: Mapping[str, Any] = field(default_factory=dict)
    loss: str = "mse"
    loss_scale: float = 1.0
    epochs: int = 1000
    batch_size: int | None = None
    val: float = 0.0
    seed: int = 0
    target: float | None = None
    patience: int | None = None
    plateau: int | None = None
    scale: bool = True
    dtype: str = "float64"
    device: str = "cpu"
    absolute_sigma: bool = False
    max_iter: int | None = None
    starts: int = 1
    checkpoint: str | None = None
    checkpoint_every: int = 100
    resume: str | None = None
    confidence: float = 0.95
    nan_policy: str = "raise"
    callback: Callable[[int, float, float | None], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        check_loss(self.loss)
        _choice("solver", self.solver, SOLVER_NAMES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("device", self.device, DEVICES)
        _choice("nan_policy", self.nan_policy, ("raise", "omit"))
        self._check_counts()
        self._check_numbers()
        self._check_optimizer()

    def _check_optimizer(self) -> None:
        if self.optimizer_options is None:
            object.__setattr__(self, "optimizer_options", {})
        if not isinstance(self.optimizer_options, Mapping):
            raise OptionError(f"optimizer_options must be a mapping such as {{'lr': 0.01}}, got {self.optimizer_options!r}")
        if self.optimizer is not None and self.solver not in ("auto", "gradient"):
            raise OptionError(f"an optimizer trains by gradient descent, but solver '{self.solver}' was asked for — drop one of them")
        optimizer = self.optimizer
        if not (optimizer is None or isinstance(optimizer, str) or callable(optimizer) or hasattr(optimizer, "param_groups")):
            raise OptionError(
                f"optimizer must be a name such as 'adam', a torch.optim class, a factory or an optimizer, got {optimizer!r}"
            )

    def _check_counts(self) -> None:
        for name, minimum in (("epochs", 1), ("checkpoint_every", 1), ("starts", 1)):
            check_whole(name, getattr(self, name), minimum)
        check_seed(self.seed)
        for name in ("scale", "absolute_sigma"):
            check_flag(name, getattr(self, name))
            object.__setattr__(self, name, bool(getattr(self, name)))  # numpy's bools are not JSON
        for name in ("batch_size", "patience", "plateau", "max_iter"):
            if getattr(self, name) is not None:
                check_whole(name, getattr(self, name), 1)

    def _check_numbers(self) -> None:
        for name in ("val", "confidence", "loss_scale") + (() if self.target is None else ("target",)):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), Real):
                raise OptionError(f"{name} must be a number, got {getattr(self, name)!r}")
        if not 0.0 <= self.val < 1.0:
            raise OptionError(f"val must be a fraction in [0, 1), got {self.val} — e.g. 0.2")
        if not 0.0 < self.confidence < 1.0:
            raise OptionError(f"confidence must be in (0, 1), got {self.confidence} — e.g. 0.95")
        if self.target is not None and not math.isfinite(self.target):
            raise OptionError(f"target must be a finite loss, got {self.target}")
        if not self.loss_scale > 0:
            raise OptionError(f"loss scale must be positive, got {self.loss_scale}")

    @property
    def uses_optimizer(self) -> bool:
        """Whether the gradient family was asked for."""
        return self.optimizer is not None or self.solver == "gradient"


def check_flag(name: str, value: Any) -> None:
    """``value`` is True or False (numpy's bools too), else an :class:`OptionError`: a string such as
    ``"false"`` is truthy, and would switch the option on."""
    if not isinstance(value, (bool, np.bool_)):
        raise OptionError(f"{name} must be True or False, got {value!r}")


def check_whole(name: str, value: Any, minimum: int) -> None:
    """``value`` is a whole number (not a bool) of at least ``minimum``, else an :class:`OptionError`."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise OptionError(f"{name} must be a whole number of at least {minimum}, got {value!r}")


#: seeds are 64-bit signed integers (torch's generators take no others)
SEED_LIMIT = 2**63


def check_seed(seed: Any) -> None:
    """``seed`` is a whole number in ``[0, 2**63)``, else an :class:`OptionError`."""
    check_whole("seed", seed, 0)
    if seed >= SEED_LIMIT:
        raise OptionError(f"seed must be below 2**63, got {seed} — e.g. {seed % SEED_LIMIT}")


#: names that results report but that are not choices, and what to choose instead
_REPORTED_ONLY = {("solver", "batched"): " ('batched' is the fused Levenberg-Marquardt path that auto picks for group fits)"}


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        note = _REPORTED_ONLY.get((name, value), "") if isinstance(value, str) else ""
        raise OptionError(f"unknown {name} '{value}'{note} — choose one of {', '.join(allowed)}")


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"cuda"`` for one of :data:`DEVICES` (imports torch: call where torch runs).

    Raises
    ------
    OptionError
        If the name is unknown, or CUDA is asked for where there is no CUDA device.
    """
    import torch

    _choice("device", device, DEVICES)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionError("no CUDA device is available — use --device cpu (or auto)")
    return device

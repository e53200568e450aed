"""FitOptions: every setting of a fit in one validated, frozen record."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gradfit.errors import OptionError
from gradfit.losses import check_loss

__all__ = ["FitOptions", "SOLVER_NAMES", "DTYPES"]

SOLVER_NAMES = ("auto", "linear", "lm", "gn", "gradient")
DTYPES = ("float64", "float32")
#: where torch work runs (``auto``: a CUDA device when there is one)
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class FitOptions:
    """Settings of :func:`gradfit.fit`; see its docstring for each field."""

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
        if not 0.0 <= self.val < 1.0:
            raise OptionError(f"val must be a fraction in [0, 1), got {self.val} — e.g. 0.2")
        if self.epochs < 1:
            raise OptionError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 1:
            raise OptionError(f"batch size must be at least 1, got {self.batch_size}")
        if self.patience is not None and self.patience < 1:
            raise OptionError(f"patience must be at least 1, got {self.patience}")
        if not 0.0 < self.confidence < 1.0:
            raise OptionError(f"confidence must be in (0, 1), got {self.confidence} — e.g. 0.95")
        if self.checkpoint_every < 1:
            raise OptionError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")
        if self.starts < 1:
            raise OptionError(f"starts must be at least 1, got {self.starts}")
        if self.max_iter is not None and not (isinstance(self.max_iter, int) and self.max_iter >= 1):
            raise OptionError(f"max_iter must be a whole number of at least 1, got {self.max_iter!r}")
        if self.loss_scale <= 0:
            raise OptionError(f"loss scale must be positive, got {self.loss_scale}")

    @property
    def uses_optimizer(self) -> bool:
        """Whether the gradient family was asked for."""
        return self.optimizer is not None or self.solver == "gradient"


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise OptionError(f"unknown {name} '{value}' — choose one of {', '.join(allowed)}")


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

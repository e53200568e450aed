"""Exceptions raised by gradfit.

Every error a user can cause derives from :class:`GradfitError`. Its message is one line that names
the problem and, where there is one, the fix. The command-line interface catches these errors only at
its boundary and prints ``Name: message`` with exit code 2.
"""

from __future__ import annotations

__all__ = [
    "GradfitError",
    "DataError",
    "FormulaError",
    "ModelError",
    "FitError",
    "DivergenceError",
    "NotFittedError",
    "OutputError",
    "OptionError",
    "first_line",
]


class GradfitError(Exception):
    """Base class of every error gradfit raises on purpose."""


class DataError(GradfitError, ValueError):
    """The data cannot be used as given (missing file, bad column, NaN, too few rows...)."""


class FormulaError(GradfitError, ValueError):
    """A formula string cannot be parsed or compiled.

    Parameters
    ----------
    message
        What is wrong, in one line.
    formula
        The formula text the error refers to.
    position
        0-based character offset of the problem in ``formula``, or ``None`` if not applicable.
    """

    def __init__(self, message: str, formula: str = "", position: int | None = None) -> None:
        self.formula = formula
        self.position = position
        self.reason = message
        where = f" (at column {position + 1})" if position is not None else ""
        super().__init__(f"{message}{where}")


class ModelError(GradfitError, ValueError):
    """A model or its parameters are ill-specified (no parameters, bad bounds, unknown name...)."""


class FitError(GradfitError, RuntimeError):
    """A fit could not be carried out."""


class DivergenceError(FitError):
    """A fit diverged (non-finite or exploding loss) and ``throw=True`` was asked for."""


class NotFittedError(GradfitError, AttributeError):
    """A fitted attribute or method was used before ``fit`` was called."""


class OutputError(GradfitError, OSError):
    """An output file cannot be written (directory missing, no permission...)."""


class OptionError(GradfitError, ValueError):
    """A solver, optimizer or fit option is unknown or has a bad value."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to ``limit``
    characters (with ``...``) when given: how gradfit quotes a library's error inside its own."""
    lines = str(exc).strip().splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."

"""FitResult: everything a fit found, as a frozen record with a text report and a JSON round trip."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from gradfit.errors import DataError, NotFittedError, OutputError, first_line

__all__ = ["FitResult", "History", "ParameterEstimate"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class History:
    """Training and validation loss per epoch (gradient solvers) or per iteration."""

    train: tuple[float, ...] = ()
    val: tuple[float, ...] = ()


@dataclass(frozen=True)
class ParameterEstimate:
    """One fitted parameter with its uncertainty."""

    name: str
    value: float
    stderr: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    fixed: bool = False
    at_bound: bool = False
    lower: float = -math.inf
    upper: float = math.inf


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`gradfit.fit`.

    Attributes
    ----------
    model
        The model's text (formula) or description.
    model_kind
        ``"formula"``, ``"callable"`` or ``"module"``.
    input_names, y_name
        Data columns used as inputs and as target.
    parameters
        The estimates, in model order.
    covariance
        Covariance matrix of the parameters (``None`` when not available).
    solver, solver_reason
        The solver used and why it was chosen.
    status
        Short machine-readable status (``converged``, ``max_epochs``, ``early_stopped``, ...).
    message
        What happened, in words.
    success
        Whether the fit reached a proper stopping point.
    iterations
        Epochs (gradient) or iterations (least squares) run.
    loss
        Name of the loss.
    train_loss, val_loss
        Final losses at the returned parameters, in the data's units; with ``sigma``, of the
        weighted residuals ``r / σ`` (``settings["weighted"]``).
    n_train, n_val
        Number of training and validation points.
    statistics
        Fit statistics (r2, rmse, chisqr, redchi, aic, bic, dof, condition number...).
    history
        Loss per epoch.
    settings
        Options that produced the fit (seed, dtype, optimizer...), for the record.
    warnings
        Plain-language warnings (ill-conditioning, parameters at bounds...).
    elapsed
        Wall time of the solve in seconds.
    """

    model: str
    model_kind: str
    input_names: tuple[str, ...]
    y_name: str
    parameters: tuple[ParameterEstimate, ...]
    solver: str
    solver_reason: str
    status: str
    message: str
    success: bool
    iterations: int
    loss: str
    train_loss: float
    val_loss: float | None
    n_train: int
    n_val: int
    covariance: tuple[tuple[float, ...], ...] | None = None
    statistics: Mapping[str, float] = field(default_factory=dict)
    history: History = field(default_factory=History)
    settings: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    elapsed: float = 0.0
    predictor: Callable[[Mapping[str, np.ndarray]], np.ndarray] | None = field(
        default=None, compare=False, repr=False
    )

    @property
    def params(self) -> dict[str, float]:
        """Parameter values by name."""
        return {p.name: p.value for p in self.parameters}

    @property
    def stderr(self) -> dict[str, float | None]:
        """Standard errors by name."""
        return {p.name: p.stderr for p in self.parameters}

    @property
    def param_names(self) -> tuple[str, ...]:
        """Parameter names in model order."""
        return tuple(p.name for p in self.parameters)

    @property
    def values(self) -> np.ndarray:
        """Parameter values as an array in model order."""
        return np.array([p.value for p in self.parameters])

    def covariance_matrix(self) -> np.ndarray | None:
        """The parameters' covariance as a ``(p, p)`` array in model order (curve_fit's ``pcov``), or
        ``None`` without one; a fixed parameter's row and column are NaN (it has no variance)."""
        return None if self.covariance is None else np.asarray(self.covariance, dtype=float)

    def bands(self, x: Any, sigma: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The fitted curve at ``x`` and the half-widths of its confidence and prediction bands.

        Parameters
        ----------
        x
            New inputs, as for :meth:`predict`.
        sigma
            Standard deviations of new observations at ``x``, for a weighted fit's prediction band.

        Returns
        -------
        (curve, confidence half-width, prediction half-width) or None
            At the result's ``confidence`` level; None for networks and functions, or without a
            covariance (see :func:`gradfit.predict.prediction_bands`).
        """
        from gradfit.predict import prediction_bands

        return prediction_bands(self, x, sigma)

    def correlation(self) -> np.ndarray | None:
        """Correlation matrix of the parameters, or ``None`` without a covariance."""
        if self.covariance is None:
            return None
        cov = self.covariance_matrix()
        sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            return cov / np.outer(sd, sd)

    def predict(self, x: Any) -> np.ndarray:
        """Evaluate the fitted model on new inputs.

        Parameters
        ----------
        x
            A mapping or data frame with the input columns, or an array for a single input.

        Returns
        -------
        numpy.ndarray
        """
        from gradfit.predict import predict_columns

        return predict_columns(self, x)

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary.

        The uncertainties (covariance, standard errors, intervals), the
        losses and the statistics write a non-finite number as the text ``"inf"``, ``"-inf"`` or
        ``"nan"`` (an infinite variance is not a missing one, a NaN validation loss not a missing
        validation set); elsewhere non-finite numbers become ``None``.

        Returns
        -------
        dict
            Every field but ``predictor``, as plain lists, dicts, strings and numbers (``parameters``
            as a list of dicts, ``history`` as ``{"train": [...], "val": [...]}``), plus
            ``"format_version"``. :meth:`from_dict` reads it back.
        """
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "predictor"}
        record["parameters"] = [{**asdict(p), **{k: _text_if_not_finite(getattr(p, k)) for k in _UNCERTAINTIES}} for p in self.parameters]
        if self.covariance is not None:
            record["covariance"] = [[_text_if_not_finite(v) for v in row] for row in self.covariance]
        record["statistics"] = {k: _text_if_not_finite(v) if _is_number(v) else v for k, v in self.statistics.items()}
        record["train_loss"], record["val_loss"] = _text_if_not_finite(self.train_loss), _text_if_not_finite(self.val_loss)
        record["history"] = asdict(self.history)
        record["format_version"] = FORMAT_VERSION
        return _json_safe(record)

    def to_json(self, indent: int | None = 2) -> str:
        """The result as JSON text (:meth:`save` writes it to a file).

        Parameters
        ----------
        indent
            Indentation of the JSON text, as in :func:`json.dumps`; ``None`` for one line.

        Returns
        -------
        str
            The :meth:`to_dict` record as strict JSON (no ``NaN`` or ``Infinity`` literals).

        Raises
        ------
        TypeError
            If ``indent`` is a path: write files with :meth:`save`.
        """
        if isinstance(indent, (str, os.PathLike)):
            raise TypeError(f"to_json returns the text; to write it to '{os.fspath(indent)}' call result.save(path)")
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the result as JSON to ``path``, atomically (what ``gradfit fit --out`` writes; read it
        back with :meth:`load`). The file must end in ``.json``.

        Parameters
        ----------
        path
            The file to write, ending in ``.json``; an existing file is replaced.

        Returns
        -------
        pathlib.Path
            The path written.

        Raises
        ------
        OutputError
            If the name does not end in ``.json`` or its directory cannot be written.
        """
        from gradfit.io import atomic_write_text, ensure_writable

        target = Path(path)
        if target.suffix.lower() != ".json":
            raise OutputError(f"a result is saved as JSON: end the file name in .json, not '{target.name}'")
        ensure_writable(target)
        return atomic_write_text(target, self.to_json() + "\n")

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> FitResult:
        """Rebuild a result from :meth:`to_dict` output.

        Parameters
        ----------
        record
            A mapping as :meth:`to_dict` returns it, or as parsed from a result file. The texts
            ``"inf"``, ``"-inf"`` and ``"nan"`` become floats again, missing bounds infinite ones.

        Returns
        -------
        FitResult
            The result, without a predictor (:meth:`require_predictor` raises on it).

        Raises
        ------
        DataError
            If ``record`` is not a result: a field is missing or of the wrong kind.
        """
        problem = _record_problem(record)
        if problem:
            raise DataError(f"not a gradfit result file ({problem}) — {_WHAT_IS_A_RESULT}")
        try:
            data = {f.name: record[f.name] for f in fields(cls) if f.name in record}
            data["parameters"] = tuple(ParameterEstimate(**_restore_infinities(p)) for p in record["parameters"])
            data["history"] = History(**{k: tuple(v) for k, v in record["history"].items()})
            data["input_names"] = tuple(record["input_names"])
            data["warnings"] = tuple(record.get("warnings", ()))
            if record.get("covariance") is not None:
                data["covariance"] = tuple(tuple(_number(v, math.nan) for v in row) for row in record["covariance"])
            data["statistics"] = {k: _number(v, math.nan) for k, v in record["statistics"].items()}
            data["train_loss"] = _number(record["train_loss"], math.nan)
            data["val_loss"] = _number(record.get("val_loss"), None)
            return cls(**data)
        except KeyError as exc:
            raise DataError(f"not a gradfit result file (no field {exc}) — {_WHAT_IS_A_RESULT}") from None
        except (TypeError, ValueError) as exc:
            raise DataError(f"not a gradfit result file ({first_line(exc)}) — {_WHAT_IS_A_RESULT}") from None

    @classmethod
    def from_json(cls, text: str) -> FitResult:
        """Rebuild a result from :meth:`to_json` text.

        Parameters
        ----------
        text
            JSON text of one result.

        Returns
        -------
        FitResult
            The result, without a predictor.

        Raises
        ------
        DataError
            If ``text`` is not valid JSON or does not describe a result.
        """
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise DataError(f"not a gradfit result file: invalid JSON ({exc.msg} at line {exc.lineno}) — {_WHAT_IS_A_RESULT}") from None

    @classmethod
    def load(cls, path: str | Path) -> FitResult:
        """Read a result written with ``--out`` or :meth:`save`.

        Parameters
        ----------
        path
            A JSON file, as :meth:`save` or ``gradfit fit --out`` writes it.

        Returns
        -------
        FitResult
            The result, without a predictor.

        Raises
        ------
        DataError
            If the file cannot be read (missing, no permission, not UTF-8 text) or does not hold a
            result.
        """
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise DataError(f"not a gradfit result file: '{path}' is not UTF-8 JSON text — {_WHAT_IS_A_RESULT}") from None
        except PermissionError:
            raise DataError(f"cannot read result file '{path}': permission denied — check the file's permissions") from None
        except OSError as exc:
            raise DataError(f"cannot read result file '{path}': {exc.strerror} — check the path") from None

    def report(self) -> str:
        """A text report with sections: fit, statistics, parameters, correlations, validation.

        Returns
        -------
        str
            The report, several lines of plain text; ``str(result)`` gives the same.
        """
        from gradfit.report_text import format_report

        return format_report(self)

    def __str__(self) -> str:
        return self.report()

    def _repr_html_(self) -> str:
        """Notebook display: parameters ± stderr, key statistics and a small figure."""
        from gradfit.notebook import result_html

        return result_html(self)

    def require_predictor(self) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
        """The in-memory predictor, or an error saying why there is none.

        Returns
        -------
        callable
            A function from a mapping of input columns (numpy arrays) to the predictions, a numpy array.

        Raises
        ------
        NotFittedError
            If the result has none, as one rebuilt by :meth:`from_dict`, :meth:`from_json` or :meth:`load`.
        """
        if self.predictor is None:
            raise NotFittedError("this result has no model attached — refit, or load a formula result")
        return self.predictor


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _record_problem(record: Any) -> str | None:
    """What makes ``record`` not a result (the first problem found), or None."""
    if not isinstance(record, Mapping):
        return f"a JSON {type(record).__name__}, not an object"
    required = [f.name for f in fields(FitResult) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in record]
    if missing:
        return f"no field '{missing[0]}'"
    for name, kinds in _RECORD_FIELDS.items():
        if name in record and not isinstance(record[name], kinds):
            return f"field '{name}' is {type(record[name]).__name__}"
    if not all(isinstance(n, str) for n in record.get("input_names", [])):
        return "field 'input_names' must list column names"
    parameters = record.get("parameters", [])
    for entry in parameters:
        if not (isinstance(entry, Mapping) and isinstance(entry.get("name"), str) and _is_number(entry.get("value"))):
            return "every parameter needs a name and a numeric value"
    covariance = record.get("covariance")
    if covariance is not None and not (
        len(covariance) == len(parameters) and all(isinstance(row, list) and len(row) == len(parameters) for row in covariance)
    ):
        return f"field 'covariance' must be {len(parameters)} × {len(parameters)}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: the JSON kinds of a result record's fields
_RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "model": str, "model_kind": str, "y_name": str, "input_names": list, "parameters": list, "solver": str,
    "status": str, "message": str, "iterations": int, "covariance": (list, type(None)), "statistics": Mapping,
    "settings": Mapping, "history": Mapping, "warnings": list,
}


#: what a result file is, for the errors about files that are not
_WHAT_IS_A_RESULT = "give the .json that 'gradfit fit --out' wrote for a single fit (group fits write tables, not results)"


#: fields of a ParameterEstimate whose non-finite values are written as text
_UNCERTAINTIES = ("stderr", "ci_low", "ci_high")
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _text_if_not_finite(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _number(value: Any, missing: float | None) -> Any:
    """A number written by :func:`_text_if_not_finite` (``missing`` for ``None``)."""
    if value is None:
        return missing
    if isinstance(value, str):
        if value not in _NON_FINITE:
            raise TypeError(f"'{value}' is not a number")
        return _NON_FINITE[value]
    return value


def _restore_infinities(record: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(record)
    data["lower"] = -math.inf if data.get("lower") is None else data["lower"]
    data["upper"] = math.inf if data.get("upper") is None else data["upper"]
    for name in _UNCERTAINTIES:
        data[name] = _number(data.get(name), None)
    return data

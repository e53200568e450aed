"""Safe output files: early checks and atomic writes.

Every output is first written to a hidden temporary file in the destination's directory, flushed to
disk, then renamed over the destination with :func:`os.replace`. Readers therefore see either the
old file or the complete new one, never a partial file, and an interrupted write (exception,
Ctrl-C) leaves no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any
from pathlib import Path

from gradfit.errors import OutputError

__all__ = ["TABLE_OUTPUT_SUFFIXES", "atomic_path", "atomic_write_bytes", "atomic_write_text", "check_distinct", "ensure_writable", "write_table"]

#: the table files gradfit writes (predictions, group results): the extension chooses the format
TABLE_OUTPUT_SUFFIXES = (".parquet", ".pq", ".csv", ".ndjson", ".jsonl")


def check_distinct(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
    """Check, before any work, that no output would replace an input or another output.

    Parameters
    ----------
    inputs, outputs
        Paths by the name the user knows them by (``"the data file"``, ``"--out"``); ``None``
        entries are skipped.

    Raises
    ------
    OutputError
        Naming the output and what it would overwrite.
    """
    seen: dict[Path, str] = {_identity(path): label for label, path in inputs.items() if path is not None}
    for label, path in outputs.items():
        if path is None:
            continue
        where = _identity(path)
        if where in seen:
            raise OutputError(f"{label} {path} would overwrite {seen[where]} — give it another file name")
        seen[where] = label


def _identity(path: Any) -> Path:
    """A path's absolute location, links resolved (two names of one file are one)."""
    return Path(path).expanduser().resolve()


def ensure_writable(path: str | os.PathLike[str]) -> Path:
    """Check, before any work is done, that ``path`` can be written.

    Parameters
    ----------
    path
        The output file that will be created or replaced.

    Returns
    -------
    pathlib.Path
        ``path`` as a Path (with ``~`` expanded).

    Raises
    ------
    OutputError
        If ``path`` is a directory, its directory is missing or is a file, the directory is not
        writable, or ``path`` exists and is read-only.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise OutputError(f"output path is a directory: {target} — give a file name")
    parent = target.parent
    if not parent.is_dir():
        _raise_missing_parent(target)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(
            f"no permission to write in directory {parent} (for {target}) — choose another "
            "output directory"
        )
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputError(
            f"output file is read-only: {target} — remove it or choose another name"
        )
    return target


def _raise_missing_parent(target: Path) -> None:
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise OutputError(
            f"{ancestor} is a file, not a directory (for {target}) — choose another output path"
        )
    raise OutputError(
        f"directory does not exist: {target.parent} (for {target}) — create it first"
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically.

    The temporary file is hidden (name starts with ``.``), lies in the same directory as ``path``
    and keeps its extension, so tools that choose a format from the extension work. It already
    exists (empty) when yielded. If the ``with`` body raises anything (``KeyboardInterrupt``
    included) the temporary file is removed and ``path`` is left untouched.

    Parameters
    ----------
    path
        Destination file.

    Yields
    ------
    pathlib.Path
        The temporary file to write.

    Raises
    ------
    OutputError
        If the destination is not writable or the final rename fails.
    """
    target = ensure_writable(path)
    temp = _make_temp(target)
    try:
        yield temp
        _fsync_file(temp)
        os.replace(temp, target)
    except OSError as exc:
        _remove_quietly(temp)
        if isinstance(exc, OutputError):
            raise
        reason = exc.strerror or exc
        raise OutputError(
            f"cannot write {target}: {reason} — check free space and permissions"
        ) from exc
    except BaseException:
        _remove_quietly(temp)
        raise
    _fsync_directory(target.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Parameters
    ----------
    path
        Destination file.
    data
        The complete file content.

    Returns
    -------
    pathlib.Path
        The destination path.

    Raises
    ------
    OutputError
        If the file cannot be written; ``path`` is then left as it was.
    """
    with atomic_path(path) as temp:
        with open(temp, "wb") as handle:
            handle.write(data)
    return Path(path).expanduser()


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation).

    Parameters
    ----------
    path
        Destination file.
    text
        The complete file content.
    encoding
        Text encoding.

    Returns
    -------
    pathlib.Path
        The destination path.

    Raises
    ------
    OutputError
        If the file cannot be written; ``path`` is then left as it was.
    """
    return atomic_write_bytes(path, text.encode(encoding))


def _make_temp(target: Path) -> Path:
    try:
        fd, name = tempfile.mkstemp(
            prefix=f".{target.stem}.", suffix=target.suffix or ".tmp", dir=target.parent
        )
    except OSError as exc:
        raise OutputError(
            f"cannot create a file in {target.parent}: {exc.strerror or exc} — choose another "
            "output directory"
        ) from exc
    try:
        os.fchmod(fd, _final_mode(target))
    except (AttributeError, OSError):  # pragma: no cover - platforms without fchmod
        pass
    finally:
        os.close(fd)
    return Path(name)


def _final_mode(target: Path) -> int:
    """Permissions of the existing file, or those a new file would get (mkstemp uses 0o600)."""
    try:
        return target.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; best effort (not supported everywhere)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def write_table(table: Any, path: str | os.PathLike[str]) -> Path:
    """Write a polars ``DataFrame`` (or stream a ``LazyFrame``) to ``path`` atomically, in the format
    its extension names (:data:`TABLE_OUTPUT_SUFFIXES`: Parquet, CSV, NDJSON).

    Parameters
    ----------
    table
        A ``polars.DataFrame`` or ``polars.LazyFrame``.
    path
        Destination file; its extension must be one of :data:`TABLE_OUTPUT_SUFFIXES`.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    OutputError
        For another extension.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in TABLE_OUTPUT_SUFFIXES:
        raise OutputError(f"{target}: gradfit writes tables as {', '.join(TABLE_OUTPUT_SUFFIXES)} — end the name in one of them")
    kind = "parquet" if suffix in (".parquet", ".pq") else "csv" if suffix == ".csv" else "ndjson"
    lazy = not hasattr(table, "write_csv")
    with atomic_path(target) as temporary:
        getattr(table, f"{'sink' if lazy else 'write'}_{kind}")(temporary)
    return target

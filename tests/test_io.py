"""Tests for gradfit.io: early output checks and atomic writes."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

import gradfit.io as gio
from gradfit.errors import OutputError
from gradfit.io import atomic_path, atomic_write_bytes, atomic_write_text, ensure_writable, write_table

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------------
# ensure_writable
# --------------------------------------------------------------------------------------------------


def test_ensure_writable_ok(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    assert ensure_writable(target) == target
    assert listing(tmp_path) == []  # the check creates nothing
    target.write_text("old")
    assert ensure_writable(str(target)) == target


def test_ensure_writable_relative_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert ensure_writable("out.csv") == Path("out.csv")


def test_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "results" / "fit.json"
    with pytest.raises(OutputError) as exc:
        ensure_writable(target)
    assert one_line(exc) == (
        f"directory does not exist: {target.parent} (for {target}) — create it first"
    )


def test_parent_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    target = tmp_path / "notes.txt" / "sub" / "fit.json"
    with pytest.raises(OutputError, match=r"notes\.txt is a file, not a directory") as exc:
        ensure_writable(target)
    one_line(exc)


def test_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="output path is a directory") as exc:
        ensure_writable(tmp_path)
    one_line(exc)


def test_no_permission_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gio.os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match="no permission to write in directory") as exc:
        ensure_writable(tmp_path / "out.txt")
    one_line(exc)


def test_read_only_file_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.txt"
    target.write_text("keep")
    monkeypatch.setattr(gio.os, "access", lambda path, mode: Path(path) != target)
    with pytest.raises(OutputError, match="output file is read-only"):
        atomic_write_text(target, "new")
    assert target.read_text() == "keep"


@posix_only
def test_no_permission_real(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="no permission"):
            ensure_writable(locked / "out.txt")
    finally:
        locked.chmod(0o700)


def test_output_error_is_oserror() -> None:
    assert issubclass(OutputError, OSError)


# --------------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------------


def test_write_text_and_bytes(tmp_path: Path) -> None:
    text = tmp_path / "a.txt"
    assert atomic_write_text(text, "héllo\nwörld\n") == text
    assert text.read_bytes() == "héllo\nwörld\n".encode()
    binary = tmp_path / "b.bin"
    atomic_write_bytes(binary, bytes(range(256)))
    assert binary.read_bytes() == bytes(range(256))
    atomic_write_text(text, "replaced")
    assert text.read_text() == "replaced"
    assert listing(tmp_path) == ["a.txt", "b.bin"]


def test_atomic_path_temp_is_hidden_same_dir_same_suffix(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    with atomic_path(target) as temp:
        assert temp.parent == target.parent
        assert temp.name.startswith(".") and temp.suffix == ".png"
        assert temp.exists() and not target.exists()
        temp.write_bytes(b"data")
    assert target.read_bytes() == b"data"
    assert listing(tmp_path) == ["plot.png"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failure_mid_write_keeps_old_file(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "out.csv"
    target.write_text("old complete content")
    with pytest.raises(type(error)):
        with atomic_path(target) as temp:
            with open(temp, "w") as handle:
                handle.write("new partial")
                handle.flush()
                raise error
    assert target.read_text() == "old complete content"
    assert listing(tmp_path) == ["out.csv"]


def test_failure_mid_write_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.json"
    with pytest.raises(ValueError):
        with atomic_path(target) as temp:
            temp.write_text('{"partial": ')
            raise ValueError("serialisation failed")
    assert listing(tmp_path) == []


def test_fsync_failure_is_output_error_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gio.os, "fsync", failing_fsync)
    with pytest.raises(OutputError, match="No space left on device") as exc:
        atomic_write_text(target, "new content")
    one_line(exc)
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["out.txt"]


def test_replace_failure_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.txt"

    def failing_replace(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(gio.os, "replace", failing_replace)
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write_bytes(target, b"x")
    assert listing(tmp_path) == []


def test_interrupt_during_write_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def interrupted_fsync(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(gio.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert listing(tmp_path) == ["out.bin"]


def test_write_into_missing_directory_fails_early(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="directory does not exist"):
        atomic_write_text(tmp_path / "nope" / "a.txt", "x")
    with pytest.raises(OutputError, match="directory does not exist"):
        with atomic_path(tmp_path / "nope" / "a.txt"):
            pytest.fail("the body must not run")  # pragma: no cover


@posix_only
def test_new_file_gets_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640


@posix_only
def test_existing_file_keeps_its_permissions(tmp_path: Path) -> None:
    target = tmp_path / "script.sh"
    target.write_text("old")
    target.chmod(0o751)
    atomic_write_text(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o751
    assert target.read_text() == "new"


@pytest.mark.parametrize("suffix", [".parquet", ".pq", ".csv", ".ndjson", ".jsonl"])
def test_write_table_writes_the_format_its_extension_names_from_a_frame_or_a_lazy_frame(tmp_path, suffix):
    import polars as pl

    frame = pl.DataFrame({"g": [1, 2], "k": [0.5, 1.5]})
    readers = {".parquet": pl.read_parquet, ".pq": pl.read_parquet, ".csv": pl.read_csv, ".ndjson": pl.read_ndjson, ".jsonl": pl.read_ndjson}
    for source, name in ((frame, "eager"), (frame.lazy(), "lazy")):
        path = write_table(source, tmp_path / f"{name}{suffix}")
        assert readers[suffix](path).equals(frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}{suffix}" for n in ("eager", "lazy"))  # no temporary left


def test_write_table_refuses_an_extension_it_does_not_write(tmp_path):
    import polars as pl

    with pytest.raises(OutputError, match="gradfit writes tables as .parquet"):
        write_table(pl.DataFrame({"a": [1]}), tmp_path / "t.xlsx")

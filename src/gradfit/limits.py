"""Memory limits: refuse inputs that cannot fit in memory up front, with the size and the way out.

Reading a table costs several times its size on disk (text is parsed into columns, Parquet is
decompressed), and a fit holds its columns again as tensors. Rather than let the operating system
kill the process half-way, :func:`check_table_fits` compares an estimate with the memory available.
"""

from __future__ import annotations

import os
from pathlib import Path

from gradfit.errors import DataError

__all__ = ["available_memory", "check_table_fits", "EXPANSION"]

#: bytes of memory per byte on disk while reading and fitting, by format (Parquet is compressed)
EXPANSION = {".parquet": 8.0, ".pq": 8.0}
TEXT_EXPANSION = 4.0


def available_memory() -> int:
    """Bytes of memory available now (Linux ``MemAvailable``; 4 GiB where unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 4 << 30


def check_table_fits(path: str | os.PathLike[str], available: int | None = None) -> None:
    """Raise :class:`DataError` if reading and fitting ``path`` would likely exhaust memory.

    Parameters
    ----------
    path
        The data file.
    available
        Bytes of memory to plan with (default: :func:`available_memory`).
    """
    target = Path(path)
    size = target.stat().st_size
    need = size * EXPANSION.get(target.suffix.lower(), TEXT_EXPANSION)
    free = available if available is not None else available_memory()
    if need > free:
        raise DataError(
            f"{target.name} is {_gib(size)} on disk and needs about {_gib(need)} of memory to read and fit, "
            f"but only {_gib(free)} is available — fit it in parts (split the rows, or group fits per file), "
            "or convert it to Parquet with only the columns you fit"
        )


def _gib(count: float) -> str:
    return f"{count / (1 << 30):.1f} GiB"

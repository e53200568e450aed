"""Thread policy: small problems run single-threaded.

On problems of a few hundred numbers, torch's intra-op thread pool costs far more than it saves
(a QR of an 11 × 2 matrix: 4 µs on one thread, over 1 ms on two when the other core is busy). Fits
below :data:`SMALL_PROBLEM` numbers therefore run with one thread; the caller's setting is restored
afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["SMALL_PROBLEM", "threads_for"]

#: problems with fewer numbers than this (points × parameters × groups) run single-threaded
SMALL_PROBLEM = 200_000


@contextlib.contextmanager
def threads_for(size: int) -> Iterator[None]:
    """Run the block single-threaded when ``size`` is below :data:`SMALL_PROBLEM`."""
    import torch

    previous = torch.get_num_threads()
    if size >= SMALL_PROBLEM or previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)

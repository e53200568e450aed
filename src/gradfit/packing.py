"""Ragged groups to padded arrays: rows sorted by group become ``(K, n_max)`` blocks with a mask.

Padded slots repeat the group's last real point (so a model stays finite there) and carry mask 0,
which zeroes their residuals and Jacobian rows: they never influence a fit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["GroupIndex", "PackedGroups", "index_groups", "pack", "chunks", "held_out"]


@dataclass(frozen=True)
class GroupIndex:
    """Where each group's rows lie once the data are sorted by group.

    Attributes
    ----------
    keys
        The group keys in order, ``(K,)``.
    order
        Row permutation that sorts the data by group (stable: rows keep their order in a group);
        None when the data are already sorted (the identity, not stored: K·n integers).
    starts, counts
        Offset of each group's first row in the sorted data, and its number of rows.
    """

    keys: np.ndarray
    order: np.ndarray | None
    starts: np.ndarray
    counts: np.ndarray

    @property
    def n_groups(self) -> int:
        """Number of groups K."""
        return int(self.keys.size)


def index_groups(group: np.ndarray) -> GroupIndex:
    """Index the rows of each distinct value of ``group`` (any sortable array).

    Groups come in the order of their rows when every group's rows are together (the usual layout
    of a large table, sorted or not): their boundaries come from one comparison of neighbours, and
    nothing is sorted or gathered. Otherwise the rows are sorted by key (stably) and the groups
    come in key order.
    """
    group = np.asarray(group)
    if group.size and _presorted(group):
        change = np.flatnonzero(group[1:] != group[:-1]) + 1
        starts = np.concatenate([[0], change]).astype(np.int64)
        counts = np.diff(np.append(starts, group.size))
        return GroupIndex(group[starts], None, starts, counts)
    if group.size:
        starts = np.concatenate([[0], np.flatnonzero(group[1:] != group[:-1]) + 1]).astype(np.int64)
        if np.unique(group[starts]).size == starts.size:  # every group's rows are together
            return GroupIndex(group[starts], None, starts, np.diff(np.append(starts, group.size)))
    order = np.argsort(group, kind="stable")
    keys, starts, counts = np.unique(group[order], return_index=True, return_counts=True)
    return GroupIndex(keys, order, starts, counts)


def _presorted(group: np.ndarray) -> bool:
    """Whether a numeric key column is non-decreasing (NaN keys take the general path)."""
    if group.dtype.kind not in "iub" and not (group.dtype.kind in "fM" and not np.isnan(group).any()):
        return False
    return bool(np.all(group[1:] >= group[:-1]))


@dataclass(frozen=True)
class PackedGroups:
    """K groups as padded float arrays.

    Attributes
    ----------
    columns
        Each column ``(K, n_max)``.
    mask
        ``(K, n_max)`` 1.0 for real points, 0.0 for padding.
    counts
        Real points per group ``(K,)``.
    """

    columns: Mapping[str, np.ndarray]
    mask: np.ndarray
    counts: np.ndarray


def pack(columns: Mapping[str, np.ndarray], index: GroupIndex, groups: slice) -> PackedGroups:
    """Pad the groups ``groups`` (a slice of group positions) of the sorted ``columns``.

    Parameters
    ----------
    columns
        Columns in the original row order.
    index
        From :func:`index_groups`.
    groups
        Which groups to pack, e.g. ``slice(0, 10_000)``.
    """
    starts, counts = index.starts[groups], index.counts[groups]
    width = int(counts.max()) if counts.size else 0
    if counts.size and counts.min() == width and _contiguous(index, starts, width):
        # equal groups stored one after another: a reshape (one copy), no gather
        first, last = int(starts[0]), int(starts[-1]) + width
        packed = {name: np.array(values[first:last], dtype=np.float64).reshape(counts.size, width) for name, values in columns.items()}
        return PackedGroups(packed, np.ones((counts.size, width)), counts)
    slot = np.arange(width)
    mask = slot[None, :] < counts[:, None]
    position = starts[:, None] + np.minimum(slot[None, :], counts[:, None] - 1)
    rows = position if index.order is None else index.order[position]
    packed = {name: np.ascontiguousarray(values[rows], dtype=np.float64) for name, values in columns.items()}
    return PackedGroups(packed, mask.astype(np.float64), counts)


def _contiguous(index: GroupIndex, starts: np.ndarray, width: int) -> bool:
    """Whether the groups' rows are consecutive rows of the original data, in order."""
    first, last = int(starts[0]), int(starts[-1]) + width
    if last - first != starts.size * width:
        return False
    if index.order is None:
        return True
    order = index.order[first:last]
    return bool(order[0] == first and order[-1] == last - 1 and np.all(np.diff(order) == 1))


def chunks(n_groups: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` groups covering ``range(n_groups)``."""
    for start in range(0, n_groups, size):
        yield slice(start, min(start + size, n_groups))


def first_in_group(values: np.ndarray, index: GroupIndex, groups: slice) -> np.ndarray:
    """Each group's first value of a column (per-group starting values from a column)."""
    first = index.starts[groups]
    return values[first if index.order is None else index.order[first]]


def finite_groups(columns: Sequence[np.ndarray], packed_mask: np.ndarray) -> np.ndarray:
    """``(K,)`` bool: groups whose real points are all finite in every column."""
    ok = np.ones(packed_mask.shape[0], dtype=bool)
    real = packed_mask > 0
    padded = not real.all()
    for values in columns:
        ok &= np.all(np.isfinite(values) | ~real, axis=1) if padded else np.isfinite(values).all(axis=1)
    return ok


def held_out(keys: np.ndarray, width: int, fraction: float, seed: int, counts: np.ndarray | None = None) -> np.ndarray:
    """``(K, width)`` which points of each group a validation split holds out.

    Each group holds out as many of its points as a single fit's split of the same size would
    (:func:`gradfit.data.holdout_split`: ``round(fraction·n)``, at least one when ``fraction > 0``
    and ``n >= 2``, never all): those whose counter-based hash of ``(seed, key, j)`` (splitmix64)
    is smallest. So a group's split depends on its key, its points and the seed only — not on which
    other groups share its chunk or batch, nor on the order of the groups, nor on the versions of
    the libraries. Integer, float and date keys hash by value; text keys by FNV-1a of their UTF-8
    bytes.

    Parameters
    ----------
    keys
        ``(K,)`` group keys.
    width
        Points per row (a padded group's real points come first).
    fraction
        Fraction held out, in ``[0, 1)``.
    seed
        Seed of the split.
    counts
        ``(K,)`` real points per group (default: every row is full).
    """
    codes = _key_codes(keys)
    with np.errstate(over="ignore"):
        state = codes[:, None] * np.uint64(0x9E3779B97F4A7C15) + np.arange(width, dtype=np.uint64)[None, :]
        state = _splitmix64(state + np.uint64(seed) * np.uint64(0xD1B54A32D192ED03))
    draws = (state >> np.uint64(11)).astype(np.float64) * 2.0**-53
    n = np.full(codes.shape[0], width, dtype=np.int64) if counts is None else np.asarray(counts, dtype=np.int64)
    real = np.arange(width)[None, :] < n[:, None]
    ranks = np.argsort(np.argsort(np.where(real, draws, np.inf), axis=1, kind="stable"), axis=1, kind="stable")
    n_val = np.floor(n * fraction + 0.5).astype(np.int64)
    if fraction > 0:
        n_val = np.where(n >= 2, np.maximum(n_val, 1), n_val)
    n_val = np.minimum(n_val, np.maximum(n - 1, 0))
    return ranks < n_val[:, None]


def _key_codes(keys: np.ndarray) -> np.ndarray:
    """A ``uint64`` code per key that depends on the key's value alone (not on a library version)."""
    keys = np.asarray(keys)
    if keys.dtype.kind in "iub":
        return keys.astype(np.int64).view(np.uint64)
    if keys.dtype.kind == "f":
        return (keys.astype(np.float64) + 0.0).view(np.uint64)  # + 0.0: -0.0 and 0.0 are one key
    if keys.dtype.kind in "mM":
        return keys.view(np.int64).view(np.uint64)
    return _fnv1a(np.char.encode(keys.astype(str), "utf-8"))


#: FNV-1a's 64-bit offset basis and prime (Fowler, Noll and Vo)
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def _fnv1a(encoded: np.ndarray) -> np.ndarray:
    """FNV-1a (64 bits) of each byte string of a fixed-width ``bytes`` array, one byte position at a
    time for all strings together."""
    width = encoded.dtype.itemsize
    data = encoded.view(np.uint8).reshape(encoded.size, width)
    lengths = np.char.str_len(encoded)
    code = np.full(encoded.size, _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(width):
            code = np.where(j < lengths, (code ^ data[:, j]) * _FNV_PRIME, code)
    return code


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele, Lea and Flood's splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))

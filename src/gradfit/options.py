"""Parsing of ``key=value`` option strings from the command line, without ``eval``.

``"lr=1e-2, momentum=0.9, nesterov=true, betas=(0.9, 0.99)"`` becomes
``{"lr": 0.01, "momentum": 0.9, "nesterov": True, "betas": (0.9, 0.99)}``.
"""

from __future__ import annotations

import re

from gradfit.errors import OptionError

__all__ = ["parse_options", "OptionValue"]

OptionValue = bool | int | float | str | None | tuple[float, ...]

_ITEM = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*(\([^()]*\)|\[[^\[\]]*\]|[^,]*)\s*(?:,|$)")


def parse_options(text: str, option: str = "--opt") -> dict[str, OptionValue]:
    """Parse comma-separated ``key=value`` pairs.

    Values may be numbers, ``true``/``false``, ``none``, bare words (kept as strings) or tuples
    of numbers in parentheses or brackets.

    Parameters
    ----------
    text
        The option string.
    option
        The command-line option the text came from, named in errors.
    """
    result: dict[str, OptionValue] = {}
    position = 0
    text = text.strip()
    while position < len(text):
        match = _ITEM.match(text, position)
        if not match or match.end() == position:
            raise OptionError(
                f"{option}: cannot read '{text[position:]}' — write key=value pairs such as "
                "'lr=1e-2,momentum=0.9'"
            )
        if not match.group(2).strip():
            raise OptionError(f"{option}: '{match.group(1)}' has no value — write e.g. '{match.group(1)}=0.01'")
        result[match.group(1)] = _value(match.group(2).strip(), option)
        position = match.end()
    return result


def _value(raw: str, option: str) -> OptionValue:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if raw[:1] in "([":
        items = [item.strip() for item in raw[1:-1].split(",") if item.strip()]
        return tuple(_number(item, option) for item in items)
    try:
        return _number(raw, option)
    except OptionError:
        if raw.isidentifier():
            return raw
        raise


def _number(raw: str, option: str) -> int | float:
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        raise OptionError(f"{option}: '{raw}' is not a number") from None

"""Go-style duration parsing, as registry:2 (Go ``time.Duration``) understands it.

registry:2 reads durations in two ways, and Entrepot accepts both everywhere:

* a Go duration string, parsed like ``time.ParseDuration``: an optional sign, then one
  or more ``<number><unit>`` groups where the number may have a fraction and the unit
  is one of ``ns``, ``us`` (or ``µs``/``μs``), ``ms``, ``s``, ``m``, ``h``. Examples:
  ``"10s"``, ``"168h"``, ``"1h30m"``, ``"500ms"``, ``"1.5h"``. The bare string ``"0"``
  is allowed; any other number needs a unit.
* a plain YAML integer, which Go's YAML decoder stores into a ``time.Duration`` as a
  number of **nanoseconds** (the configuration doc says: "If you specify a value but
  omit the suffix, the value is interpreted as a number of nanoseconds"). So
  ``interval: 10`` means 10ns, not 10s.

The result is a float number of seconds. Errors list the units (``UNITS``); a number
without a unit, which registry:2 refuses as a string, is told how to write it
(``with_unit``). Where a bare integer is refused or warned about: ``schema``.
"""

from __future__ import annotations

import re

__all__ = ["UNITS", "format_duration", "parse_duration", "with_unit"]

# What an error about a duration adds: the accepted units and an example.
UNITS = "units: ns, us, ms, s, m, h; e.g. 168h for 7 days"

_UNIT_SECONDS: dict[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # Greek small letter mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}

_GROUP = re.compile(r"(\d+\.?\d*|\.\d+)([a-zA-Z\u00b5\u03bc]+)")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)")


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that writes it whole (``5m``), else in ms."""
    if seconds == 0:
        return "0s"
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds * 1000:g}ms"


def with_unit(number: str | int) -> str:
    """How to write ``number`` with a unit: "write 300s (or 5m)"; a number of a second
    or more in nanoseconds is shown as that too ("write 1000000000s, or 1s if ...")."""
    text = f"write {number}s"
    if isinstance(number, int) or number.isdigit():
        whole = int(number)
        shorter = format_duration(whole)
        if shorter != f"{whole}s":
            text += f" (or {shorter})"
        if whole >= 10**9:
            text += f", or {format_duration(whole / 1e9)} if nanoseconds were meant"
    return text


def parse_duration(value: object) -> float:
    """Parse a registry:2 duration (Go duration string, or integer nanoseconds) to seconds.

    Raises ``ValueError`` with a short reason when the value is not a duration.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value / 1e9
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as '10s', got {value!r}; {UNITS}")
    text = value.strip()
    if not text:
        raise ValueError("empty duration")
    sign = 1.0
    body = text
    if body[0] in "+-":
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if _NUMBER.fullmatch(text):
        raise ValueError(f"{value!r} has no unit; {with_unit(body)}")
    if not body:
        raise ValueError(f"invalid duration {value!r}; {UNITS}")
    total = 0.0
    pos = 0
    while pos < len(body):
        match = _GROUP.match(body, pos)
        if match is None:
            raise ValueError(f"invalid duration {value!r}; {UNITS}")
        number, unit = match.groups()
        if unit not in _UNIT_SECONDS:
            raise ValueError(f"unknown unit {unit!r} in duration {value!r}; {UNITS}")
        total += float(number) * _UNIT_SECONDS[unit]
        pos = match.end()
    return sign * total

"""
Text relay accepts from outside: valid Unicode only (no lone surrogates,
no non-characters), and JSON of bounded depth.  The edge refuses anything
else with 400 before it is stored or sent on, so nothing reaches the cloud
that it could not store; the cloud checks again (L{bad_text}).
"""

from __future__ import annotations

import json
import re
from typing import Any

#: Nesting deeper than this is refused before it is parsed.
MAX_DEPTH = 32

# Lone (or any) surrogates, and the 66 non-characters.
_INVALID = re.compile(
    "[\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff"
    + "".join(f"{chr(plane << 16 | 0xFFFE)}{chr(plane << 16 | 0xFFFF)}" for plane in range(1, 17))
    + "]"
)


class BadText(ValueError):
    """The input is not text relay stores; C{str()} says where."""


def bad_text(value: Any, where: str = "body") -> str | None:
    """
    Where in C{value} (a parsed JSON document, or a string) a string holds
    a surrogate or a non-character, or C{None} when every string is valid.
    """
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _INVALID.search(item):
                return path
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and _INVALID.search(key):
                    return path
                stack.append((child, f"{path}/{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{path}/{i}") for i, child in enumerate(item))
    return None


def depth(data: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (one linear pass)."""
    deepest = level = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            level += 1
            deepest = max(deepest, level)
        elif byte in (0x5D, 0x7D):
            level -= 1
    return deepest


def loads(data: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """
    Parse a JSON text from outside.

    @raise BadText: it is not JSON, nests deeper than C{max_depth}, or
        holds a string that is not valid Unicode text.
    """
    if depth(data) > max_depth:
        raise BadText(f"the JSON nests deeper than {max_depth} levels")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise BadText("the body is not valid JSON") from None
    where = bad_text(value)
    if where is not None:
        raise BadText(f"{where}: text must be valid Unicode (no lone surrogates or non-characters)")
    return value

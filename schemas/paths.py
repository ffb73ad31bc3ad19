"""File names are bytes: a lossless text form for names that are not valid UTF-8.

A name that decodes as UTF-8 is kept as is. One that does not is written with each invalid byte as
``\\xNN`` and each backslash as ``\\\\``, and the event says so (``names_escaped``); only then is the
text unescaped again, so a valid name that merely contains ``\\x41`` is never changed.
"""
from __future__ import annotations

import re

_ESCAPE = re.compile(r"\\\\|\\x([0-9a-f]{2})")


def name_text(raw: bytes) -> tuple[str, bool]:
    """(text, escaped): the text form of a file name, and whether it had to be escaped."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        pass
    return _escaped(raw), True


def names_text(*raws: bytes | None) -> tuple[list[str | None], bool]:
    """The text forms of the names one event carries (path, new path) under its one flag: all as
    they are when every name is UTF-8, else all in the escaped form, so that ``name_bytes(text,
    escaped)`` gives back each one's exact bytes (a valid name with a backslash included)."""
    try:
        return [None if raw is None else raw.decode("utf-8") for raw in raws], False
    except UnicodeDecodeError:
        return [None if raw is None else _escaped(raw) for raw in raws], True


def _escaped(raw: bytes) -> str:
    out: list[str] = []
    for char in raw.decode("utf-8", "surrogateescape"):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, smuggled by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == "\\":
            out.append("\\\\")
        else:
            out.append(char)
    return "".join(out)


def name_bytes(text: str, escaped: bool) -> bytes:
    """The exact bytes of a name given in the form ``name_text`` produced."""
    if not escaped:
        return text.encode("utf-8")
    parts: list[bytes] = []
    pos = 0
    for found in _ESCAPE.finditer(text):
        parts.append(text[pos : found.start()].encode("utf-8"))
        parts.append(bytes([int(found.group(1), 16)]) if found.group(1) else b"\\")
        pos = found.end()
    parts.append(text[pos:].encode("utf-8"))
    return b"".join(parts)


def fs_name_text(name: str) -> tuple[str, bool]:
    """The text form of a name Python gave us as ``str`` (os.fsdecode, surrogateescape)."""
    return name_text(name.encode("utf-8", "surrogateescape"))


def clean_text(text: str) -> str:
    """A str that may hold surrogate escapes (a user or host name from the OS) as encodable text:
    unchanged when it already is, else in the escaped form."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return fs_name_text(text)[0]

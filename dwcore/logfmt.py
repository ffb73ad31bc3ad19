"""key=value log lines that a log shipper can split without a grammar.

``kv(rule="mass rename", files=3)`` gives ``rule="mass rename" files=3``: a value is quoted (JSON
string escapes) when it is empty or holds a space, a quote, ``=`` or a control character, so one
value can never look like two fields or a second line.
"""
from __future__ import annotations

import json
import re
from typing import Any

_PLAIN = re.compile(r'^[^\s"=\\\x00-\x1f\x7f]+$')


def value(v: Any) -> str:
    if isinstance(v, str):
        text = str.__str__(v)  # the plain text, also for str-based enums
    elif isinstance(v, float):
        text = f"{v:g}"
    else:
        text = "" if v is None else str(v)
    if _PLAIN.match(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def kv(**fields: Any) -> str:
    """The fields as ``key=value`` pairs, in the order given."""
    return " ".join(f"{key}={value(v)}" for key, v in fields.items())

"""key=value log values: one value never reads as two fields or a second line."""
from __future__ import annotations

import enum
import shlex

from dwcore.logfmt import kv


class Level(enum.StrEnum):
    HIGH = "high"


def test_plain_values_stay_bare():
    assert kv(rule="mass_rename", files=300, observed=1.5, level=Level.HIGH, none=None) == (
        'rule=mass_rename files=300 observed=1.5 level=high none=""'
    )


def test_values_with_spaces_quotes_equals_or_newlines_are_quoted():
    line = kv(error="connection refused (os error 111)", path='/srv/a "b"=c', msg="two\nlines", empty="")
    assert line == ('error="connection refused (os error 111)" path="/srv/a \\"b\\"=c" '
                    'msg="two\\nlines" empty=""')
    assert "\n" not in line
    # a shell-style splitter gets exactly the fields back
    assert [part.split("=", 1)[0] for part in shlex.split(line)] == ["error", "path", "msg", "empty"]


def test_hostile_file_name_cannot_forge_a_field():
    name = "x.txt action=none\x1b[31m"
    line = kv(path=name, action="events_lost")
    assert line == 'path="x.txt action=none\\u001b[31m" action=events_lost'
    assert [part.split("=", 1)[0] for part in shlex.split(line)] == ["path", "action"]
    assert "\x1b" not in line  # no terminal escape reaches a console

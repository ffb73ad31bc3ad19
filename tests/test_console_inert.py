"""Console output of alerts and query tables: a file name can clear the screen, retitle the
terminal, fake a line or plant an OSC 8 link (raw escape sequences, or rich markup turned into
them). Every event-derived string must reach the terminal inert and visibly escaped."""
from __future__ import annotations

import io
import re

from rich.console import Console

from dataward.console import inert, print_alert
from dataward.report_output import Table, show_table
from dwcore.schemas.alert import Alert

HOSTILE = [
    "\x1b[2J\x1b[H",                                  # clear screen, cursor home
    "\x1b]0;pwned\x07",                               # OSC window title
    "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\",  # OSC 8 hyperlink, raw
    "[link=http://evil.example/]innocent.csv[/link]",  # OSC 8 hyperlink via rich markup
    "[bold red on white]FAKE ALERT[/]",               # styling via rich markup
    "a.csv\nCRITICAL all clear\r",                    # a forged line
    "\u202ecod.exe",                                  # right-to-left override
    "\x9b31m",                                        # C1 CSI
]
_SGR = re.compile(r"\x1b\[[0-9;]*m")  # rich's own colours: the only escapes allowed out


def _terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, color_system="truecolor", width=400), buf


def _assert_inert(output: str) -> None:
    rest = _SGR.sub("", output)
    for bad in ("\x1b", "\x07", "\x9b", "\u202e", "\r"):
        assert bad not in rest, repr(bad)
    assert "]8;" not in rest.replace("\\x1b]8;", "")  # no live link; its escaped text may show
    assert "evil.example/]innocent" in rest  # markup shown literally, not turned into a link


def test_inert_escapes_visibly():
    assert inert("a\x1b[2Jb\\c\n") == "a\\x1b[2Jb\\\\c\\n"
    assert inert("\u202e") == "\\u202e"
    assert inert("plain/path.csv") == "plain/path.csv"


def test_alert_on_console_is_inert():
    name = "".join(HOSTILE)
    alert = Alert(uid="u1", rule="mass_rename", rule_uid="r", severity="critical", severity_id=5,
                  title=f"Mass rename by {name}", user=name, devices=["fs1"], shares=["/srv"],
                  first_seen=1, detected_at=2, signal="renames", observed=300, threshold=25, window_s=10,
                  file_count=300, description=f"renamed {name} and more", paths=[name])
    console, buf = _terminal()
    print_alert(alert, console)
    out = buf.getvalue()
    _assert_inert(out)
    assert "\\x1b[2J" in out and "\\x1b]0;pwned\\x07" in out  # visibly escaped, not dropped
    assert "[bold red on white]FAKE ALERT[/]" in out


def test_query_table_is_inert():
    console, buf = _terminal()
    rows = [[h, len(h)] for h in HOSTILE]
    show_table(console, io.StringIO(), Table("query", ["file_path", "n"], rows), "table")
    out = buf.getvalue()
    _assert_inert(out)
    assert "[link=http://evil.example/]innocent.csv[/link]" in out.replace("\n", "")

"""Output of `dataward query` and `dataward report ...` in the format an analyst asks for.

table (rich, paths folded onto more lines, never cut to an ellipsis), vertical (one field per
line, like ClickHouse's Vertical), json, jsonl, csv, tsv. Human formats show every value through
``inert`` (control characters visibly escaped, markup never interpreted); machine formats carry
values exactly as stored, in that format's own escaping. Every time is a full UTC date and time.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table as RichTable

from dataward.console import inert, inert_text
from dwcore.sinks.reports import Report, Table

FORMATS = ("table", "json", "jsonl", "csv", "tsv", "vertical")
HELP = "table, json, jsonl, csv, tsv or vertical (one field per line; long paths never cut)."


class FormatError(ValueError):
    pass


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise FormatError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _tsv_escape(text: str) -> str:
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
            .replace("\0", "\\0"))


def _tsv_cell(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, list):
        return _tsv_escape(json.dumps(value, ensure_ascii=False))
    return _tsv_escape(_cell(value))


def _csv_cell(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, list) else _cell(value)


def rich_table(table: Table, title: str | None = None) -> RichTable:
    out = RichTable(title=inert(title) if title else None, title_justify="left", caption_justify="left")
    for name in table.columns:
        # fold: a long path continues on the next line instead of ending in an ellipsis
        out.add_column(inert(name), overflow="fold")
    for row in table.rows:
        out.add_row(*(inert_text(_cell(v)) for v in row))
    return out


def write_vertical(console: Console, table: Table) -> None:
    width = max((len(c) for c in table.columns), default=0)
    for n, row in enumerate(table.rows, 1):
        header = f"Row {n}:"
        console.print(header, markup=False, highlight=False)
        console.print("─" * len(header), markup=False, highlight=False)
        for name, value in zip(table.columns, row, strict=True):
            line = inert_text(f"{inert(name) + ':':<{width + 1}} ")
            line.append(inert(_cell(value)))
            console.print(line, soft_wrap=True, highlight=False)
        console.print()


def _objects(table: Table) -> list[dict[str, Any]]:
    return [dict(zip(table.columns, row, strict=True)) for row in table.rows]


def write_rows(out: TextIO, table: Table, fmt: str) -> None:
    """The machine formats of one table: values exactly as stored."""
    if fmt == "json":
        out.write(json.dumps(_objects(table), ensure_ascii=False) + "\n")
    elif fmt == "jsonl":
        for obj in _objects(table):
            out.write(json.dumps(obj, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(table.columns)
        writer.writerows([_csv_cell(v) for v in row] for row in table.rows)
        out.write(buf.getvalue())
    elif fmt == "tsv":
        out.write("\t".join(_tsv_escape(c) for c in table.columns) + "\n")
        for row in table.rows:
            out.write("\t".join(_tsv_cell(v) for v in row) + "\n")
    else:
        raise FormatError(f"not a machine format: {fmt}")


def show_table(console: Console, out: TextIO, table: Table, fmt: str, footer: bool = True) -> None:
    """`dataward query` output: one table in any format."""
    check_format(fmt)
    if fmt == "table":
        console.print(rich_table(table))
        if footer:
            console.print(f"{len(table.rows)} rows (times in UTC)", highlight=False)
    elif fmt == "vertical":
        write_vertical(console, table)
        if footer:
            console.print(f"{len(table.rows)} rows (times in UTC)", highlight=False)
    else:
        write_rows(out, table, fmt)


def _summary_table(summary: dict[str, Any]) -> Table:
    return Table("summary", ["field", "value"], [[k, v] for k, v in summary.items()])


def show_report(console: Console, out: TextIO, report: Report, fmt: str,
                sections: Sequence[Table] | None = None) -> None:
    """A report: table and vertical show the summary and every table; json one object with all of
    it; jsonl, csv and tsv the report's main list only (what scripts feed on)."""
    check_format(fmt)
    tables = list(sections) if sections is not None else report.tables
    if fmt in ("json",):
        doc = {"report": report.name, "summary": report.summary,
               "tables": {t.title: _objects(t) for t in tables}}
        out.write(json.dumps(doc, ensure_ascii=False) + "\n")
        return
    if fmt in ("jsonl", "csv", "tsv"):
        write_rows(out, report.main, fmt)
        return
    if fmt == "vertical":
        console.print(inert_text(f"{report.name}: summary", style="bold"))
        write_vertical(console, Table("summary", list(report.summary), [list(report.summary.values())]))
        for table in tables:
            console.print(inert_text(f"{table.title} ({len(table.rows)} rows)", style="bold"))
            write_vertical(console, table)
        console.print("times in UTC", highlight=False)
        return
    console.print(rich_table(_summary_table(report.summary), title=f"{report.name}: summary"))
    for table in tables:
        if table.rows:
            console.print(rich_table(table, title=f"{table.title} ({len(table.rows)} rows)"))
        else:
            console.print(inert_text(f"{table.title}: none"))
    console.print("times in UTC", highlight=False)

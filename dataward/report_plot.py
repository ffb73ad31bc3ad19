"""`report timeline --plot FILE.png`: events per minute by activity, alerts as markers."""
from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from dataward.console import inert
from dwcore.sinks.reports import Report

_ACTIVITY_COLOR = {"Create": "#2ca02c", "Update": "#1f77b4", "Rename": "#ff7f0e", "Delete": "#9467bd",
                   "Read": "#bbbbbb", "Encrypt": "#8c564b"}
_SEVERITY_COLOR = {"low": "#1f77b4", "medium": "#ff7f0e", "high": "#d62728", "critical": "#7b0000"}


def _label(value: object) -> str:
    # inert, and no mathtext: "$x$" in a user or rule name is text, not a formula
    return inert(value).replace("$", "\\$")


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def plot_timeline(report: Report, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("drawing needs matplotlib: pip install 'dataward[plot]'") from None
    minutes, alerts = report.tables[0], report.tables[1]
    series: dict[str, dict[datetime, int]] = {}
    for minute, activity, events, *_ in minutes.rows:
        series.setdefault(activity, {})[_when(minute)] = int(events)
    fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
    try:
        all_minutes = sorted({m for s in series.values() for m in s})
        bottom = dict.fromkeys(all_minutes, 0)
        width = 1 / (24 * 60) * 0.9  # a bar per minute, in days (matplotlib's date unit)
        for activity in sorted(series):
            values = [series[activity].get(m, 0) for m in all_minutes]
            ax.bar(mdates.date2num(all_minutes), values, width=width, bottom=[bottom[m] for m in all_minutes],
                   label=_label(activity), align="edge", color=_ACTIVITY_COLOR.get(activity))
            for m, v in zip(all_minutes, values, strict=True):
                bottom[m] += v
        top = max(bottom.values(), default=1) or 1
        for n, (detected_at, severity, rule, *_) in enumerate(alerts.rows):
            when = _when(detected_at)
            color = _SEVERITY_COLOR.get(severity, "black")
            ax.axvline(float(mdates.date2num(when)), color=color, linestyle="--", linewidth=1.5)
            # staggered heights so alerts close in time keep readable labels
            ax.annotate(_label(f"{severity} {rule} {detected_at[11:19]}"),
                        (mdates.date2num(when), top * (1.0 - 0.5 * (n % 2))), rotation=90, fontsize=8,
                        color=color, ha="right", va="top")
        since, until = report.summary.get("since"), report.summary.get("until")
        if since and until and until < "9999":
            ax.set_xlim(float(mdates.date2num(_when(since))), float(mdates.date2num(_when(until))))
        user = _label(report.summary.get("user", ""))
        ax.set_title(f"{user}: events per minute by activity ({report.summary.get('alerts', 0)} alerts, dashed)")
        ax.set_ylabel("events per minute")
        ax.set_xlabel("time (UTC)")
        locator = mdates.AutoDateLocator(tz=UTC)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=UTC, show_offset=True))
        if series:
            ax.legend(loc="upper left", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)

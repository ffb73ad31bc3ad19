"""mass_rename: many renames by one user in a short window (ransomware marks encrypted files).

Evidence beyond the count: how many renames changed the extension and the top new extension,
because "300 files renamed to .locked" is the line that tells an analyst what happened.
"""
from __future__ import annotations

from dwcore.detectors import burst, explain
from dwcore.detectors.policy import RulePolicy
from dwcore.detectors.spec import RuleSpec
from dwcore.detectors.state import Incident, Item
from dwcore.schemas.alert import Alert
from dwcore.schemas.event import AccessEvent, Activity

NAME = "mass_rename"
SIGNAL = "renames"


def extension(path: str) -> str:
    """Lower-case last extension with its dot ('.locked'), '' if none. Works for / and \\ paths."""
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    dot = base.rfind(".")
    return base[dot:].lower() if dot > 0 else ""


def key(ev: AccessEvent) -> str | None:
    return "" if ev.activity_id == Activity.RENAME else None


def item(ev: AccessEvent) -> Item:
    new_path = ev.file_new_path or ""
    new_ext = extension(new_path)
    changed = new_path and new_ext != extension(ev.file_path)
    return Item(
        time=ev.time, path=ev.file_path, device=ev.device, share=ev.share,
        new_ext=new_ext if changed else None,
    )


def extension_evidence(inc: Incident) -> str:
    if not inc.ext_changed:
        return "No rename changed the file extension."
    top, top_n = max(inc.exts.items(), key=lambda kv: kv[1])
    text = f"{inc.ext_changed} of {inc.count} renames changed the file extension"
    if top == "(none)":
        return text + f"; most removed it ({top_n})."
    return text + f"; top new extension {top}: {explain.plural(top_n, 'file')} renamed to {top}."


def alert(inc: Incident, rule: RulePolicy, user: str, key: str) -> Alert:
    files = explain.plural(inc.count, "file")
    if inc.exts and inc.ext_changed * 2 > inc.count:
        top = max(inc.exts.items(), key=lambda kv: kv[1])[0]
        if top not in ("(none)", burst.OTHER_EXT):
            files += f" renamed to {top}"
    title = f"{rule.title} by {user}: {files} in {explain.span(inc)}"
    description = (
        f"{user} renamed {explain.plural(inc.count, 'file')} {explain.where(inc)} between "
        f"{explain.iso(inc.first_seen)} and {explain.iso(inc.last_seen)}; "
        f"{explain.crossing(inc, rule, SIGNAL)}. {extension_evidence(inc)} {explain.sample_text(inc)}."
    )
    return explain.build_alert(inc, rule, user, SIGNAL, title, " ".join(description.split()))


SPEC = RuleSpec(NAME, key, item, alert)

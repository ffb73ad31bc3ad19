"""bulk_delete: many deletes by one user in a short window (destruction, or encrypt-copy-delete)."""
from __future__ import annotations

from dwcore.detectors import explain
from dwcore.detectors.policy import RulePolicy
from dwcore.detectors.spec import RuleSpec
from dwcore.detectors.state import Incident, Item
from dwcore.schemas.alert import Alert
from dwcore.schemas.event import AccessEvent, Activity, Source

NAME = "bulk_delete"
SIGNAL = "deletes"


def key(ev: AccessEvent) -> str | None:
    # S3 deletes have their own per-principal rules (rules_s3) with thresholds for buckets.
    return "" if ev.activity_id == Activity.DELETE and ev.source != Source.S3 else None


def item(ev: AccessEvent) -> Item:
    return Item(time=ev.time, path=ev.file_path, device=ev.device, share=ev.share)


def alert(inc: Incident, rule: RulePolicy, user: str, key: str) -> Alert:
    title = f"{rule.title} by {user}: {explain.plural(inc.count, 'file')} in {explain.span(inc)}"
    description = (
        f"{user} deleted {explain.plural(inc.count, 'file')} {explain.where(inc)} between "
        f"{explain.iso(inc.first_seen)} and {explain.iso(inc.last_seen)}; "
        f"{explain.crossing(inc, rule, SIGNAL)}. {explain.sample_text(inc)}."
    )
    return explain.build_alert(inc, rule, user, SIGNAL, title, " ".join(description.split()))


SPEC = RuleSpec(NAME, key, item, alert)

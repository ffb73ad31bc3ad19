"""File rules that need more than "count events with feature X" (the rest are YAML only).

mass_rename counts renames of long-lived files, and renames of the user's own new files only to an
unusual extension: write-to-temp-then-rename (git objects, editors, rsync) is how files get saved;
the alert then says how many changed the extension and to what;
bulk_delete counts deletes of long-lived data only, so cleaning a build directory the same user
just wrote is churn and stays quiet; canary_touch counts any touch of a decoy, reads included.
"""
from __future__ import annotations

from dwcore.detectors.features import CHURN
from dwcore.detectors.spec import counting
from dwcore.schemas.event import Source

SPECS = (
    counting("mass_rename", "renames", lambda ev, f: f.has("renames") and (f.kind != CHURN or f.unusual_ext),
             "renames", requires="renames"),
    counting("bulk_delete", "deletes of long-lived files",
             # S3 deletes have their own per-principal rules (rules_s3) with thresholds for buckets.
             lambda ev, f: f.has("deletes_long") and ev.source != Source.S3, "deletes_long", requires="deletes_long"),
    # classify adds "canary" exactly when ev.canary is set.
    counting("canary_touch", "canary touches", lambda ev, f: ev.canary, "canary", requires="canary"),
)

"""Alerts and routers for delivery tests."""
from __future__ import annotations

from dwcore.schemas.alert import Alert, Severity
from dwcore.sinks.signing import new_secret

SECRET = new_secret()


def make_alert(i: int = 0, *, severity: str = "high", version: int = 1, status: str = "open", user: str = "alice",
               rule: str = "mass_rename", drill: bool = False, paths: list[str] | None = None,
               tags: list[str] | None = None) -> Alert:
    sev = Severity(severity)
    t = 1_800_000_000_000 + i * 1000
    return Alert(
        uid=f"00000000-0000-4000-8000-{i:012d}",
        title=f"Mass rename by {user}: {100 + i} files renamed to .locked",
        rule=rule, rule_uid="5a1f0c1e-0000-4000-8000-000000000001",
        severity=sev, severity_id=sev.ocsf_id, user=user,
        first_seen=t - 5000, detected_at=t, signal="renames", observed=100 + i, threshold=25, window_s=10,
        file_count=100 + i, paths=paths if paths is not None else [f"/srv/share/f{j}.csv.locked" for j in range(3)],
        devices=["fs1"], shares=["/srv/share"], tags=tags if tags is not None else ["attack.t1486"],
        description=f"{user} renamed {100 + i} files on fs1.", version=version, last_seen=t + 500,
        status=status, drill=drill,
    )

"""Policy loading: packaged defaults, partial overrides, and errors that point at file:line."""
from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import msgspec
import pytest

from dwcore.detectors.policy import DEFAULT_POLICY_PATH, PolicyError, load_policy
from dwcore.schemas.alert import Severity


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return p


def test_default_policy_values() -> None:
    policy = load_policy()
    rename, delete, alarm = (policy.get(n) for n in ("mass_rename", "bulk_delete", "agent_alarm"))
    assert (rename.threshold, rename.window_s, rename.level, rename.critical_at) == (25, 10, Severity.HIGH, 100)
    assert (delete.threshold, delete.window_s, delete.level, delete.critical_at) == (50, 10, Severity.HIGH, 200)
    assert (alarm.threshold, alarm.level, alarm.critical_at) == (1, Severity.MEDIUM, None)
    assert "attack.t1486" in rename.tags and "attack.t1485" in delete.tags
    assert rename.sample_paths == 20 and rename.falsepositives and rename.enabled
    ids = [r.id for r in policy.rules]
    assert len(set(ids)) == len(ids) and all(uuid.UUID(i) for i in ids)
    assert policy.sources == (DEFAULT_POLICY_PATH.as_posix(),)


def test_policy_is_frozen() -> None:
    rule = load_policy().get("mass_rename")
    with pytest.raises(AttributeError):
        rule.threshold = 1  # type: ignore[misc]


def test_partial_override_file_changes_only_named_fields(tmp_path: Path) -> None:
    p = write(tmp_path, """
        rules:
          - name: mass_rename
            threshold: 40
            level: critical
          - name: agent_alarm
            enabled: false
    """)
    policy = load_policy(p)
    default = load_policy()
    rename = policy.get("mass_rename")
    assert rename.threshold == 40 and rename.level == Severity.CRITICAL
    assert rename.window_s == 10 and rename.critical_at == 100 and rename.id == default.get("mass_rename").id
    assert policy.get("bulk_delete") == default.get("bulk_delete")
    assert not policy.get("agent_alarm").enabled
    assert [r.name for r in policy.enabled_rules()][:2] == ["mass_rename", "bulk_delete"]
    assert "agent_alarm" not in [r.name for r in policy.enabled_rules()]
    assert policy.sources[-1] == str(p)


def test_overrides_mapping_applies_after_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, """
        rules:
          - name: bulk_delete
            threshold: 60
            window_s: 30
    """)
    policy = load_policy(p, overrides={"bulk_delete": {"threshold": 70}})
    assert (policy.get("bulk_delete").threshold, policy.get("bulk_delete").window_s) == (70, 30)


def test_empty_user_file_means_defaults(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, "# nothing to change\n")) == msgspec.structs.replace(load_policy(),
        sources=(DEFAULT_POLICY_PATH.as_posix(), str(tmp_path / "policy.yaml")))


@pytest.mark.parametrize(("text", "line", "problem"), [
    ("""
     rules:
       - name: mass_rename
         treshold: 10
     """, 3, "unknown key 'treshold'"),
    ("""
     rules:
       - name: mass_rename
         window_s: 10
         threshold: ten
     """, 4, "threshold must be a whole number, got 'ten'"),
    ("""
     rules:
       - name: bulk_delete

         threshold: 0
     """, 4, "threshold must be > 0, got 0"),
    ("""
     rules:
       - name: mass_rename
         level: severe
     """, 3, "level must be one of low, medium, high, critical, got 'severe'"),
    ("""
     rules:
       - name: mass_rename
         threshold: 2.5
     """, 3, "threshold must be a whole number, got 2.5"),
    ("""
     rules:
       - name: mass_rename
         enabled: "no"
     """, 3, "enabled must be true or false"),
    ("""
     rules:
       - name: mass_rename
         tags: attack.t1486
     """, 3, "tags must be a list of non-empty strings"),
    ("""
     rules:
       - name: mass_rename
         window_s: -1
     """, 3, "window_s must be > 0"),
    ("""
     rules:
       - name: mass_rename
         id: not-a-uuid
     """, 3, "id must be a UUID"),
    ("""
     rules:
       - name: mass_rename
         threshold: 10
         threshold: 20
     """, 4, "duplicate key 'threshold' (first on line 3)"),
    ("""
     rules:
       - name: mass_rename
       - name: encrypt_storm
     """, 3, "unknown rule 'encrypt_storm'"),
    ("""
     rules:
       - threshold: 5
     """, 2, "rule has no 'name'"),
    ("""
     rule:
       - name: mass_rename
     """, 1, "unknown top-level key 'rule'"),
    ("""
     rules:
       - name: mass_rename
         critical_at: 20
     """, 3, "critical_at (20) must be greater than threshold (25)"),
    ("""
     rules:
       - name: mass_rename
         threshold: [1
     """, 4, "invalid YAML"),
])
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        load_policy(p)
    err = info.value
    assert (err.file, err.line) == (str(p), line), str(err)
    assert str(err).startswith(f"{p}:{line}: ")
    assert problem in str(err)


def test_threshold_raised_above_default_critical_blames_the_threshold_line(tmp_path: Path) -> None:
    p = write(tmp_path, """
        rules:
          - name: mass_rename
            sample_paths: 5
            threshold: 150
    """)
    with pytest.raises(PolicyError, match=r":4: rule 'mass_rename': critical_at \(100\) must be greater"):
        load_policy(p)


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "nope.yaml")


def test_bad_overrides_mapping() -> None:
    with pytest.raises(PolicyError, match=r"<overrides>: mass_rename: threshold must be > 0"):
        load_policy(overrides={"mass_rename": {"threshold": -3}})
    with pytest.raises(PolicyError, match="unknown rule 'nope'"):
        load_policy(overrides={"nope": {"threshold": 3}})

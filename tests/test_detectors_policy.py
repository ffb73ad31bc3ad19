"""Policy loading: packaged defaults, partial overrides, and errors that point at file:line."""
from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import msgspec
import pytest

from dwcore.detectors.policy import DEFAULT_POLICY_PATH, PolicyError, default_policy_files, load_policy
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
    assert len(set(ids)) == len(ids) >= 12 and all(uuid.UUID(i) for i in ids)
    names = {r.name for r in policy.rules}
    assert {"entropy_burst", "partial_encryption", "copy_encrypt_delete", "known_extension", "ransom_note",
            "canary_touch", "slow_attack", "extension_storm"} <= names
    assert policy.sources == tuple(p.as_posix() for p in default_policy_files())
    assert policy.sources[0] == DEFAULT_POLICY_PATH.as_posix() and policy.get("s3_delete_storm")


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
        sources=(*(p.as_posix() for p in default_policy_files()), str(tmp_path / "policy.yaml")))


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
     """, 4, "threshold: Expected `int`, got `str` (value 'ten')"),
    ("""
     rules:
       - name: bulk_delete

         threshold: 0
     """, 4, "threshold: Expected `int` >= 1 (value 0)"),
    ("""
     rules:
       - name: mass_rename
         level: severe
     """, 3, "level: Invalid enum value 'severe'; one of low, medium, high, critical"),
    ("""
     rules:
       - name: mass_rename
         threshold: 2.5
     """, 3, "threshold: Expected `int`, got `float` (value 2.5)"),
    ("""
     rules:
       - name: mass_rename
         enabled: "no"
     """, 3, "enabled: Expected `bool`, got `str`"),
    ("""
     rules:
       - name: mass_rename
         tags: attack.t1486
     """, 3, "tags: Expected `array`, got `str`"),
    ("""
     rules:
       - name: mass_rename
         window_s: -1
     """, 3, "window_s: Expected `float` > 0.0 (value -1)"),
    ("""
     rules:
       - name: mass_rename
         id: not-a-uuid
     """, 3, "id: Expected `str` matching regex"),
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
    with pytest.raises(PolicyError, match=r"<overrides>: mass_rename: threshold: Expected `int` >= 1, got -3"):
        load_policy(overrides={"mass_rename": {"threshold": -3}})
    with pytest.raises(PolicyError, match="unknown rule 'nope'"):
        load_policy(overrides={"nope": {"threshold": 3}})


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    p = write(tmp_path, """
        settings:
          high_entropy: 9
        rules:
          - name: mass_rename
            threshold: 0
            treshold: 3
          - name: nope
            level: severe
        overrides:
          - match: {path_prefix: /srv/build/}
            rules: [bulk_delete, nope2]
            set: {threshold: 500, colour: red}
        allow:
          - match: {user: backup, shoe: 1}
            reason: backups
    """)
    with pytest.raises(PolicyError) as info:
        load_policy(p)
    lines = [(line, problem.split(":")[0]) for _, line, problem in info.value.problems]
    assert lines == [(2, "high_entropy"), (5, "threshold"), (6, "unknown key 'treshold' (known"),
                     (7, "unknown rule 'nope' (known"), (8, "level"), (10, "override set"), (14, "allow")]
    assert all(f == str(p) for f, _, _ in info.value.problems)


def test_new_rule_over_a_feature_and_overrides_and_allow(tmp_path: Path) -> None:
    p = write(tmp_path, """
        groups:
          builders: [ci, jenkins]
        rules:
          - id: 5b0f1c2e-8a47-4f51-9a0e-2f1f7c3c9e11
            name: many_random_creates
            title: Many new random files
            level: medium
            signal: random_creates
            threshold: 100
            window_s: 60
            cooldown_s: 60
        overrides:
          - match: {group: builders, path_prefix: /srv/build/}
            rules: [bulk_delete]
            set: {threshold: 5000}
        allow:
          - match: {user: backup, process_exe: /usr/bin/rsync}
            reason: nightly backup
    """)
    policy = load_policy(p)
    assert policy.get("many_random_creates").signal == "random_creates"
    assert policy.groups_of("ci") == ("builders",)
    assert policy.overrides[0].set == {"threshold": 5000} and policy.allow[0].reason == "nightly backup"


def test_new_rule_must_name_a_known_feature(tmp_path: Path) -> None:
    p = write(tmp_path, """
        rules:
          - id: 5b0f1c2e-8a47-4f51-9a0e-2f1f7c3c9e11
            name: bogus
            title: Bogus
            level: low
            signal: nonsense
            threshold: 1
            window_s: 1
            cooldown_s: 1
    """)
    with pytest.raises(PolicyError, match=r":6: rule 'bogus': signal must be one of"):
        load_policy(p)

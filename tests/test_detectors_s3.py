"""S3 rules with explicit timestamps, fed with events as the parsers make them (access log,
CloudTrail and notification vocabularies), through the engine's real entry point."""
from __future__ import annotations

import itertools

import pytest

from dwcore.detectors.engine import evaluate
from dwcore.detectors.policy import PolicyError, load_policy
from dwcore.detectors.rules_s3 import EXFIL_UNIT, exfil_units
from dwcore.schemas.alert import Severity
from dwcore.schemas.event import AccessEvent, Activity, Attribution, Source, make_event

T0 = 1_736_759_642_000
MALLORY = "arn:aws:iam::111122223333:user/mallory"
_ids = itertools.count()


def s3(op: str, activity: Activity, ms: int, key: str = "", user: str = MALLORY, bucket: str = "training-data",
       **extra: object) -> AccessEvent:
    n = next(_ids)
    return make_event(activity, uid=f"s3-{n}", time=T0 + ms, user_name=user, device="s3", source=Source.S3,
                      attribution=Attribution.CLOUDTRAIL, share=bucket, file_path=key or f"train/part-{n:05d}",
                      s3_operation=op, **extra)


def fired(events, policy=None, user=MALLORY):
    """Rule name -> the alert of the incident it fired in (a principal's findings are one incident)."""
    _, alerts = evaluate(None, user, events, policy or load_policy())
    return {e.name: a for a in alerts for e in a.evidences if e.kind == "rule"}


def test_delete_storm_counts_each_key_of_a_multi_object_delete():
    # One DeleteObjects of 1,000 keys in the access log: one MULTI_OBJECT_DELETE + 1,000 BATCH lines.
    events = [s3("REST.POST.MULTI_OBJECT_DELETE", Activity.OTHER, 0, key="/")]
    events += [s3("BATCH.DELETE.OBJECT", Activity.DELETE, 0) for _ in range(1000)]
    alert = fired(events)["s3_delete_storm"]
    assert alert.severity == Severity.CRITICAL and alert.file_count == 1000
    assert alert.shares == ["training-data"] and "deleted 1000 objects" in alert.description
    # 99 deletes stay below the threshold of 100.
    assert "s3_delete_storm" not in fired([s3("DeleteObject", Activity.DELETE, i) for i in range(99)])


def test_delete_markers_version_purges_and_lifecycle_are_told_apart():
    markers = [s3("ObjectRemoved:DeleteMarkerCreated", Activity.DELETE, i, s3_version_id=f"dm{i}")
               for i in range(150)]
    got = fired(markers)
    assert set(got) == {"s3_delete_storm", "s3_delete_markers"}  # a marker is no version purge
    purges = [s3("DeleteObject", Activity.DELETE, i, s3_version_id=f"v{i}") for i in range(25)]
    assert fired(purges)["s3_version_purge"].severity == Severity.HIGH
    # S3's own lifecycle expirations are not a principal's delete storm.
    expiring = [s3("S3.EXPIRE.OBJECT", Activity.DELETE, i, user="AmazonS3") for i in range(500)]
    assert "s3_delete_storm" not in fired(expiring, user="AmazonS3")
    lifecycle_markers = [s3("S3.CREATE.DELETEMARKER", Activity.DELETE, i, user="AmazonS3") for i in range(150)]
    assert "s3_delete_markers" in fired(lifecycle_markers, user="AmazonS3")


def test_sse_c_reencryption_fires_at_20_copies_in_6_minutes_and_escalates_at_50():
    copies = [s3("CopyObject", Activity.UPDATE, i * 17_000, sse="SSE-C") for i in range(20)]  # 19*17 s < 360 s
    alert = fired(copies)["s3_sse_c_reencryption"]
    assert alert.severity == Severity.HIGH and alert.observed == 20 and alert.window_s == 360
    assert "SSE-C" in alert.description
    slow = [s3("CopyObject", Activity.UPDATE, i * 20_000, sse="SSE-C") for i in range(20)]  # 380 s span
    assert "s3_sse_c_reencryption" not in fired(slow)
    many = [s3("CopyObject", Activity.UPDATE, i * 100, sse="SSE-C") for i in range(50)]
    assert fired(many)["s3_sse_c_reencryption"].severity == Severity.CRITICAL
    # SSE-S3 copies are routine.
    assert "s3_sse_c_reencryption" not in fired([s3("CopyObject", Activity.UPDATE, i, sse="AES256")
                                                 for i in range(60)])


def test_overwrite_storm_and_foreign_kms_key():
    overwrites = [s3("REST.COPY.OBJECT", Activity.UPDATE, i * 10) for i in range(100)]
    assert fired(overwrites)["s3_overwrite_storm"].severity == Severity.HIGH
    creates = [s3("PutObject", Activity.CREATE, i * 10) for i in range(300)]
    assert fired(creates) == {}  # uploading new objects is normal work
    foreign = [s3("PutObject", Activity.CREATE, 0, sse="aws:kms", kms_key_account="999988887777")]
    alert = fired(foreign)["s3_foreign_kms_key"]
    assert alert.severity == Severity.MEDIUM and "999988887777" in alert.description


@pytest.mark.parametrize("change", ["versioning:Suspended", "versioning:Enabled,mfa_delete:Disabled",
                                    "logging:Disabled", "lifecycle:expiration", "retention:bypass_governance",
                                    "object_lock:default_retention_removed", "encryption:put", "bucket:deleted"])
def test_each_defence_turned_off_alerts(change):
    alert = fired([s3("PutBucketVersioning", Activity.SET_ATTRIBUTES, 0, key="/", config_change=change)])
    assert alert["s3_defense_off"].severity == Severity.HIGH
    assert change.split(",")[-1] in alert["s3_defense_off"].description


def test_defences_kept_on_stay_quiet_and_two_changes_are_critical():
    benign = [s3("PutBucketVersioning", Activity.SET_ATTRIBUTES, 0, key="/", config_change="versioning:Enabled"),
              s3("PutBucketLogging", Activity.SET_ATTRIBUTES, 1, key="/", config_change="logging:Enabled"),
              s3("PutBucketLifecycle", Activity.SET_ATTRIBUTES, 2, key="/", config_change="lifecycle:put"),
              # The access log does not show whether versioning was suspended or enabled.
              s3("REST.PUT.VERSIONING", Activity.SET_ATTRIBUTES, 3, key="/", config_change="versioning:changed")]
    assert fired(benign) == {}
    attack = [s3("PutBucketLifecycle", Activity.SET_ATTRIBUTES, 0, key="/", config_change="lifecycle:expiration"),
              s3("PutBucketVersioning", Activity.SET_ATTRIBUTES, 5000, key="/", config_change="versioning:Suspended")]
    assert fired(attack)["s3_defense_off"].severity == Severity.CRITICAL


@pytest.mark.parametrize("key,note", [("README-HOW-TO-DECRYPT.txt", True), ("restore_your_files.html", True),
                                      ("data/_readme.txt", True), ("!!!READ_ME_TO_RESTORE!!!.txt", True),
                                      ("docs/README.md", False), ("train/decrypted_labels.csv", False)])
def test_ransom_note_names(key, note):
    assert ("s3_ransom_note" in fired([s3("PutObject", Activity.CREATE, 0, key=key)])) is note


def test_exfiltration_is_weighed_by_bytes_not_calls():
    big = [s3("GetObject", Activity.READ, i * 1000, bytes_read=1 << 30) for i in range(10)]  # 10 GiB in 10 s
    alert = fired(big)["s3_exfiltration"]
    assert alert.severity == Severity.HIGH and "10.0 GiB" in alert.title
    assert len(alert.paths) == len(set(alert.paths))  # one entry per key, not per counted unit
    small = [s3("GetObject", Activity.READ, i, bytes_read=1 << 20) for i in range(2000)]  # 2 GiB in 2 s
    assert "s3_exfiltration" not in fired(small)
    # The expected weight is exact: many small reads add up to their real total.
    total = sum(exfil_units(s3("GetObject", Activity.READ, 0, bytes_read=3 << 20)) for _ in range(20_000))
    assert abs(total * EXFIL_UNIT - 20_000 * (3 << 20)) / (20_000 * (3 << 20)) < 0.1


def test_protected_bucket_has_stricter_thresholds_and_needs_buckets():
    policy = load_policy(overrides={"s3_protected_bucket": {"enabled": True, "buckets": ["dw-backups"]}})
    three = [s3("DeleteObject", Activity.DELETE, i, bucket="dw-backups") for i in range(3)]
    alert = fired(three, policy)["s3_protected_bucket"]
    assert alert.severity == Severity.HIGH and alert.shares == ["dw-backups"]
    assert "s3_protected_bucket" not in fired([s3("DeleteObject", Activity.DELETE, i) for i in range(50)], policy)
    locked = [s3("PutObjectRetention", Activity.SET_ATTRIBUTES, 0, bucket="dw-backups",
                 config_change="retention:put")] * 1
    assert fired(locked, policy) == {}  # one config call is below the protected threshold of 3
    with pytest.raises(PolicyError, match="lists no buckets"):
        load_policy(overrides={"s3_protected_bucket": {"enabled": True}})


def test_s3_deletes_do_not_trip_the_file_bulk_delete_rule():
    got = fired([s3("DeleteObject", Activity.DELETE, i) for i in range(300)])
    assert "bulk_delete" not in got and "s3_delete_storm" in got


def test_low_rate_spread_over_many_principals_stays_quiet():
    # The attack's calls, but one principal per 10 calls, spread over an hour.
    policy = load_policy()
    users = [f"arn:aws:iam::111122223333:user/u{i}" for i in range(20)]
    for n, user in enumerate(users):
        events = [s3("CopyObject", Activity.UPDATE, n * 60_000 + i * 40_000, user=user, sse="SSE-C")
                  for i in range(10)]
        events += [s3("DeleteObject", Activity.DELETE, n * 60_000 + i * 30_000, user=user) for i in range(10)]
        _, alerts = evaluate(None, user, events, policy)
        assert alerts == []

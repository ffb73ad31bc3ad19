"""Thin S3 adapter: one boto3 client (standard credential chain), key naming, version listing."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import msgspec

from dwcore.schemas.paths import name_bytes, name_text

log = logging.getLogger(__name__)


def make_client(endpoint_url: str = "", region: str = "", pool: int = 16) -> Any:
    """A boto3 S3 client. Credentials come from the standard AWS chain (env, profile, role)."""
    import boto3
    from botocore.config import Config as BotoConfig

    conf = BotoConfig(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=pool)
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, region_name=region or None,
                                          config=conf)


def norm_prefix(prefix: str) -> str:
    prefix = prefix.lstrip("/")
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def key_for(prefix: str, rel: bytes) -> tuple[str, str, bool]:
    """(key, relative path text, escaped) for a path relative to the backed-up root."""
    text, escaped = name_text(rel)
    return norm_prefix(prefix) + text, text, escaped


def rel_bytes(rel_text: str, escaped: bool) -> bytes:
    return name_bytes(rel_text, escaped)


def split_s3_url(value: str, default_bucket: str) -> tuple[str, str]:
    """'s3://bucket/prefix' or a plain prefix (with the configured bucket) -> (bucket, prefix)."""
    if value.startswith("s3://"):
        bucket, _, prefix = value[5:].partition("/")
        return bucket, prefix
    return default_bucket, value


class Version(msgspec.Struct, frozen=True):
    key: str
    version_id: str
    last_modified_ms: int  # S3's time (second resolution in listings)
    size: int
    is_latest: bool
    delete_marker: bool = False


def list_versions(s3: Any, bucket: str, prefix: str) -> Iterator[Version]:
    paginator = s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for v in page.get("Versions", []):
            yield Version(v["Key"], v["VersionId"], int(v["LastModified"].timestamp() * 1000), v.get("Size", 0),
                          bool(v.get("IsLatest")))
        for v in page.get("DeleteMarkers", []):
            yield Version(v["Key"], v["VersionId"], int(v["LastModified"].timestamp() * 1000), 0,
                          bool(v.get("IsLatest")), True)

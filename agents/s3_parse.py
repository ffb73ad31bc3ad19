"""One entry point over the three S3 formats: bytes of a log object or message -> ``Parsed``."""
from __future__ import annotations

from dwcore.agents import s3_accesslog, s3_cloudtrail, s3_notification
from dwcore.agents.s3_common import Parsed

FORMATS = ("access-log", "cloudtrail", "notification")


def parse_bytes(data: bytes, fmt: str, where: str, device: str = "s3") -> Parsed:
    if fmt == "access-log":
        return s3_accesslog.parse_lines(data.splitlines(), where, device)
    if fmt == "cloudtrail":
        return s3_cloudtrail.parse_bytes(data, where, device)
    if fmt == "notification":
        return s3_notification.parse_lines(data, where, device)
    raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")

"""One delivery attempt of an alert to a destination (Slack, Teams, PagerDuty, webhook).

Every attempt is a row, successes and failures alike, so an analyst can answer "was anyone paged
for this incident, when, and if not why". A digest (several alerts grouped under a rate limit) is
one HTTP request but one row per alert it carried, all with the same ``message_id``. Fields mirror
``DELIVERY_COLUMNS`` in schemas/ddl.py, in order.
"""
from __future__ import annotations

import msgspec


class Delivery(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    time: int  # epoch ms when the attempt finished
    alert_uid: str
    alert_version: int
    destination: str  # the configured destination name
    kind: str  # webhook | slack | teams | pagerduty
    attempt: int  # 1 for the first try of this request; 0 when not sent (drill)
    status: str  # delivered | retry | rejected | disabled | skipped_drill
    http_status: int | None  # None when no HTTP answer (refused, timeout) or not sent
    latency_ms: int  # request start to answer
    error: str = ""  # why it failed (never the URL or a secret)
    message_id: str = ""  # webhook-id / dedup key of the request that carried it
    digest_size: int = 1  # how many alerts the request carried
    test: bool = False  # sent by `dataward alerts test`

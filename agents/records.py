"""What the durable publisher writes: events as (key, value) records, and its own alarm record."""
from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

import msgspec

from dwcore.schemas.codec import encodable_events, encode
from dwcore.schemas.event import AccessEvent

_encoder = msgspec.json.Encoder()


def encode_records(events: Sequence[AccessEvent]) -> list[tuple[bytes, bytes]]:
    """(key, value) per event: the user name and the JSON. Raw bytes in a text field would make the
    encoder raise for the whole batch and the watcher retry it forever: such a batch is encoded
    again with those events in the lossless escaped form (one encode per event when, as nearly
    always, nothing needs it)."""
    enc = _encoder.encode
    try:
        return [(e.user_name.encode(), enc(e)) for e in events]
    except UnicodeEncodeError:
        return [(e.user_name.encode(), enc(e)) for e in encodable_events(list(events))]


def spool_full_alarm(device: str, why: str) -> tuple[bytes, bytes]:
    """The "spool full" alarm event as a record, sent from memory with the batch it could not spool."""
    from dwcore.agents.watcher import agent_user
    from dwcore.schemas.event import Activity, Attribution, Source, make_event

    user = agent_user()
    ev = make_event(Activity.OTHER, uid=uuid.uuid4().hex, time=int(time.time() * 1000), user_name=user,
                    attribution=Attribution.AGENT, device=device, source=Source.AGENT, file_path=device,
                    alarm="spool_full",
                    message=(f"The agent's spool is full ({why}): new events are held in memory only and a "
                             "crash now would lose them. Restore the connection to Kafka or free disk space."))
    return user.encode(), encode(ev)

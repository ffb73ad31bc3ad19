"""Write the JSON Schemas of the wire contracts: ``python -m dwcore.schemas.generate``.

The files are checked in so producers in other languages can validate against them; a test
fails when they drift from the Structs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

from dwcore.schemas.alert import Alert
from dwcore.schemas.deadletter import DeadLetter
from dwcore.schemas.delivery import Delivery
from dwcore.schemas.event import AccessEvent

SCHEMA_DIR = Path(__file__).parent / "jsonschema"
CONTRACTS: dict[str, type[msgspec.Struct]] = {
    "event": AccessEvent,
    "alert": Alert,
    "deadletter": DeadLetter,
    "delivery": Delivery,
}


def render(struct: type[msgspec.Struct]) -> str:
    return json.dumps(msgspec.json.schema(struct), indent=2, sort_keys=True) + "\n"


def drifted(out_dir: Path = SCHEMA_DIR) -> list[str]:
    """Names of the checked-in schema files that differ from the Structs."""
    stale = []
    for name, struct in CONTRACTS.items():
        path = out_dir / f"{name}.schema.json"
        if not path.exists() or path.read_text() != render(struct):
            stale.append(path.name)
    return stale


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = drifted()
        if stale:
            sys.stderr.write(f"JSON Schemas out of date: {', '.join(stale)}; run python -m dwcore.schemas.generate\n")
            return 1
        return 0
    SCHEMA_DIR.mkdir(parents=True, exist_ok=True)
    for name, struct in CONTRACTS.items():
        (SCHEMA_DIR / f"{name}.schema.json").write_text(render(struct))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

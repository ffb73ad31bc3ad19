"""Small JSON state files for the live S3 sources, written atomically (temp file, fsync, rename),
so a crash leaves either the old position or the new one, never half of either."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def state_path(data_dir: str | os.PathLike[str], kind: str, *parts: str) -> Path:
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]
    return Path(data_dir) / "s3" / f"{kind}-{digest}.json"


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ValueError(f"{path}: state file is not JSON ({exc}); move it away to start over") from None
    return data if isinstance(data, dict) else {}


def save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)

"""Per-user feature counts over several horizons: 10 s, 5 min, 1 h, 1 day.

Each horizon is a ring of ``SLOTS`` buckets (1 s, 30 s, 6 min, 2.4 h wide), each bucket a vector of
the counts in ``FEATURES`` order, so the state is a fixed 4 x 10 x len(FEATURES) integers however
fast the user works. A sum over a horizon is exact to one bucket at its older edge. Late events land
in their own bucket while it is still in the ring, and are dropped from a horizon once it has moved
past them (the rules count exact times separately; see ``burst``).
"""
from __future__ import annotations

import msgspec

# The features every user has, in vector order (also the columns of the learned baselines).
FEATURES: tuple[str, ...] = (
    "events", "reads", "writes", "overwrites", "deletes", "renames", "ext_renames",
    "deletes_long", "deletes_churn", "overwrites_long", "encrypted_overwrites", "partial_encryption",
    "random_creates", "encrypt_copy_delete", "known_ext", "ransom_notes", "canary", "new_ext",
    "high_entropy_writes", "dirs", "kib_written", "destructive", "anomalous_minutes",
)
INDEX = {name: i for i, name in enumerate(FEATURES)}
_N = len(FEATURES)
SLOTS = 10
HORIZONS_S: tuple[float, ...] = (10.0, 300.0, 3600.0, 86400.0)
_WIDTH_MS = tuple(int(h * 1000) // SLOTS for h in HORIZONS_S)


class Ring(msgspec.Struct, array_like=True):
    newest: int = -1  # bucket index (time // width) of the last row
    rows: list[list[int]] = []  # oldest first, at most SLOTS, each len(FEATURES)


class Horizons(msgspec.Struct, array_like=True):
    rings: list[Ring] = []

    def add(self, t: int, counts: dict[str, int]) -> None:
        if not counts:
            return
        if not self.rings:
            self.rings = [Ring() for _ in HORIZONS_S]
        items = [(INDEX[name], n) for name, n in counts.items()]
        for ring, width in zip(self.rings, _WIDTH_MS, strict=True):
            b = t // width
            rows = ring.rows
            if ring.newest < 0 or b > ring.newest:
                gap = b - ring.newest if ring.newest >= 0 else SLOTS
                if gap >= SLOTS:
                    ring.rows = rows = [[0] * _N for _ in range(SLOTS)]  # the whole ring has moved on
                else:
                    rows.extend([0] * _N for _ in range(gap))
                    del rows[: max(0, len(rows) - SLOTS)]
                ring.newest = b
                row = rows[-1]
            else:
                age = ring.newest - b
                if age >= len(rows):
                    continue  # older than this ring holds
                row = rows[-1 - age]
            for i, n in items:
                row[i] += n

    def totals(self, horizon: int, now: int) -> list[int]:
        """Counts per feature in horizon ``horizon`` (index into HORIZONS_S) ending at ``now``."""
        out = [0] * len(FEATURES)
        if not self.rings:
            return out
        ring = self.rings[horizon]
        b_now = now // _WIDTH_MS[horizon]
        for age, row in enumerate(reversed(ring.rows)):
            if b_now - (ring.newest - age) >= SLOTS:
                break
            for i, v in enumerate(row):
                out[i] += v
        return out

    def snapshot(self, horizon: int, now: int, names: tuple[str, ...] = FEATURES) -> dict[str, int]:
        tot = self.totals(horizon, now)
        return {n: tot[INDEX[n]] for n in names}

    def peak_per_second(self, feature: str, now: int) -> int:
        """The busiest second of the last ten for ``feature``."""
        if not self.rings:
            return 0
        ring, i = self.rings[0], INDEX[feature]
        b_now = now // _WIDTH_MS[0]
        return max((row[i] for age, row in enumerate(reversed(ring.rows))
                    if b_now - (ring.newest - age) < SLOTS), default=0)

    def window_total(self, feature: str, now: int, window_ms: int) -> int:
        """``feature`` over about the last ``window_ms`` (to one bucket of the finest ring that spans it)."""
        if not self.rings:
            return 0
        k = next((j for j, w in enumerate(_WIDTH_MS) if w * SLOTS >= window_ms), len(_WIDTH_MS) - 1)
        ring, width = self.rings[k], _WIDTH_MS[k]
        i, b_now = INDEX[feature], now // width
        need = -(-window_ms // width)  # buckets covering the window, rounded up
        return sum(row[i] for age, row in enumerate(reversed(ring.rows))
                   if 0 <= b_now - (ring.newest - age) < need)

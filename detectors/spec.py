"""The rule interface: what a rule module plugs into the engine.

Most rules need no code at all: a YAML rule with ``signal: <feature>`` counts the events that add
that feature (see ``horizons.FEATURES`` and ``features.classify``). A rule needs code when it counts
something the features do not say, or keys its incidents differently. Such a module is named
``detectors/rules_<area>.py`` and exports ``SPECS``, a tuple of ``RuleSpec``; its rules' YAML goes in
``detectors/default_policy_<area>.yaml`` (same fields as any rule; ``name`` ties the two). The
engine finds both by their names, so adding an area touches no shared file. Example::

    # detectors/rules_s3.py
    from dwcore.detectors.spec import RuleSpec, counting
    SPECS = (
        counting("s3_ssec_copy", "SSE-C copies",
                 lambda ev, facts: ev.s3_operation == "REST.COPY.OBJECT" and ev.sse == "SSE-C"),
    )

``key(ev, facts)`` returns the incident key ("" = the user's one incident) or None when the event
does not count. Keys other than "" make separate incidents per key (agent alarms: device x alarm).
``describe`` optionally adds one sentence of rule-specific evidence to the alert text.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from dwcore.schemas.event import AccessEvent

if TYPE_CHECKING:
    from dwcore.detectors.features import Facts

KeyFn = Callable[[AccessEvent, "Facts"], "str | None"]


class RuleSpec(NamedTuple):
    name: str  # equals RulePolicy.name
    signal: str  # what is counted, plural, for the alert text ("renames", "SSE-C copies")
    key: KeyFn
    describe: Callable[[AccessEvent], str] | None = None  # optional: a note kept from the first match
    feature: str = ""  # the horizons feature it counts, if any: gives the real peak beyond the window cap
    weight: Callable[[AccessEvent], int] | None = None  # counts per event (e.g. bytes read in units); None: 1
    # One sentence for the alert text: (user, matching events, shares) -> "mallory deleted 1000 objects ...".
    sentence: Callable[[str, int, list[str]], str] | None = None
    amount: Callable[[int], str] | None = None  # the title's "how much" from the peak count (default: files)
    # Cheap gates the engine checks before calling ``key`` (which must return None when they fail):
    requires: str = ""  # a feature the event must add
    s3_only: bool = False  # counts S3 events only


def counting(name: str, signal: str, predicate: Callable[[AccessEvent, Facts], bool],
             feature: str = "", requires: str = "") -> RuleSpec:
    """A per-user counting rule: every event for which ``predicate`` holds counts once.

    ``requires``: a feature without which ``predicate`` never holds (lets the engine skip the call).
    """

    def key(ev: AccessEvent, facts: Facts) -> str | None:
        return "" if predicate(ev, facts) else None

    return RuleSpec(name, signal, key, feature=feature, requires=requires)


def feature_rule(name: str, feature: str) -> RuleSpec:
    """The spec behind a YAML-only rule: counts events that add ``feature``."""

    def key(ev: AccessEvent, facts: Facts) -> str | None:
        return "" if facts.counts.get(feature, 0) > 0 else None

    return RuleSpec(name, feature.replace("_", " "), key, feature=feature, requires=feature)


@lru_cache(maxsize=1)
def coded_specs() -> dict[str, RuleSpec]:
    """Every ``SPECS`` of every ``dwcore.detectors.rules_*`` module, by rule name."""
    import dwcore.detectors as pkg

    specs: dict[str, RuleSpec] = {}
    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("rules_")):
        module = importlib.import_module(f"dwcore.detectors.{mod}")
        for spec in getattr(module, "SPECS", ()):
            if spec.name in specs:
                raise RuntimeError(f"rule {spec.name!r} defined twice (second in {mod})")
            specs[spec.name] = spec
    return specs


def coded_rule_names() -> set[str]:
    return set(coded_specs())

"""The detection policy: Sigma-like rules as YAML data, validated with file:line errors.

The packaged ``default_policy.yaml`` defines every rule in full. A user file (and then an
``overrides`` mapping, e.g. from the CLI) may change only some fields of some rules, matched by
``name``; rules cannot be invented there because each name is backed by code. Every problem is a
``PolicyError`` naming the file and line, found through the YAML node marks (``yaml.compose``),
so an operator can fix the file without guessing.
"""
from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import yaml

from dwcore.schemas.alert import Severity

DEFAULT_POLICY_PATH = Path(__file__).parent / "default_policy.yaml"
MAX_SAMPLE_PATHS = 1000


class PolicyError(ValueError):
    """Permanent: the policy cannot be used. ``str()`` is ``file:line: problem``."""

    def __init__(self, file: str, line: int, problem: str) -> None:
        self.file, self.line, self.problem = file, line, problem
        super().__init__(f"{file}:{line}: {problem}" if line else f"{file}: {problem}")


class RulePolicy(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    title: str
    level: Severity
    tags: tuple[str, ...] = ()
    description: str = ""
    falsepositives: tuple[str, ...] = ()
    enabled: bool = True
    threshold: int
    window_s: float
    critical_at: int | None = None
    cooldown_s: float
    sample_paths: int = 20
    buckets: tuple[str, ...] = ()  # only events on these buckets count; empty: all

    @property
    def window_ms(self) -> int:
        return int(round(self.window_s * 1000))

    @property
    def cooldown_ms(self) -> int:
        return int(round(self.cooldown_s * 1000))

    @property
    def cap(self) -> int:
        """Most event times worth keeping per window: counts are only compared up to this."""
        return max(self.critical_at or 0, self.threshold) + self.sample_paths


class Policy(msgspec.Struct, frozen=True):
    rules: tuple[RulePolicy, ...]
    sources: tuple[str, ...] = ()  # files the policy was built from, for logs

    def get(self, name: str) -> RulePolicy | None:
        for rule in self.rules:
            if rule.name == name:
                return rule
        return None

    def enabled_rules(self) -> tuple[RulePolicy, ...]:
        return tuple(r for r in self.rules if r.enabled)


class _Bad(Exception):
    """A field value is wrong; the caller adds where."""


def _is_num(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _text(v: object) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _Bad("must be a non-empty string")
    return v


def _any_text(v: object) -> str:
    if not isinstance(v, str):
        raise _Bad("must be a string")
    return v


def _uuid(v: object) -> str:
    try:
        return str(uuid.UUID(_text(v)))
    except ValueError:
        raise _Bad(f"must be a UUID, got {v!r}") from None


def _level(v: object) -> Severity:
    try:
        return Severity(v)
    except ValueError:
        raise _Bad(f"must be one of {', '.join(s.value for s in Severity)}, got {v!r}") from None


def _str_list(v: object) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise _Bad("must be a list of non-empty strings")
    return tuple(v)


def _bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"must be true or false, got {v!r}")
    return v


def _pos_int(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise _Bad(f"must be a whole number, got {v!r}")
    if v <= 0:
        raise _Bad(f"must be > 0, got {v}")
    return v


def _opt_pos_int(v: object) -> int | None:
    return None if v is None else _pos_int(v)


def _pos_seconds(v: object) -> float:
    if not _is_num(v):
        raise _Bad(f"must be a number of seconds, got {v!r}")
    if v <= 0:  # type: ignore[operator]
        raise _Bad(f"must be > 0, got {v}")
    return float(v)  # type: ignore[arg-type]


def _sample(v: object) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_SAMPLE_PATHS:
        raise _Bad(f"must be a whole number from 0 to {MAX_SAMPLE_PATHS}, got {v!r}")
    return v


_FIELDS: dict[str, Callable[[object], Any]] = {
    "id": _uuid,
    "name": _text,
    "title": _text,
    "level": _level,
    "tags": _str_list,
    "description": _any_text,
    "falsepositives": _str_list,
    "enabled": _bool,
    "threshold": _pos_int,
    "window_s": _pos_seconds,
    "critical_at": _opt_pos_int,
    "cooldown_s": _pos_seconds,
    "sample_paths": _sample,
    "buckets": _str_list,
}
# Rules that mean nothing without a bucket list: enabling one without buckets is an error.
NEEDS_BUCKETS = frozenset({"s3_protected_bucket"})
_REQUIRED = ("id", "name", "title", "level", "threshold", "window_s", "cooldown_s")


class _Loc(NamedTuple):
    file: str
    line: int  # 1-based; 0 = unknown


class _Field(NamedTuple):
    value: Any
    loc: _Loc


class _RuleDoc(NamedTuple):
    name: str
    loc: _Loc
    fields: dict[str, _Field]


_constructor = yaml.SafeLoader("")


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping_items(node: yaml.Node, file: str, what: str) -> list[tuple[str, yaml.Node, _Loc]]:
    if not isinstance(node, yaml.MappingNode):
        raise PolicyError(file, _line(node), f"{what} must be a mapping")
    seen: dict[str, int] = {}
    out = []
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str):
            raise PolicyError(file, _line(key_node), f"{what}: keys must be plain names")
        if key in seen:
            raise PolicyError(file, _line(key_node), f"duplicate key {key!r} (first on line {seen[key]})")
        seen[key] = _line(key_node)
        out.append((key, value_node, _Loc(file, _line(key_node))))
    return out


def _parse_rule(node: yaml.Node, file: str) -> _RuleDoc:
    fields: dict[str, _Field] = {}
    for key, value_node, loc in _mapping_items(node, file, "a rule"):
        if key not in _FIELDS:
            raise PolicyError(file, loc.line, f"unknown key {key!r} (known: {', '.join(_FIELDS)})")
        try:
            raw = _constructor.construct_object(value_node, deep=True)
            value = _FIELDS[key](raw)
        except yaml.YAMLError as exc:
            raise PolicyError(file, _line(value_node), f"{key}: {exc}") from None
        except _Bad as exc:
            raise PolicyError(file, _line(value_node), f"{key} {exc}") from None
        fields[key] = _Field(value, _Loc(file, _line(value_node)))
    if "name" not in fields:
        raise PolicyError(file, _line(node), "rule has no 'name'")
    return _RuleDoc(fields["name"].value, _Loc(file, _line(node)), fields)


def parse_policy_text(text: str, file: str) -> list[_RuleDoc]:
    """The rule documents of one policy file, validated field by field (not yet merged)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        raise PolicyError(file, line, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(file, 0, f"invalid YAML: {exc}") from None
    if root is None:
        return []
    docs: list[_RuleDoc] = []
    for key, value_node, loc in _mapping_items(root, file, "the policy file"):
        if key != "rules":
            raise PolicyError(file, loc.line, f"unknown top-level key {key!r} (expected 'rules')")
        if not isinstance(value_node, yaml.SequenceNode):
            raise PolicyError(file, _line(value_node), "rules must be a list of rules")
        seen: dict[str, int] = {}
        for rule_node in value_node.value:
            doc = _parse_rule(rule_node, file)
            if doc.name in seen:
                raise PolicyError(file, doc.loc.line, f"rule {doc.name!r} listed twice (line {seen[doc.name]})")
            seen[doc.name] = doc.loc.line
            docs.append(doc)
    return docs


def _parse_overrides(overrides: Mapping[str, Any]) -> list[_RuleDoc]:
    """``{"mass_rename": {"threshold": 10}}`` -> rule documents located at ``<overrides>``."""
    file = "<overrides>"
    docs = []
    for name, fields in overrides.items():
        if not isinstance(fields, Mapping):
            raise PolicyError(file, 0, f"{name}: overrides must be a mapping of field -> value")
        parsed: dict[str, _Field] = {}
        for key, raw in fields.items():
            if key not in _FIELDS or key == "name":
                raise PolicyError(file, 0, f"{name}: unknown key {key!r}")
            try:
                parsed[key] = _Field(_FIELDS[key](raw), _Loc(file, 0))
            except _Bad as exc:
                raise PolicyError(file, 0, f"{name}: {key} {exc}") from None
        docs.append(_RuleDoc(str(name), _Loc(file, 0), parsed))
    return docs


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(str(path), 0, f"cannot read policy file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PolicyError(str(path), 0, "policy file is not UTF-8 text") from None


def _build(doc: _RuleDoc) -> RulePolicy:
    f = doc.fields
    for key in _REQUIRED:
        if key not in f:
            raise PolicyError(doc.loc.file, doc.loc.line, f"rule {doc.name!r} has no {key!r}")
    crit, thr = f.get("critical_at"), f["threshold"]
    if crit is not None and crit.value is not None and crit.value <= thr.value:
        # Blame whichever of the two was set last: that is the line the operator just edited.
        where = crit.loc if crit.loc.file != DEFAULT_POLICY_PATH.as_posix() else thr.loc
        raise PolicyError(
            where.file, where.line,
            f"rule {doc.name!r}: critical_at ({crit.value}) must be greater than threshold ({thr.value})",
        )
    if doc.name in NEEDS_BUCKETS and f.get("enabled", _Field(True, doc.loc)).value and not (
        f["buckets"].value if "buckets" in f else ()
    ):
        where = f["enabled"].loc if "enabled" in f else doc.loc
        raise PolicyError(where.file, where.line, f"rule {doc.name!r} is enabled but lists no buckets")
    return RulePolicy(**{k: v.value for k, v in f.items()})


def load_policy(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Policy:
    """The packaged default policy, merged with the user file ``path`` and then ``overrides``."""
    default_file = DEFAULT_POLICY_PATH.as_posix()
    merged: dict[str, _RuleDoc] = {}
    for doc in parse_policy_text(_read(DEFAULT_POLICY_PATH), default_file):
        merged[doc.name] = doc
    sources = [default_file]
    layers: list[list[_RuleDoc]] = []
    if path is not None:
        p = Path(path)
        layers.append(parse_policy_text(_read(p), str(p)))
        sources.append(str(p))
    if overrides:
        layers.append(_parse_overrides(overrides))
    for layer in layers:
        for doc in layer:
            base = merged.get(doc.name)
            if base is None:
                raise PolicyError(
                    doc.loc.file, doc.fields["name"].loc.line if "name" in doc.fields else doc.loc.line,
                    f"unknown rule {doc.name!r} (known: {', '.join(merged)})",
                )
            merged[doc.name] = _RuleDoc(doc.name, base.loc, {**base.fields, **doc.fields})
    rules = tuple(_build(doc) for doc in merged.values())
    seen_ids: dict[str, str] = {}
    for rule in rules:
        if rule.id in seen_ids:
            raise PolicyError(sources[-1], 0, f"rules {seen_ids[rule.id]!r} and {rule.name!r} share id {rule.id}")
        seen_ids[rule.id] = rule.name
    return Policy(rules=rules, sources=tuple(sources))

"""Reading policy YAML into the Structs of ``policy``, with every problem located at file:line.

Each value is converted on its own against its Struct field type (so one bad value does not hide
the next), and a msgspec error path (``$[2]``, ``$.user``) is walked down the YAML node tree to the
line of the offending item. All problems of all layers are collected and raised together.
"""
from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import yaml

from dwcore.detectors.policy import (
    DEFAULT_POLICY_PATH,
    NEEDS_BUCKETS,
    OVERRIDABLE,
    Allow,
    Override,
    Policy,
    PolicyError,
    RulePolicy,
    Settings,
    default_policy_files,
)

_TOP = ("settings", "groups", "rules", "overrides", "allow")
_FAIL = object()
_PATH_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")
_constructor = yaml.SafeLoader("")


class _Field(NamedTuple):
    value: Any
    line: int
    file: str = ""


class _RuleDoc(NamedTuple):
    name: str
    file: str
    line: int
    fields: dict[str, _Field]


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, int, str]] = []

    def add(self, file: str, line: int, problem: str) -> None:
        self.items.append((file, line, problem))

    def raise_if_any(self) -> None:
        if self.items:
            order = {f: i for i, f in enumerate(dict.fromkeys(f for f, _, _ in self.items))}
            items = sorted(self.items, key=lambda x: (order[x[0]], x[1]))
            f, n, p = items[0]
            raise PolicyError(f, n, p, items)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _node_at(node: yaml.Node, message: str) -> yaml.Node:
    """The sub-node a msgspec error path points at (``... - at `$.a[2]```), else ``node``."""
    at = message.rfind("- at `$")
    if at < 0:
        return node
    for name, index in _PATH_TOKEN.findall(message[at + 7 : message.rfind("`")]):
        if index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
            node = node.value[int(index)]
        elif name and isinstance(node, yaml.MappingNode):
            found = [v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == name]
            if not found:
                break
            node = found[0]
        else:
            break
    return node


def _convert(node: yaml.Node, typ: Any, file: str, what: str, probs: _Problems) -> Any:
    try:
        raw = _constructor.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        probs.add(file, _line(node), f"{what}: {exc}")
        return _FAIL
    try:
        return msgspec.convert(raw, typ, strict=True)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        sub = _node_at(node, msg)
        text = msg.split(" - at `", 1)[0]
        scalar = sub is node and not isinstance(raw, list | dict)
        got = "" if repr(raw) in text or not scalar or re.search(r"got -?\d", text) else f" (value {raw!r})"
        if isinstance(typ, type) and issubclass(typ, enum.Enum):
            got += f"; one of {', '.join(str(m.value) for m in typ)}"
        probs.add(file, _line(sub), f"{what}: {text}{got}")
        return _FAIL


def _mapping(node: yaml.Node, file: str, what: str, probs: _Problems) -> list[tuple[str, yaml.Node, int]]:
    if not isinstance(node, yaml.MappingNode):
        probs.add(file, _line(node), f"{what} must be a mapping")
        return []
    seen: dict[str, int] = {}
    out = []
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if not isinstance(key, str):
            probs.add(file, _line(key_node), f"{what}: keys must be plain names")
            continue
        if key in seen:
            probs.add(file, _line(key_node), f"duplicate key {key!r} (first on line {seen[key]})")
            continue
        seen[key] = _line(key_node)
        out.append((key, value_node, _line(key_node)))
    return out


def _fields_of(cls: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(cls)}


_RULE_FIELDS = _fields_of(RulePolicy)


def _parse_struct_fields(
    node: yaml.Node, cls: type[msgspec.Struct], file: str, what: str, probs: _Problems
) -> dict[str, _Field]:
    types = _fields_of(cls)
    out: dict[str, _Field] = {}
    for key, value_node, line in _mapping(node, file, what, probs):
        if key not in types:
            probs.add(file, line, f"unknown key {key!r} (known: {', '.join(types)})")
            continue
        value = _convert(value_node, types[key], file, key, probs)
        if value is not _FAIL:
            out[key] = _Field(value, _line(value_node), file)
    return out


def _parse_rules(node: yaml.Node, file: str, probs: _Problems) -> list[_RuleDoc]:
    if not isinstance(node, yaml.SequenceNode):
        probs.add(file, _line(node), "rules must be a list of rules")
        return []
    docs: list[_RuleDoc] = []
    seen: dict[str, int] = {}
    for rule_node in node.value:
        fields = _parse_struct_fields(rule_node, RulePolicy, file, "a rule", probs)
        if "name" not in fields:
            if isinstance(rule_node, yaml.MappingNode) and not any(
                    isinstance(k, yaml.ScalarNode) and k.value == "name" for k, _ in rule_node.value):
                probs.add(file, _line(rule_node), "rule has no 'name'")
            continue
        name = fields["name"].value
        if name in seen:
            probs.add(file, _line(rule_node), f"rule {name!r} listed twice (line {seen[name]})")
            continue
        seen[name] = _line(rule_node)
        docs.append(_RuleDoc(name, file, _line(rule_node), fields))
    return docs


class _Layer(NamedTuple):
    file: str
    rules: list[_RuleDoc]
    settings: dict[str, _Field]
    groups: dict[str, tuple[str, ...]]
    overrides: list[tuple[Override, int]]
    allow: list[Allow]


def _parse_list(node: yaml.Node, cls: type, file: str, what: str, probs: _Problems) -> list[tuple[Any, int]]:
    if not isinstance(node, yaml.SequenceNode):
        probs.add(file, _line(node), f"{what} must be a list")
        return []
    out = []
    for item in node.value:
        value = _convert(item, cls, file, what, probs)
        if value is not _FAIL:
            out.append((value, _line(item)))
    return out


def parse_policy_text(text: str, file: str, probs: _Problems | None = None) -> _Layer:
    """One policy file, validated value by value (not yet merged with the other layers)."""
    own = probs is None
    probs = probs or _Problems()
    layer = _Layer(file, [], {}, {}, [], [])
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        probs.add(file, mark.line + 1 if mark is not None else 0, f"invalid YAML: {exc.problem or exc.context}")
        root = None
    except yaml.YAMLError as exc:
        probs.add(file, 0, f"invalid YAML: {exc}")
        root = None
    if root is not None:
        for key, value_node, line in _mapping(root, file, "the policy file", probs):
            if key == "rules":
                layer.rules.extend(_parse_rules(value_node, file, probs))
            elif key == "settings":
                layer.settings.update(_parse_struct_fields(value_node, Settings, file, "settings", probs))
            elif key == "groups":
                groups = _convert(value_node, dict[str, tuple[str, ...]], file, "groups", probs)
                if groups is not _FAIL:
                    layer.groups.update(groups)
            elif key == "overrides":
                for ov, ov_line in _parse_list(value_node, Override, file, "overrides", probs):
                    bad = [k for k in ov.set if k not in OVERRIDABLE]
                    if bad or not ov.set:
                        probs.add(file, ov_line, f"override set: may change {', '.join(OVERRIDABLE)}"
                                  + (f"; not {', '.join(map(repr, bad))}" if bad else ""))
                        continue
                    for k, v in ov.set.items():
                        try:
                            msgspec.convert(v, _RULE_FIELDS[k], strict=True)
                        except msgspec.ValidationError as exc:
                            probs.add(file, ov_line, f"override set {k}: {exc}")
                    layer.overrides.append((ov, ov_line))
            elif key == "allow":
                layer.allow.extend(a for a, _ in _parse_list(value_node, Allow, file, "allow", probs))
            else:
                probs.add(file, line, f"unknown top-level key {key!r} (expected {', '.join(_TOP)})")
    if own:
        probs.raise_if_any()
    return layer


def _overrides_layer(overrides: Mapping[str, Any], probs: _Problems) -> _Layer:
    """``{"mass_rename": {"threshold": 10}}`` -> a layer located at ``<overrides>``."""
    file = "<overrides>"
    docs = []
    for name, fields in overrides.items():
        if not isinstance(fields, Mapping):
            probs.add(file, 0, f"{name}: overrides must be a mapping of field -> value")
            continue
        parsed: dict[str, _Field] = {}
        for key, raw in fields.items():
            if key not in _RULE_FIELDS or key == "name":
                probs.add(file, 0, f"{name}: unknown key {key!r}")
                continue
            try:
                parsed[key] = _Field(msgspec.convert(raw, _RULE_FIELDS[key], strict=True), 0, file)
            except msgspec.ValidationError as exc:
                probs.add(file, 0, f"{name}: {key}: {exc}, got {raw!r}")
        docs.append(_RuleDoc(str(name), file, 0, parsed))
    return _Layer(file, docs, {}, {}, [], [])


def _read(path: Path, probs: _Problems) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        probs.add(str(path), 0, f"cannot read policy file: {exc.strerror or exc}")
    except UnicodeDecodeError:
        probs.add(str(path), 0, "policy file is not UTF-8 text")
    return ""


def _build_rule(doc: _RuleDoc, default_files: set[str], known_signals: set[str], coded: set[str],
                probs: _Problems) -> RulePolicy | None:
    f = doc.fields
    crit, thr = f.get("critical_at"), f.get("threshold")
    if crit is not None and thr is not None and crit.value is not None and crit.value <= thr.value:
        # Blame whichever of the two was set last: that is the line the operator just edited.
        crit_user, thr_user = crit.file not in default_files, thr.file not in default_files
        blame = crit if crit_user and (not thr_user or crit.line >= thr.line) else thr
        probs.add(blame.file or doc.file, blame.line or doc.line,
                  f"rule {doc.name!r}: critical_at ({crit.value}) must be greater than threshold ({thr.value})")
        return None
    if doc.name in NEEDS_BUCKETS and (f["enabled"].value if "enabled" in f else True) and not (
            f["buckets"].value if "buckets" in f else ()):
        where = f.get("enabled")
        probs.add(where.file if where else doc.file, where.line if where else doc.line,
                  f"rule {doc.name!r} is enabled but lists no buckets")
        return None
    signal = f["signal"].value if "signal" in f else ""
    if doc.name not in coded and signal not in known_signals:
        line = f["signal"].line if "signal" in f else doc.line
        probs.add(doc.file, line, f"rule {doc.name!r}: signal must be one of {', '.join(sorted(known_signals))}"
                  f" (got {signal!r})")
        return None
    try:
        return msgspec.convert({k: v.value for k, v in f.items()}, RulePolicy, strict=True)
    except msgspec.ValidationError as exc:
        probs.add(doc.file, doc.line, f"rule {doc.name!r}: {exc}")
        return None


def build_policy(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Policy:
    from dwcore.detectors.horizons import FEATURES
    from dwcore.detectors.spec import coded_rule_names

    probs = _Problems()
    layers: list[_Layer] = []
    sources: list[str] = []
    default_files = {p.as_posix() for p in default_policy_files()}
    for p in default_policy_files():
        layers.append(parse_policy_text(_read(p, probs), p.as_posix(), probs))
        sources.append(p.as_posix())
    first_user_layer = len(layers)
    if path is not None:
        p = Path(path)
        layers.append(parse_policy_text(_read(p, probs), str(p), probs))
        sources.append(str(p))
    if overrides:
        layers.append(_overrides_layer(overrides, probs))
    merged: dict[str, _RuleDoc] = {}
    settings: dict[str, _Field] = {}
    groups: dict[str, tuple[str, ...]] = {}
    ovs: list[Override] = []
    allow: list[Allow] = []
    for i, layer in enumerate(layers):
        for doc in layer.rules:
            base = merged.get(doc.name)
            if base is None:
                if i >= first_user_layer and "id" not in doc.fields:
                    probs.add(doc.file, doc.line, f"unknown rule {doc.name!r} (known: {', '.join(merged)}); "
                              "a new rule needs id, title, level, signal, threshold, window_s, cooldown_s")
                    continue
                merged[doc.name] = doc
            else:
                # The file of a changed rule is where its last change came from, for error lines.
                merged[doc.name] = _RuleDoc(doc.name, doc.file if doc.fields.keys() - {"name"} else base.file,
                                            doc.line, {**base.fields, **doc.fields})
        settings.update(layer.settings)
        groups.update(layer.groups)
        ovs.extend(o for o, _ in layer.overrides)
        allow.extend(layer.allow)
    known_rules = set(merged)
    for layer in layers:
        for ov, ov_line in layer.overrides:
            for name in ov.rules:
                if name not in known_rules:
                    probs.add(layer.file, ov_line, f"override names unknown rule {name!r}")
    rules = []
    for doc in merged.values():
        rule = _build_rule(doc, default_files, set(FEATURES), coded_rule_names(), probs)
        if rule is not None:
            rules.append(rule)
    seen_ids: dict[str, str] = {}
    for rule in rules:
        if rule.id.lower() in seen_ids:
            probs.add(sources[-1], 0, f"rules {seen_ids[rule.id.lower()]!r} and {rule.name!r} share id {rule.id}")
        seen_ids[rule.id.lower()] = rule.name
    probs.raise_if_any()
    return Policy(
        rules=tuple(rules),
        sources=tuple(sources),
        settings=msgspec.convert({k: v.value for k, v in settings.items()}, Settings),
        groups=groups,
        overrides=tuple(ovs),
        allow=tuple(allow),
    )


__all__ = ["DEFAULT_POLICY_PATH", "build_policy", "parse_policy_text"]

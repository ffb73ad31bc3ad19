"""docs/config.md, generated from the typed configuration so that it can never drift from it.

    python -m dataward.config_reference          # rewrite docs/config.md
    python -m dataward.config_reference --check  # exit 1 when docs/config.md is stale (make test)

Each key's description is the comment beside its field in dataward/config.py (or the section's
docstring), so documenting a key means writing one comment where it is defined.
"""
from __future__ import annotations

import inspect
import io
import json
import sys
import tokenize
from pathlib import Path
from typing import Any

import msgspec

from dataward import config as config_module
from dataward.config import Config, env_name

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"

HEADER = """# Configuration reference

Generated from `dataward/config.py` by `python -m dataward.config_reference`; the tests fail when
this file and the code disagree. Do not edit by hand.

Precedence: defaults < YAML file (`--config FILE` or `DATAWARD_CONFIG`) < environment variables <
command-line flags. Unknown keys in the file and unknown `DATAWARD_*` variables are errors that
name the key, so a typo never falls back to a default silently. Lists take comma-separated values
in the environment; mappings can be set only in the file.

Not configuration keys: `DATAWARD_CONFIG` (the file), `DATAWARD_CACHE` (where scripts keep
downloads), and secrets: variables whose names end in `PASSWORD`, `SECRET`, `TOKEN` or `KEY`
(each also as `..._FILE`, a path to read it from), e.g. `DATAWARD_KAFKA_SASL_PASSWORD`. Secrets
never go in the YAML file and are never logged.

Also read: `KAFKA_BOOTSTRAP` (same as `DATAWARD_KAFKA_BOOTSTRAP`) and `CLICKHOUSE_URL` (same as
`DATAWARD_STORE_URL`).
"""


def _field_comments() -> dict[tuple[str, str], str]:
    """(class name, field) -> the comment on the field's line, or on the lines just above it."""
    source = inspect.getsource(config_module)
    comments: dict[tuple[str, str], str] = {}
    pending: list[str] = []
    current_class = ""
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    line_comment: dict[int, str] = {}
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            line_comment[tok.start[0]] = tok.string.lstrip("#").strip()
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.strip()
        if line.startswith("class "):
            current_class = line.split()[1].split("(")[0].rstrip(":")
            pending = []
            continue
        if not line.startswith("    ") or line.startswith("        "):
            continue
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        if ":" in stripped and not stripped.startswith(("def ", "@", '"', "return")):
            name = stripped.split(":", 1)[0].strip()
            if name.isidentifier():
                text = " ".join([*pending, line_comment.get(number, "")]).strip()
                if text:
                    comments[(current_class, name)] = text
        pending = []
    return comments


def _default(value: Any) -> str:
    if isinstance(value, msgspec.Struct):
        return ""
    if value == "" or value == [] or value == {}:
        return "(empty)"
    return f"`{json.dumps(msgspec.to_builtins(value))}`"


def _type(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return f"`{text.replace('typing.', '')}`"


def _env(section: str, field: str, value: Any) -> str:
    return "(file only)" if isinstance(value, dict) else f"`{env_name(section, field)}`"


def render() -> str:
    comments = _field_comments()
    out = [HEADER]
    top = Config()
    rows: list[str] = []
    sections: list[tuple[str, type[msgspec.Struct]]] = []
    for field in msgspec.structs.fields(Config):
        value = getattr(top, field.name)
        if isinstance(value, msgspec.Struct):
            sections.append((field.name, type(value)))
            continue
        doc = comments.get(("Config", field.name), "")
        env = _env("", field.name, value)
        rows.append(f"| `{field.name}` | {_type(field.type)} | {_default(value)} | {env} | {doc} |")
    out.append("## Top level\n")
    out.append("| key | type | default | environment | meaning |\n|---|---|---|---|---|")
    out.extend(rows)
    for name, struct in sections:
        doc = inspect.getdoc(struct) or ""
        if doc == inspect.getdoc(msgspec.Struct):
            doc = ""
        out.append(f"\n## `{name}`\n")
        if doc:
            out.append(doc + "\n")
        out.append("| key | type | default | environment | meaning |\n|---|---|---|---|---|")
        instance = struct()
        for field in msgspec.structs.fields(struct):
            text = comments.get((struct.__name__, field.name), "")
            out.append(
                f"| `{name}.{field.name}` | {_type(field.type)} | {_default(getattr(instance, field.name))} "
                f"| {_env(name, field.name, getattr(instance, field.name))} | {text} |"
            )
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not DOC.exists() or DOC.read_text() != text:
            sys.stderr.write("docs/config.md is out of date: run python -m dataward.config_reference\n")
            return 1
        return 0
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

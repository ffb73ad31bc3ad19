"""The arrows between the parts: configuration flows down from the wiring, never up.

Only ``dataward/`` knows the Config type; a part that imports ``dataward`` (even lazily, inside a
function) has its arrow pointing the wrong way. The AST is walked, so conditional and local
imports count too. The other rules of the map are checked the same way.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("agents", "stream", "detectors", "sinks", "schemas")
# part -> parts it must never import (ARCHITECTURE.md, "Parts and their rooms")
FORBIDDEN = {
    "schemas": {"agents", "stream", "detectors", "sinks"},
    "detectors": {"agents", "stream", "sinks"},
    "stream": {"agents", "sinks"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_bytes(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def modules_of(part: str) -> list[Path]:
    return sorted((ROOT / part).rglob("*.py"))


def test_every_part_has_modules():
    for part in PARTS:
        assert modules_of(part), f"no modules found under {part}/"


@pytest.mark.parametrize("part", PARTS)
def test_parts_never_import_the_wiring(part):
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in modules_of(part)
        for line, name in imported_modules(path)
        if name == "dataward" or name.startswith("dataward.")
    ]
    assert not wrong, "parts take plain values; only dataward/ knows Config:\n" + "\n".join(wrong)


@pytest.mark.parametrize("part", sorted(FORBIDDEN))
def test_parts_keep_to_their_rooms(part):
    wrong = []
    for path in modules_of(part):
        for line, name in imported_modules(path):
            bits = name.split(".")
            other = bits[1] if bits[0] == "dwcore" and len(bits) > 1 else bits[0]
            if other in FORBIDDEN[part]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_lazy_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    if True:\n        from dataward.config import Config\n    import dataward\n")
    assert sorted(name for _, name in imported_modules(module)) == ["dataward", "dataward.config"]

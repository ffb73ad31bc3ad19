"""Name lists shipped as data: known ransomware extensions, ransom-note names and phrases.

Loaded once per distinct set of policy extras and cached (a policy is immutable, so the lists are
too). Matching is on the lower-cased base name: an extension matches at any dot of the name, so a
list entry may itself hold dots (".7z.encrypted"); note names are globs, split into exact names (a
set lookup) and one compiled alternation for the patterns.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).parent / "data"
MAX_EXT_LEN = 64  # longer "extensions" are names, not extensions


def _lines(name: str) -> list[str]:
    out = []
    for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def _separators(path: str) -> str:
    # A backslash separates only in a Windows path (one without any "/"). In the POSIX paths agents
    # send it is part of a name, and the lossless form of a non-UTF-8 name escapes bytes with it
    # ("x.locked\\xff"): splitting there would hide the extension from every rule.
    return path if "/" in path else path.replace("\\", "/")


def base_name(path: str) -> str:
    return _separators(path).rsplit("/", 1)[-1]


def extension(path: str) -> str:
    """Lower-case last extension with its dot ('.locked'), '' if none. Works for / and \\ paths."""
    return extension_of(base_name(path))


def extension_of(base: str) -> str:
    """``extension`` of a base name already split off its path."""
    dot = base.rfind(".")
    return base[dot:].lower() if dot > 0 and len(base) - dot <= MAX_EXT_LEN else ""


def parent_dir(path: str) -> str:
    p = _separators(path)
    cut = p.rfind("/")
    return p[:cut] if cut > 0 else "/"


def trie_regex(words: list[str]) -> re.Pattern[str]:
    """One regex for "any of ``words``" shaped as a trie: the same language as ``a|b|c``, but the
    engine follows one branch per character instead of trying every word at every position (a few
    hundred words: ~10x faster ``search``)."""
    trie: dict = {}
    for w in words:
        node = trie
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def emit(node: dict) -> str:
        end = "" in node
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 and not end else "(?:" + "|".join(branches) + ")"
        return body + "?" if end else body

    return re.compile(emit(trie))


def glob_literal(glob: str) -> str:
    """The longest run of characters a name must hold to match ``glob`` (fnmatch syntax)."""
    runs, cur, i, n = [], "", 0, len(glob)
    while i < n:
        c = glob[i]
        i += 1
        if c in "*?":
            runs.append(cur)
            cur = ""
        elif c == "[":
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                cur += c  # no closing bracket: a literal "[" (as fnmatch reads it)
            else:
                runs.append(cur)
                cur, i = "", j + 1
        else:
            cur += c
    runs.append(cur)
    return max(runs, key=len)


@dataclass(frozen=True)
class Lists:
    extensions: frozenset[str]
    common: frozenset[str]
    note_names: frozenset[str]
    note_globs: dict[str, re.Pattern[str]]  # first two characters of the name -> globs that begin so
    note_any: re.Pattern[str] | None  # globs that begin with a wildcard
    ext_globs: re.Pattern[str] | None  # "*.*locked"-style entries of the names list: suffixes, not notes
    ext_literals: re.Pattern[str] | None  # the longest literal of each: cheap to search, gates ext_globs
    note_phrases: tuple[re.Pattern[str], ...]
    # note_any split: globs that need a literal, tried only when ``any_literals`` finds one of them
    # (one trie search instead of every glob scanning the name), and the few that need none.
    any_literals: re.Pattern[str] | None = None
    any_gated: re.Pattern[str] | None = None
    any_ungated: re.Pattern[str] | None = None

    def known_extension(self, path: str) -> str | None:
        """The known ransomware extension the name ends with, if any (longest match)."""
        return self.known_extension_of(base_name(path).lower())

    def known_extension_of(self, base: str) -> str | None:
        """``known_extension`` of a lower-cased base name."""
        i = base.find(".", 1)
        while i != -1:
            if base[i:] in self.extensions:
                return base[i:]
            i = base.find(".", i + 1)
        if (self.ext_globs is not None and self.ext_literals is not None and self.ext_literals.search(base)
                and self.ext_globs.match(base)):
            return extension(base) or base
        return None

    def is_common(self, ext: str) -> bool:
        return ext in self.common

    def is_note(self, path: str) -> bool:
        return self.is_note_of(base_name(path).lower())

    def is_note_of(self, base: str) -> bool:
        """``is_note`` of a lower-cased base name."""
        if base in self.note_names:
            return True
        rx = self.note_globs.get(base[:2])
        if rx is not None and rx.match(base):
            return True
        if self.any_gated is not None and self.any_literals is not None and self.any_literals.search(base) \
                and self.any_gated.match(base):
            return True
        return bool(self.any_ungated is not None and self.any_ungated.match(base))

    def note_content_score(self, text: str) -> int:
        """How many ransom-note phrases a text holds (the agent's fast path reads small new files)."""
        sample = text[:1024]
        return sum(1 for rx in self.note_phrases if rx.search(sample))


@lru_cache(maxsize=8)
def load_lists(
    extra_extensions: tuple[str, ...] = (),
    extra_note_names: tuple[str, ...] = (),
    extra_common: tuple[str, ...] = (),
) -> Lists:
    common = {e.lower() for line in _lines("common_extensions.txt") for e in line.split()}
    common.update(e.lower() for e in extra_common)
    exts = {e.lower() for e in _lines("ransomware_extensions.txt")} | {e.lower() for e in extra_extensions}
    names: set[str] = set()
    globs: dict[str, list[str]] = {}
    any_globs: list[str] = []
    ext_globs: list[str] = []
    literals: set[str] = set()
    gated: list[str] = []
    ungated: list[str] = []
    for pattern in [*_lines("ransom_note_names.txt"), *extra_note_names]:
        p = pattern.lower()
        if p.startswith("*") and not p[1:2].isalnum():
            ext_globs.append(fnmatch.translate(p))  # a pattern for what a name ends with
            literals.add(max(re.split(r"[*?\[\]]", p), key=len))
        elif any(c in p for c in "*?["):
            # Indexed by the literal first two characters, so a name is matched against the few
            # globs that could match it, not a thousand (that cost ~250 us per file).
            head = p[:2]
            if any(c in head for c in "*?["):
                any_globs.append(fnmatch.translate(p))
                # Only a glob that scans the name (leading "*") and needs 3+ characters is worth gating.
                (gated if p.startswith("*") and len(glob_literal(p)) >= 3 else ungated).append(p)
            else:
                globs.setdefault(head, []).append(fnmatch.translate(p))
        else:
            names.add(p)
    indexed = {h: re.compile("|".join(f"(?:{g})" for g in gs)) for h, gs in globs.items()}
    rx = re.compile("|".join(f"(?:{g})" for g in any_globs)) if any_globs else None
    erx = re.compile("|".join(f"(?:{g})" for g in ext_globs)) if ext_globs else None
    lit = trie_regex(sorted(literals)) if literals and all(literals) else None
    phrases = tuple(re.compile(p, re.IGNORECASE) for p in _lines("ransom_note_content.txt"))
    def alternation(globs: list[str]) -> re.Pattern[str] | None:
        return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs)) if globs else None

    any_lits = trie_regex(sorted({glob_literal(g) for g in gated})) if gated else None
    return Lists(frozenset(exts), frozenset(common), frozenset(names), indexed, rx, erx, lit, phrases,
                 any_lits, alternation(gated), alternation(ungated))

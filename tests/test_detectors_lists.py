"""The name lists' fast paths (trie-shaped literal gates) decide exactly as plain glob matching."""
from __future__ import annotations

import fnmatch
import random
import re

from dwcore.detectors.lists import _lines, extension, glob_literal, load_lists, trie_regex


def _reference_is_note(base: str, names: set[str], globs: list[str]) -> bool:
    return base in names or any(fnmatch.fnmatchcase(base, g) for g in globs)


def _reference_known(base: str, lists, literals: re.Pattern[str]) -> str | None:
    i = base.find(".", 1)
    while i != -1:
        if base[i:] in lists.extensions:
            return base[i:]
        i = base.find(".", i + 1)
    if literals.search(base) and lists.ext_globs.match(base):
        return extension(base) or base
    return None


def _samples(patterns: list[str], rng: random.Random) -> list[str]:
    """Names built from the lists themselves (so that many do match), hostile bytes and plain names."""
    fill = ["", "x", "report", "2024", "..", "[a]", "é", "\x1b[31m", "a" * 300, "\\xff"]
    out = ["report-0012345.docx", "readme.txt", "how_to_decrypt.html", ".gitignore", "x", "", "..."]
    for p in patterns:
        out.append(p)
        out.append(re.sub(r"[*?]", lambda _: rng.choice(fill), p))
        out.append("q" + p.replace("*", "").replace("?", "z"))
        out.append(p.replace("*", "") + ".txt")
    return out


def test_note_names_and_known_extensions_match_as_plain_globs_do() -> None:
    rng = random.Random(11)
    lists = load_lists()
    raw = [p.lower() for p in _lines("ransom_note_names.txt")]
    globs = [p for p in raw if any(c in p for c in "*?[") and not (p.startswith("*") and not p[1:2].isalnum())]
    names = {p for p in raw if not any(c in p for c in "*?[")}
    ext_globs = [p for p in raw if p.startswith("*") and not p[1:2].isalnum()]
    plain_literals = re.compile("|".join(re.escape(max(re.split(r"[*?\[\]]", g), key=len))
                                         for g in sorted(ext_globs)))
    exts = sorted(lists.extensions)
    samples = _samples(raw, rng) + [f"file{e}" for e in exts] + [f"a{e}.x" for e in exts[:500]]
    matched = 0
    for base in samples:
        base = base.lower()
        want = _reference_is_note(base, names, globs)
        assert lists.is_note("/srv/d/" + base) == want, base
        matched += want
        # Known extension as a plain alternation of the literals decided it before the trie.
        assert lists.known_extension("/srv/d/" + base) == _reference_known(base, lists, plain_literals), base
    assert matched > 500  # the samples do exercise the globs


def test_trie_regex_is_the_alternation_of_its_words() -> None:
    rng = random.Random(2)
    words = ["a", "ab", "abc", "b.c", "[x]", "x+y", "lock", "locked", "\\"] + [
        "".join(rng.choice("ab.c[") for _ in range(rng.randrange(1, 6))) for _ in range(200)]
    rx = trie_regex(sorted(set(words)))
    plain = re.compile("|".join(re.escape(w) for w in sorted(set(words))))
    for _ in range(3000):
        s = "".join(rng.choice("ab.c[x+ylo\\") for _ in range(rng.randrange(0, 12)))
        assert bool(rx.search(s)) == bool(plain.search(s)), s


def test_glob_literal_is_a_run_every_match_holds() -> None:
    assert glob_literal("*abat*info*.*") == "abat"
    assert glob_literal(".[*].blt") == ".blt"
    assert glob_literal("*[id]*look") == "look"
    assert glob_literal("*[unclosed") == "[unclosed"

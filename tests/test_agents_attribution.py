"""Owner attribution: who an event is pinned on when there is no auditd."""
from __future__ import annotations

import os
import pwd

from dwcore.agents.attribution import UNKNOWN_OWNER, OwnerResolver


def test_existing_file_is_attributed_to_its_owner(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    os.chown(f, 1234, 1234)
    owner = OwnerResolver(name_for_uid=lambda uid: {1234: "alice"}.get(uid, str(uid))).resolve(str(f))
    assert owner == ("alice", "1234")


def test_uid_without_passwd_entry_is_named_by_number(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    unused = next(u for u in range(54321, 60000) if not _has_user(u))
    os.chown(f, unused, 0)
    assert OwnerResolver().resolve(str(f)) == (str(unused), str(unused))


def _has_user(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def test_deleted_path_uses_remembered_owner(tmp_path):
    f = tmp_path / "gone.txt"
    f.write_text("x")
    os.chown(f, 1234, 0)
    os.chown(tmp_path, 0, 0)
    r = OwnerResolver(name_for_uid=lambda uid: {1234: "alice", 0: "root"}[uid])
    r.resolve(str(f))  # seen while it existed
    f.unlink()
    assert r.resolve(str(f)).user_name == "alice"


def test_unseen_deleted_path_falls_back_to_nearest_existing_parent(tmp_path):
    d = tmp_path / "share"
    d.mkdir()
    os.chown(d, 1234, 0)
    r = OwnerResolver(name_for_uid=lambda uid: {1234: "alice"}.get(uid, "other"))
    assert r.resolve(str(d / "never" / "seen.txt")).user_name == "alice"


def test_rename_moves_the_remembered_owner(tmp_path):
    r = OwnerResolver(name_for_uid=lambda uid: {1234: "alice"}.get(uid, "other"))
    r.remember(str(tmp_path / "old"), 1234)
    r.moved(str(tmp_path / "old"), str(tmp_path / "new"))
    os.chown(tmp_path, 0, 0)
    assert r.resolve(str(tmp_path / "new")).user_name == "alice"
    assert r.resolve(str(tmp_path / "old")).user_name == "other"  # parent (root), not alice


def test_memory_is_bounded_and_evicts_least_recently_seen():
    r = OwnerResolver(max_paths=3, stat=_no_stat)
    for i in range(5):
        r.remember(f"/x/{i}", 1000 + i)
    assert len(r) == 3
    assert r.resolve("/x/0") == UNKNOWN_OWNER
    assert r.resolve("/x/4").user_uid == "1004"


def test_uid_names_are_cached():
    calls = []

    def name(uid: int) -> str:
        calls.append(uid)
        return "bob"

    r = OwnerResolver(name_for_uid=name)
    for _ in range(100):
        r.owner_of_uid(42)
    assert calls == [42]


def _no_stat(path: str) -> os.stat_result:
    raise FileNotFoundError(path)

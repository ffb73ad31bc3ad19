"""A harmless simulated attack, to prove the pipeline end to end (a self-test an admin can run
daily): write N files into a directory, then rename each to a ransomware-style extension, or
delete them. It only touches files it created itself."""
from __future__ import annotations

import os
from pathlib import Path

from rich.progress import Progress


def simulate_rename(directory: Path, files: int, extension: str = ".locked", show_progress: bool = True) -> int:
    target = directory / "dataward-selftest"
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = target / f"sample-{i:05d}.csv"
        path.write_bytes(os.urandom(256))
        paths.append(path)
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task(f"renaming to *{extension}", total=files)
        for path in paths:
            path.rename(path.with_name(path.name + extension))
            progress.advance(task)
    return files


def simulate_delete(directory: Path, files: int, show_progress: bool = True, prepare: bool = False) -> int:
    """Delete the self-test's victim files; with ``prepare``, only create them.

    Deleting files the same user created minutes earlier is churn (build output, temp files),
    which dataward deliberately does not alert on; the bulk-delete self-test therefore deletes
    files that were prepared earlier (``prepare`` once, then delete after ``settings.churn_s``, or
    on a dataward started after the preparation). Returns how many files were created or deleted.
    """
    target = directory / "dataward-selftest"
    target.mkdir(parents=True, exist_ok=True)
    if prepare:
        for i in range(files):
            (target / f"victim-{i:05d}.bin").write_bytes(b"x" * 64)
        return files
    paths = sorted(target.glob("victim-*.bin"))[:files]
    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("deleting", total=len(paths))
        for path in paths:
            path.unlink()
            progress.advance(task)
    return len(paths)

"""Optional parts of the install: a missing extra is one clear line naming what to install.

The base install is what a file-server agent needs. The forensic store (chDB, pyarrow, pandas,
clickhouse-connect), the learned models (scikit-learn) and plotting are extras, imported only
where they are used, so that ``dataward agent ...`` never loads them.
"""
from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Imports ``module`` or raises MissingExtra: "<what> needs pip install 'dataward[<extra>]'"."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(f"{what} needs the {extra!r} extra ({exc.name or module} is not installed): "
                           f"pip install 'dataward[{extra}]'") from None

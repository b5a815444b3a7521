"""Finding a user's app modules: from their project's folder, whatever the working directory.

``--app`` names modules; they are imported from ``--app-dir`` (default: the working
directory) and the user's own ``PYTHONPATH``. Shardflow itself is one package,
``shardflow``, so a user's ``router.py`` or ``examples/`` there changes nothing for it.
A module that cannot be imported is a SettingsError naming it, refused at start.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Iterable

from shardflow.infra.errors import SettingsError


def app_dir(configured: str | None) -> str:
    return os.path.abspath(configured or os.getcwd())


def import_apps(modules: Iterable[str], folder: str | None = None) -> list[types.ModuleType]:
    where = app_dir(folder)
    if where not in sys.path:
        sys.path.insert(0, where)
    imported = []
    for name in modules:
        try:
            imported.append(importlib.import_module(name))
        except Exception as exc:  # the user's code: any failure refuses the setting
            raise SettingsError(
                f"setting app: cannot import {name!r} from {where} or PYTHONPATH: "
                f"{type(exc).__name__}: {exc}",
                setting="app",
            ) from exc
    return imported


def child_env(folder: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process that imports the apps: the app folder first on its
    ``PYTHONPATH``, the user's own ``PYTHONPATH`` kept after it."""
    env = dict(os.environ if base is None else base)
    kept = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([app_dir(folder), *([kept] if kept else [])])
    return env

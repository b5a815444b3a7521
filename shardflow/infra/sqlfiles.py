"""Named SQL, loaded once from a package's ``sql/`` folder: the one loader of every component.

A file holds ``-- name: x`` blocks; a block whose name starts with ``_`` is a fragment
that a later block includes with a line ``-- use: _x`` (two statements sharing SQL).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_USE = re.compile(r"^-- use: (\w+)\s*$", re.MULTILINE)


def sql_text(package: str, filename: str) -> str:
    """The text of ``<package>/sql/<filename>`` (``filename`` may name a subfolder)."""
    return resources.files(package).joinpath("sql", filename).read_text(encoding="utf-8")


def parse(text: str) -> dict[str, str]:
    """Split a file of ``-- name: x`` blocks into {name: statement}."""
    parts = _NAME.split(text)
    blocks: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in blocks:
            raise ValueError(f"query {name} is defined twice")
        body = _USE.sub(lambda m: _fragment(blocks, m.group(1)), body.strip("\n").rstrip())
        blocks[name] = body if name.startswith("_") else body.strip()
    return {name: body.rstrip(";") for name, body in blocks.items() if not name.startswith("_")}


def _fragment(blocks: dict[str, str], name: str) -> str:
    if not name.startswith("_") or name not in blocks:
        raise ValueError(f"-- use: {name} names no fragment defined above it")
    return blocks[name]


@cache
def named_queries(package: str, filename: str) -> dict[str, str]:
    """{name: statement} of one file, parsed once per process."""
    return parse(sql_text(package, filename))

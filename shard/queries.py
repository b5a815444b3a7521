"""Named SQL queries, loaded once from the ``.sql`` files of ``shard/sql``."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_USE = re.compile(r"^-- use: (\w+)\s*$", re.MULTILINE)


def sql_text(filename: str) -> str:
    return resources.files("shard").joinpath("sql", filename).read_text(encoding="utf-8")


def parse(text: str) -> dict[str, str]:
    """Split a file of ``-- name: x`` blocks into {name: statement}.

    A block whose name starts with ``_`` is a fragment, not a statement: a line
    ``-- use: _x`` of a later block is replaced by it (two statements sharing SQL)."""
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
def load(filename: str = "queries.sql") -> dict[str, str]:
    return parse(sql_text(filename))


def query(name: str) -> str:
    return load()[name]

"""Named SQL queries, loaded once from the ``.sql`` files of ``shard/sql``."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def sql_text(filename: str) -> str:
    return resources.files("shard").joinpath("sql", filename).read_text(encoding="utf-8")


def parse(text: str) -> dict[str, str]:
    """Split a file of ``-- name: x`` blocks into {name: statement}."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


@cache
def load(filename: str = "queries.sql") -> dict[str, str]:
    return parse(sql_text(filename))


def query(name: str) -> str:
    return load()[name]

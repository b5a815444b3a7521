"""The shard's named SQL queries (``shard/sql/queries.sql``), called by name."""

from __future__ import annotations

from shardflow.infra.sqlfiles import named_queries


def load() -> dict[str, str]:
    return named_queries("shardflow.shard", "queries.sql")


def query(name: str) -> str:
    return load()[name]

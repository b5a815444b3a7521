"""Schema migrations of a shard: numbered ``.sql`` files applied once each, in order.

``migrate`` records what it applied in ``shardflow.schema_migrations`` and takes an
advisory lock, so concurrent runs and repeated runs change nothing. The SQL API
(``functions.sql``) is re-applied every time, so it always matches the code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from shard.queries import parse, sql_text

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    folder = resources.files("shard").joinpath("sql", "migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return found


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Bring the shard schema up to date; returns the versions applied now."""
    q = parse(sql_text("migrate.sql"))
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute(q["lock"])
        await conn.execute(q["bootstrap"])
        done = {row["version"] for row in await conn.fetch(q["applied"])}
        for migration in migrations():
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(q["record"], migration.version, migration.name)
            applied_now.append(migration.version)
        await conn.execute(sql_text("functions.sql"))
    return applied_now

"""Schema migrations of a shard: numbered ``.sql`` files applied once each, in order.

``migrate`` records what it applied in ``shardflow.schema_migrations`` and takes an
advisory lock, so concurrent runs and repeated runs change nothing. The SQL API
(``sql/functions/*.sql``, by concept, in file name order) is re-applied every time, so
it always matches the code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg

from shardflow.infra.sqlfiles import parse

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(package: str = "shardflow.shard") -> list[Migration]:
    folder = resources.files(package).joinpath("sql", "migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return found


def function_files(package: str = "shardflow.shard") -> list[str]:
    """The texts of the package's SQL API files, in the order ``migrate`` applies them."""
    folder = resources.files(package).joinpath("sql", "functions")
    if not folder.is_dir():
        return []
    entries = sorted((e for e in folder.iterdir() if e.name.endswith(".sql")), key=lambda e: e.name)
    return [e.read_text(encoding="utf-8") for e in entries]


async def migrate(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy[Any],
    package: str = "shardflow.shard",
) -> list[int]:
    """Bring the schema of ``package`` (shard or coordinator) up to date.

    Returns the versions applied now. The package's ``sql/functions/*.sql``, if any,
    are re-applied every time.
    """
    sql = resources.files(package).joinpath("sql")
    q = parse(sql.joinpath("migrate.sql").read_text(encoding="utf-8"))
    applied_now: list[int] = []
    async with conn.transaction():
        await conn.execute(q["lock"])
        await conn.execute(q["bootstrap"])
        done = {row["version"] for row in await conn.fetch(q["applied"])}
        for migration in migrations(package):
            if migration.version in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(q["record"], migration.version, migration.name)
            applied_now.append(migration.version)
        for text in function_files(package):
            await conn.execute(text)
    return applied_now

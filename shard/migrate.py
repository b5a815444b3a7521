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
import pglast

from shardflow.infra.sqlfiles import parse

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
GENERIC_PLAN = "SET plan_cache_mode = force_generic_plan"
CUSTOM_PLAN = "SET plan_cache_mode = force_custom_plan"


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
        on_citus = await conn.fetchval(q["citus"])

        async def run(script: str) -> None:
            if not on_citus:
                await conn.execute(script)
                return
            # Citus propagates DDL of a distributed schema by the text of the statement,
            # and refuses a query string of several statements: one at a time there. And
            # it cannot distribute a generic plan of some statements with parameters
            # (INSERT ... SELECT), so there the functions plan each call for its values.
            for statement in pglast.split(script):
                await conn.execute(statement.replace(GENERIC_PLAN, CUSTOM_PLAN))

        await run(q["bootstrap"])
        done = {row["version"] for row in await conn.fetch(q["applied"])}
        for migration in migrations(package):
            if migration.version in done:
                continue
            await run(migration.sql)
            await conn.execute(q["record"], migration.version, migration.name)
            applied_now.append(migration.version)
        for text in function_files(package):
            await run(text)
    return applied_now

"""The slot hash: where a routing key lives. Stable and reproducible in any language.

``slot = int.from_bytes(md5(key.encode("utf-8")).digest()[:4], "big") % slots``

The SQL function ``shardflow.slot_of(key, slots)`` computes the same value on every
shard; ``tests/data/slot_vectors.json`` pins both.
"""

from __future__ import annotations

import hashlib

DEFAULT_SLOTS = 1024


def slot_of(routing_key: str, slots: int = DEFAULT_SLOTS) -> int:
    digest = hashlib.md5(routing_key.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:4], "big") % slots

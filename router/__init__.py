"""HTTP router (aiohttp): hashes workflow IDs onto slots and slots onto shards."""

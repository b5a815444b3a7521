"""Control plane: catalog, membership, health, slot moves, and the local cluster launcher."""

"""`shardflow demo`: placeholder replaced below."""

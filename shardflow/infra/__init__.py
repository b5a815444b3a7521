"""What every component shares: settings, pools, the SQL file loader, errors and logging.

Nothing here knows a shard, a router or a coordinator; they all build on it.
"""

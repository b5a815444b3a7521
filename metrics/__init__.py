"""Every Shardflow metric, defined once; exporters and the SQL that reads shard figures."""

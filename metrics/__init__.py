"""Every Shardflow metric, defined once; exporters and the SQL that reads shard figures."""

from prometheus_client import disable_created_metrics

# No `_created` series: they double the series count and nothing of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client

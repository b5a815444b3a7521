"""Every Shardflow metric, defined once; exporters and the SQL that reads shard figures."""

# Imported as shardflow.metrics only: the bare name (the repository root on sys.path) would
# load a second copy of every module, with error classes of its own.
if __name__ != "shardflow.metrics":
    raise ImportError(f"import shardflow.metrics, not {__name__}")

from prometheus_client import disable_created_metrics

# No `_created` series: they double the series count and nothing of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client

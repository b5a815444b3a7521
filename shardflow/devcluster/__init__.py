"""The local cluster launcher (``shardflow dev``): embedded Postgres servers, executors,
routers, coordinators, haproxy and Prometheus, supervised. Builds on the control plane
and the router; nothing there imports it."""

"""What every component's registry serves besides its own figures: the process (CPU,
memory, file descriptors), the platform, Python's garbage collector, and build info."""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
)

# The labels of shardflow_build_info (docs.py lists them: an Info declares none of its own).
BUILD_LABELS = ("version", "component", "python")


def version() -> str:
    try:
        return metadata.version("shardflow")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def add_standard(registry: CollectorRegistry, component: str) -> None:
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    if GC_COLLECTOR is not None:  # None where the interpreter has no gc.get_stats
        GCCollector(registry=registry)
    Info(
        "shardflow_build",
        "The running Shardflow: its version, component and Python (value 1).",
        registry=registry,
    ).info(dict(zip(BUILD_LABELS, (version(), component, platform.python_version()), strict=True)))

"""Read metric samples the way a scrape does (text exposition), by documented name."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, generate_latest

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def samples(text: str) -> dict[str, float]:
    """Each metric of an exposition and its largest sample: a histogram by its ``_count``
    (under the histogram's name), counters by their ``_total`` name."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _NAME.match(line)
        assert match is not None, line
        name = match[0]
        if name.endswith(("_bucket", "_sum")):
            continue
        name = name.removesuffix("_count")
        value = float(line.rsplit("}", 1)[-1].split()[0] if "}" in line else line.split()[1])
        found[name] = max(found.get(name, value), value)
    return found


def value(registry: CollectorRegistry, name: str) -> float:
    """The largest sample of ``name`` in ``registry`` (0 when it has none)."""
    return samples(generate_latest(registry).decode()).get(name, 0.0)

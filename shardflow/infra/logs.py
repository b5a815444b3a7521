"""Structured logs: one key=value line per event."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )

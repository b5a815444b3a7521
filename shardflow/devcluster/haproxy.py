"""haproxy for `shardflow dev --haproxy`: deploy/haproxy/haproxy.cfg with loopback addresses.

The deploy file is the one configuration (balancing, health checks on /readyz, retry
policy); here its ``bind`` lines and its ``server`` lines are replaced, nothing else.
"""

from __future__ import annotations

from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"


def render(template: str, bind: str, stats_bind: str, servers: list[str]) -> str:
    """The template with the frontend bound to ``bind``, the stats listener to
    ``stats_bind`` and one ``server`` line per ``host:port`` in ``servers``."""
    out: list[str] = []
    section = ""
    for line in template.splitlines():
        words = line.split()
        if line and not line[0].isspace() and words:
            section = words[0]
        if words[:1] == ["bind"]:
            out.append(f"    bind {stats_bind if section == 'listen' else bind}")
        elif words[:1] == ["server"]:
            if out[-1].split()[:1] != ["server"]:  # the first: all of ours in its place
                options = " ".join(words[3:])
                out += [f"    server router-{i} {addr} {options}" for i, addr in enumerate(servers)]
        else:
            out.append(line)
    return "\n".join(out) + "\n"

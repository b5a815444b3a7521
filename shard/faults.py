"""Named fault-injection points for crash tests.

``await faults.point("after_checkpoint_commit")`` is a no-op unless armed. Arm from
the environment of an executor process: ``SHARDFLOW_FAULTS="after_checkpoint_commit=kill@3"``
kills the process with SIGKILL the 3rd time the point is reached (``@N`` defaults
to 1). Actions: ``kill`` (SIGKILL itself), ``stop`` (SIGSTOP itself), ``raise``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field

from shardflow.infra.errors import SettingsError

POINTS = (
    "executor_registered",
    "after_claim",
    "before_checkpoint_commit",
    "after_checkpoint_commit",
    "before_step_commit",
    "after_step_commit",
    "move_precopied",
    "move_fenced",
    "move_copied",
    "move_flipped",
    "move_done",
)


class InjectedFault(Exception):
    pass


@dataclass
class Faults:
    armed: dict[str, tuple[str, int]] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, spec: str) -> Faults:
        armed: dict[str, tuple[str, int]] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, action = item.partition("=")
            action, _, nth = action.partition("@")
            if name not in POINTS or action not in ("kill", "stop", "raise"):
                raise SettingsError(
                    f"fault {item!r} is invalid: use POINT=kill|stop|raise[@N] with POINT one "
                    f"of {', '.join(POINTS)}"
                )
            armed[name] = (action, int(nth or "1"))
        return cls(armed)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Faults:
        env = os.environ if env is None else env
        return cls.parse(env.get("SHARDFLOW_FAULTS", ""))

    async def point(self, name: str) -> None:
        if not self.armed:
            return
        plan = self.armed.get(name)
        if plan is None:
            return
        self.hits[name] = self.hits.get(name, 0) + 1
        action, nth = plan
        if self.hits[name] != nth:
            return
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "stop":
            os.kill(os.getpid(), signal.SIGSTOP)
        else:
            raise InjectedFault(f"fault injected at {name}")

"""The systemd watchdog: ``WATCHDOG=1`` only while the daemon's services are alive.

With ``WatchdogSec=`` in the unit, systemd passes ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) and
kills and restarts the daemon when no ``WATCHDOG=1`` arrives in time. The daemon's main loop calls
``Watchdog.tick`` on every turn; a tick sends ``WATCHDOG=1`` (at half the timeout, as systemd
recommends) only when every watched service passes its probe: the threads that accept DICOM
associations, schedule jobs, route and serve the control API are running. A hung main loop or a
dead service thread therefore stops the pings, and systemd restarts the daemon.

Each service is watched through the threads its ``start`` call began (found by name), so the
probes need nothing from the services but their thread names.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from appliance.sd_notify import sd_notify

LOG = logging.getLogger("appliance.watchdog")

T = TypeVar("T")

# Without systemd's watchdog the services are still checked (and a dead one logged) this often.
UNWATCHED_CHECK_SECONDS = 5.0


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings systemd asks for (half of WATCHDOG_USEC), or None when off."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # meant for another process (our parent, say)
    return int(usec) / 1_000_000 / 2


class Watchdog:
    def __init__(
        self,
        interval: float | None,
        *,
        notify: Callable[[str], object] = sd_notify,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self._notify = notify
        self._clock = clock
        self._probes: list[tuple[str, Callable[[], bool]]] = []
        self._next = 0.0
        self._reported: tuple[str, ...] = ()

    @classmethod
    def from_environment(cls) -> Watchdog:
        return cls(watchdog_interval())

    def watch(self, name: str, probe: Callable[[], bool]) -> None:
        self._probes.append((name, probe))

    def watch_threads(self, name: str, start: Callable[[], T], *thread_names: str) -> T:
        """Call ``start`` and watch the threads named ``thread_names`` it began."""
        before = set(threading.enumerate())
        result = start()
        started = [t for t in threading.enumerate() if t not in before and t.name in thread_names]
        if not started:
            LOG.error("watchdog: %s started no thread named %s", name, " or ".join(thread_names))
        self.watch(name, lambda: bool(started) and all(t.is_alive() for t in started))
        return result

    def dead(self) -> list[str]:
        """The watched services whose probe fails now."""
        dead = []
        for name, probe in self._probes:
            try:
                alive = probe()
            except Exception:
                LOG.exception("watchdog: the probe of %s failed", name)
                alive = False
            if not alive:
                dead.append(name)
        return dead

    def tick(self) -> bool | None:
        """Check the services when due and ping systemd if all are alive.

        True: checked, all alive; False: checked, something is dead (no ping); None: not due.
        """
        now = self._clock()
        if now < self._next:
            return None
        self._next = now + (self.interval or UNWATCHED_CHECK_SECONDS)
        dead = tuple(self.dead())
        if dead:
            if dead != self._reported:
                LOG.error(
                    "not alive: %s; %s",
                    ", ".join(dead),
                    "systemd's watchdog will restart the daemon"
                    if self.interval
                    else "restart the daemon",
                )
                self._notify(f"STATUS=not alive: {', '.join(dead)}")
                self._reported = dead
            return False
        if self._reported:
            LOG.info("all services alive again")
            self._reported = ()
        if self.interval:
            self._notify("WATCHDOG=1")
        return True

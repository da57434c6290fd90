"""Runs a release action once a transport has gone unused for a while.

The engine does not step while it has no request, so nothing on the engine's own
thread could notice that it went idle: a daemon thread waits for the deadline. It
shares the executor's lock, so the action never overlaps a step or a control call,
and it sleeps on a condition (no polling) while nothing is armed.
"""

import threading
import time
from collections.abc import Callable

from vllm.logger import init_logger

logger = init_logger(__name__)


class IdleTimer:
    def __init__(
        self,
        idle_s: float,
        on_idle: Callable[[], None],
        lock: threading.RLock,
        name: str = "vllm-idle-timer",
    ):
        self.idle_s = idle_s
        self._on_idle = on_idle
        # The executor's lock: held by every step, and by on_idle when it runs.
        self._cond = threading.Condition(lock)
        self._deadline: float | None = None
        self._stopped = False
        self._name = name
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        """Restarts the countdown; call with the lock held, after each use."""
        if self._stopped:
            return
        was_disarmed = self._deadline is None
        self._deadline = time.monotonic() + self.idle_s
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=self._name, daemon=True
            )
            self._thread.start()
        elif was_disarmed:
            # Only a disarmed waiter sleeps without a timeout and needs waking;
            # an armed one wakes at its old deadline and waits for the rest.
            self._cond.notify()

    def stop(self) -> None:
        """Ends the thread; on_idle never runs after this returns (unless called
        from on_idle itself, or the lock stays held elsewhere for seconds)."""
        self._stopped = True
        thread = self._thread
        if thread is None:
            return
        # A step holding the lock would delay the wake-up; the thread is a daemon
        # and sees _stopped when it wakes, so give up waiting after a while.
        if self._cond.acquire(timeout=5.0):
            try:
                self._cond.notify()
            finally:
                self._cond.release()
        if thread is not threading.current_thread():
            thread.join(timeout=5.0)

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._deadline = None
                try:
                    self._on_idle()
                except Exception:  # the next use must still work: report, go on
                    logger.exception(
                        "%s: releasing the idle transport failed", self._name
                    )

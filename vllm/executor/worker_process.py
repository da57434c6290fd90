"""A worker rank in a fresh Python interpreter, connected to the engine by a pipe.

Started with ``subprocess`` rather than multiprocessing's spawn, which re-imports the
user's ``__main__`` in the child: that fails for a script piped on stdin
(``FileNotFoundError: '<stdin>'``) and re-runs the top level of a script without an
``if __name__ == "__main__"`` guard. A fresh interpreter imports only what the pipe
names, so any script, notebook or REPL can start workers. It also shares no state
with the engine; fork would copy the engine's OpenMP thread pool, which hangs.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

# Puts the engine's import path first, then runs the target the pipe sends.
_BOOT = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[2]); "
    "from vllm.executor.worker_process import child_main; "
    "child_main(int(sys.argv[1]), int(sys.argv[3]))"
)


class WorkerProcess:
    """Runs ``target(conn, *args)`` in a new interpreter; ``conn`` is the child's
    end of a duplex pipe whose other end is ``self.conn``. ``target`` must be a
    module-level function (it travels by name)."""

    def __init__(self, target: Callable[..., None], args: tuple):
        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _BOOT,
                str(theirs.fileno()),
                json.dumps(sys.path),
                str(os.getpid()),
            ],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send((target, args))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def exitcode(self) -> int | None:
        """None while running; negative: killed by that signal."""
        return self.proc.poll()

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def join(self, timeout: float) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)

    def kill(self) -> None:
        if self.is_alive():
            self.proc.kill()
        self.join(1.0)


def child_main(fd: int, parent_pid: int) -> None:
    # Ctrl-C reaches the whole process group; the engine decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    conn = Connection(fd)
    target, args = conn.recv()
    try:
        target(conn, *args)
    finally:
        conn.close()


def _exit_with_parent(parent_pid: int) -> None:
    """A worker must not outlive the engine, even if the engine is killed."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(0)


def send_reply(conn: Connection, reply: tuple[str, Any]) -> bool:
    """Sends ("ok", value) or ("error", text); False once the engine closed the
    pipe. A value that does not pickle is sent as an error instead."""
    try:
        conn.send(reply)
    except OSError:
        return False
    except Exception as e:
        return send_reply(conn, ("error", f"the reply could not be sent: {e!r}"))
    return True

"""IdleTimer runs its action once per idle period, under the shared lock, never
while the lock is held elsewhere, and never after stop()."""

import threading

from vllm.executor.idle_timer import IdleTimer


def test_runs_once_per_idle_period_under_the_lock():
    lock = threading.RLock()
    ran = threading.Semaphore(0)
    held = []

    def on_idle():
        held.append(lock._is_owned())
        ran.release()

    timer = IdleTimer(0.05, on_idle, lock)
    with lock:
        timer.arm()
    assert ran.acquire(timeout=10)
    assert not ran.acquire(timeout=0.3)  # not again until the next use
    with lock:
        timer.arm()  # wakes the disarmed thread
    assert ran.acquire(timeout=10)
    assert held == [True, True]
    timer.stop()


def test_waits_for_a_use_in_progress_and_stops_for_good():
    lock = threading.RLock()
    ran = threading.Event()
    timer = IdleTimer(0.01, ran.set, lock)
    with lock:
        timer.arm()
        # The deadline passes while a step holds the lock: nothing runs yet.
        assert not ran.wait(0.2)
    assert ran.wait(10)
    timer.stop()
    ran.clear()
    # Stopped before its deadline: the action never runs, the thread ends.
    timer = IdleTimer(0.3, ran.set, lock)
    with lock:
        timer.arm()
    timer.stop()
    assert not timer._thread.is_alive()
    assert not ran.wait(0.6)

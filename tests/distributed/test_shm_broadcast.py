"""The shared-memory broadcast ring alone: several reader processes get every
message in order (slot wraparound, messages over the socket fallback, a slow
reader), idle readers sleep in the kernel and are woken, and no /dev/shm entry
outlives attachment, even when a reader is killed."""

import hashlib
import os
import signal
import time

import psutil
import pytest

from vllm.distributed.shm_broadcast import ShmRingReader, ShmRingWriter
from vllm.executor.worker_process import WorkerProcess

CHUNK = 1024  # small slots, so modest messages take the socket fallback


def reader_main(conn, handle, index: int, delay_s: float) -> None:
    """Reads until b"end"; replies with the count and a digest of the stream."""
    ring = ShmRingReader(handle, index)
    conn.send("attached")
    digest, count = hashlib.sha256(), 0
    while (msg := ring.read(timeout=30)) != b"end":
        digest.update(len(msg).to_bytes(8, "little") + msg)
        count += 1
        time.sleep(delay_s)
    ring.close()
    conn.send((count, digest.hexdigest()))


def start_readers(writer: ShmRingWriter, delays: list[float]) -> list[WorkerProcess]:
    procs = [
        WorkerProcess(reader_main, (writer.handle(), i, d))
        for i, d in enumerate(delays)
    ]
    for proc in procs:
        assert proc.conn.recv() == "attached"
    writer.wait_readers(timeout=30)
    return procs


def messages() -> list[bytes]:
    """Small and big (over CHUNK) messages, many more than the ring's slots."""
    sizes = [0, 1, CHUNK, CHUNK + 1, 10, 200_000, 5, 3 * CHUNK, 700] * 6
    return [os.urandom(n) for n in sizes]


@pytest.fixture
def shm_unchanged():
    before = set(os.listdir("/dev/shm"))
    yield
    assert set(os.listdir("/dev/shm")) - before == set()


def test_every_reader_gets_every_message(shm_unchanged):
    writer = ShmRingWriter(n_readers=3, chunk_bytes=CHUNK, spin_us=50, n_slots=4)
    # Reader 2 is slow: the writer must wait for it, never overwrite a slot.
    procs = start_readers(writer, [0.0, 0.0, 0.003])
    name = writer.handle().name
    assert name not in os.listdir("/dev/shm")  # unlinked once all attached
    msgs = messages()
    expected = hashlib.sha256()
    for msg in msgs:
        writer.write(msg, timeout=30)
        expected.update(len(msg).to_bytes(8, "little") + msg)
    writer.write(b"end", timeout=30)
    for proc in procs:
        assert proc.conn.recv() == (len(msgs), expected.hexdigest())
        proc.join(10)
    writer.close()


def test_read_timeout_keeps_the_message_for_later(shm_unchanged):
    writer = ShmRingWriter(n_readers=1, chunk_bytes=CHUNK, spin_us=10)
    reader = ShmRingReader(writer.handle(), 0)
    writer.wait_readers(timeout=10)
    with pytest.raises(TimeoutError):
        reader.read(timeout=0.05)
    assert not reader.ready()
    writer.write(b"hello")
    assert reader.ready()
    assert reader.read(timeout=1) == b"hello"
    big = os.urandom(50 * CHUNK)
    writer.write(big)
    assert reader.read(timeout=5) == big
    reader.close()
    writer.close()


def test_idle_reader_sleeps_in_the_kernel_and_is_woken(shm_unchanged):
    writer = ShmRingWriter(n_readers=1, chunk_bytes=CHUNK, spin_us=50)
    (proc,) = start_readers(writer, [0.0])
    ps = psutil.Process(proc.pid)
    time.sleep(0.3)  # past its spin window
    # Its sleeping flag is raised, and the process is asleep, burning no CPU.
    assert writer.mm[writer.lay.sleeping] == 1
    cpu_before = sum(ps.cpu_times()[:2])
    time.sleep(1.0)
    assert sum(ps.cpu_times()[:2]) - cpu_before < 0.1
    assert ps.status() == psutil.STATUS_SLEEPING
    writer.write(b"wake up", timeout=5)
    writer.write(b"end", timeout=5)
    count, _ = proc.conn.recv()
    assert count == 1
    proc.join(10)
    writer.close()


def test_killed_reader_leaves_nothing_and_writer_times_out(shm_unchanged):
    writer = ShmRingWriter(n_readers=2, chunk_bytes=CHUNK, spin_us=0, n_slots=2)
    procs = start_readers(writer, [0.0, 0.0])
    os.kill(procs[1].pid, signal.SIGKILL)
    procs[1].join(10)
    # The dead reader never frees its slots: the writer reports it, not hangs.
    with pytest.raises(TimeoutError):
        for i in range(10):
            writer.write(b"x%d" % i, timeout=0.5)
    procs[0].kill()
    writer.close()

"""A broadcast ring in shared memory: one writer, N readers, no copy per reader.

The segment holds a header and ``n_slots`` fixed slots of ``chunk_bytes``. Message k
goes to slot ``k % n_slots``; the writer stores the payload once, then the slot's
sequence number (its "written" flag, ``k + 1``), and each reader sets its own read
flag in the slot once it has the bytes. The writer reuses a slot only when every read
flag is set, so a slow reader holds the writer back instead of losing messages.

Waiting readers spin for ``spin_us`` (a step that follows closely is caught without a
syscall), then announce they are asleep (a per-reader byte) and sleep in the kernel
on a futex over a shared 32-bit word that the writer bumps on every message. The
writer makes the wake syscall only when some reader announced it sleeps, so a busy
ring costs no syscall. Both sides put a full memory fence between their store and
the load that follows (announce then re-check; bump then look for sleepers): without
it x86 may let each side read the other's old value and the wake-up is lost.

A message larger than a slot travels through a Unix socket per reader (abstract
namespace: no file to leave behind); its slot only says how long it is. A sender
thread streams it, so a writer never blocks on a reader that is itself waiting for
the writer's own reader side.

The writer creates and owns the ``/dev/shm`` entry. Readers attach from ``handle()``
(picklable), opening the segment and then connecting to the writer's socket; once
``wait_readers`` has seen every reader connect, the writer unlinks the entry, so
from then on no process, killed or not, can leave it behind. Every wait takes a
timeout and raises ``TimeoutError``, so callers can check that their peers live.
"""

import contextlib
import ctypes
import mmap
import os
import queue
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass

_SYS_FUTEX = 202  # x86_64
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1  # shared between processes: no PRIVATE flag
_LINE = 64  # cache line: header fields and slot payloads start on one
_SLOT_META = struct.Struct("=QQ")  # sequence number (0: never written), length
_WORD = struct.Struct("=I")
_LIBC = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _futex(addr: int, op: int, value: int, timeout: float | None = None) -> None:
    ts = None
    if timeout is not None:
        sec = int(timeout)
        ts = ctypes.byref(_Timespec(sec, int((timeout - sec) * 1e9)))
    # Releases the GIL while asleep (ctypes does for every foreign call).
    _LIBC.syscall(
        ctypes.c_long(_SYS_FUTEX),
        ctypes.c_void_p(addr),
        ctypes.c_int(op),
        ctypes.c_int(value),
        ts,
        None,
        ctypes.c_int(0),
    )


_FENCE = threading.Lock()


def _fence() -> None:
    """A full memory barrier: a lock's acquire is an atomic read-modify-write
    (``lock cmpxchg`` on x86), which orders earlier stores before later loads."""
    _FENCE.acquire()
    _FENCE.release()


def _round_up(n: int) -> int:
    return (n + _LINE - 1) // _LINE * _LINE


@dataclass(frozen=True)
class RingHandle:
    """What a reader needs to attach, from any process on this machine."""

    name: str  # the /dev/shm entry
    sock_name: str  # abstract Unix socket for messages over chunk_bytes
    n_readers: int
    n_slots: int
    chunk_bytes: int
    spin_us: float


class _Layout:
    """Offsets in the segment: [wake word][sleeping flags][slot 0][slot 1]..."""

    def __init__(self, h: RingHandle):
        self.sleeping = _LINE
        self.slot0 = _LINE + _round_up(h.n_readers)
        self.meta = _round_up(_SLOT_META.size + h.n_readers)
        self.slot_bytes = self.meta + _round_up(h.chunk_bytes)
        self.size = self.slot0 + h.n_slots * self.slot_bytes

    def slot(self, k: int, n_slots: int) -> int:
        return self.slot0 + (k % n_slots) * self.slot_bytes


class _Ring:
    def __init__(self, handle: RingHandle, fd: int):
        self.h = handle
        self.lay = _Layout(handle)
        try:
            self.mm = mmap.mmap(fd, self.lay.size)
        finally:
            os.close(fd)
        # The mapping never moves; the ctypes view is dropped at once so that
        # closing the mmap later is not refused for an exported buffer.
        self.word_addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mm))
        self.next = 0  # sequence number of the next message written or read
        self.closed = False

    def _meta(self, k: int) -> tuple[int, int, int]:
        off = self.lay.slot(k, self.h.n_slots)
        seq, length = _SLOT_META.unpack_from(self.mm, off)
        return off, seq, length


class ShmRingWriter(_Ring):
    def __init__(
        self, n_readers: int, chunk_bytes: int, spin_us: float, n_slots: int = 4
    ):
        tag = f"vllm-mq-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        handle = RingHandle(tag, tag, n_readers, n_slots, chunk_bytes, spin_us)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind("\0" + tag)
        self._listener.listen(n_readers)
        fd = os.open(f"/dev/shm/{tag}", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        self._linked = True
        try:
            os.ftruncate(fd, _Layout(handle).size)
        except BaseException:
            os.close(fd)
            self._unlink()
            raise
        super().__init__(handle, fd)
        self._conns: list[socket.socket] | None = None
        self._outbox: queue.Queue = queue.Queue()
        self._sender: threading.Thread | None = None

    def handle(self) -> RingHandle:
        return self.h

    def wait_readers(self, timeout: float) -> None:
        """Waits until every reader attached, then unlinks the /dev/shm entry
        (readers that attached keep their mapping)."""
        if self._conns is not None:
            return
        conns: list[socket.socket | None] = [None] * self.h.n_readers
        self._listener.settimeout(timeout)
        for _ in range(self.h.n_readers):
            conn, _ = self._listener.accept()
            conn.settimeout(timeout)
            (index,) = _WORD.unpack(_recv_exact(conn, _WORD.size))
            conn.settimeout(None)
            conns[index] = conn
        self._conns = conns
        self._listener.close()
        self._unlink()

    def write(self, data: bytes, timeout: float | None = None) -> None:
        """Publishes ``data`` to every reader. Raises TimeoutError if a reader
        still holds the slot after ``timeout`` s (nothing is written then)."""
        k = self.next
        off, seq, _ = self._meta(k)
        flags = slice(off + _SLOT_META.size, off + _SLOT_META.size + self.h.n_readers)
        done = b"\1" * self.h.n_readers
        if seq and self.mm[flags] != done:
            self._wait_free(flags, done, timeout)
        big = len(data) > self.h.chunk_bytes
        if big:
            self.wait_readers(timeout or 60.0)
            self._send_later(data)
        else:
            start = off + self.lay.meta
            self.mm[start : start + len(data)] = data
        self.mm[flags] = bytes(self.h.n_readers)
        # Stores become visible in program order on x86: the sequence number last.
        _SLOT_META.pack_into(self.mm, off, k + 1, len(data))
        self.next = k + 1
        (word,) = _WORD.unpack_from(self.mm, 0)
        _WORD.pack_into(self.mm, 0, (word + 1) & 0xFFFFFFFF)
        _fence()
        sleeping = self.mm[self.lay.sleeping : self.lay.sleeping + self.h.n_readers]
        if sleeping.strip(b"\0"):
            _futex(self.word_addr, _FUTEX_WAKE, 0x7FFFFFFF)

    def _wait_free(self, flags: slice, done: bytes, timeout: float | None) -> None:
        """A reader has not read the slot's previous message yet. Rare (the ring
        is n_slots messages ahead), so back off with short sleeps."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 20e-6
        while self.mm[flags] != done:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError("a reader holds the ring's next slot")
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)

    def _send_later(self, data: bytes) -> None:
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_loop, daemon=True)
            self._sender.start()
        self._outbox.put(data)

    def _send_loop(self) -> None:
        while (data := self._outbox.get()) is not None:
            for conn in self._conns:
                # A reader that is gone does not stop its peers' data.
                with contextlib.suppress(OSError):
                    conn.sendall(data)

    def _unlink(self) -> None:
        if self._linked:
            self._linked = False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"/dev/shm/{self.h.name}")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._unlink()
        if self._sender is not None:
            self._outbox.put(None)
            self._sender.join(1.0)
        for conn in self._conns or []:
            conn.close()
        if self._conns is None:
            self._listener.close()
        self.mm.close()


class ShmRingReader(_Ring):
    def __init__(self, handle: RingHandle, index: int):
        super().__init__(handle, os.open(f"/dev/shm/{handle.name}", os.O_RDWR))
        self.index = index
        self._sleep_flag = self.lay.sleeping + index
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect("\0" + handle.sock_name)
        self._sock.sendall(_WORD.pack(index))
        self._partial: bytearray | None = None  # a big message half received
        self._got = 0

    def ready(self) -> bool:
        """Whether the next message is there (never blocks)."""
        return self._meta(self.next)[1] == self.next + 1

    def read(self, timeout: float | None = None) -> bytes:
        """The next message; TimeoutError if none comes within ``timeout`` s
        (the message is then still there for the next call)."""
        k = self.next
        off, seq, length = self._meta(k)
        if seq != k + 1:
            self._wait(k, timeout)
            off, seq, length = self._meta(k)
        if length > self.h.chunk_bytes:
            data = self._recv_big(length, timeout)
        else:
            start = off + self.lay.meta
            data = self.mm[start : start + length]
        self.mm[off + _SLOT_META.size + self.index] = 1
        self.next = k + 1
        return data

    def _wait(self, k: int, timeout: float | None) -> None:
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        spin_end = now + self.h.spin_us * 1e-6
        while time.monotonic() < spin_end:
            if self.ready():
                return
        while True:
            (word,) = _WORD.unpack_from(self.mm, 0)
            self.mm[self._sleep_flag] = 1
            _fence()
            if self.ready():
                self.mm[self._sleep_flag] = 0
                return
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self.mm[self._sleep_flag] = 0
                raise TimeoutError("no message on the ring")
            # Returns at once if the writer bumped the word since we read it.
            _futex(self.word_addr, _FUTEX_WAIT, word, left)
            self.mm[self._sleep_flag] = 0
            if self.ready():
                return

    def _recv_big(self, length: int, timeout: float | None) -> bytes:
        if self._partial is None:
            self._partial, self._got = bytearray(length), 0
        view = memoryview(self._partial)
        self._sock.settimeout(timeout)
        while self._got < length:
            n = self._sock.recv_into(view[self._got :])
            if n == 0:
                raise EOFError("the ring's writer closed its socket")
            self._got += n
        data, self._partial = bytes(self._partial), None
        return data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._sock.close()
            self.mm.close()


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = conn.recv(n - len(buf))
        if not part:
            raise EOFError("peer closed")
        buf += part
    return buf

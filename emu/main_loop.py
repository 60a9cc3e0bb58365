"""The main loop: one thread multiplexing every chardev, the virtual clock's timers and signals.

Built on ``select.epoll`` directly (cheap to import, none of asyncio's or selectors' per-event
overhead: a qtest round trip is one wakeup). Other threads hand work to it with
``call_soon_threadsafe``; SIGTERM/SIGINT wake it through the signal wakeup fd.
"""
from __future__ import annotations

import os
import select
import signal
import threading
from collections import deque
from collections.abc import Callable


class MainLoop:
    """Runs callbacks for readable/writable fds, due timers and queued calls until stopped."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._registered: dict[int, int] = {}  # fd -> epoll event mask
        self._readers: dict[int, Callable[[], None]] = {}
        self._writers: dict[int, Callable[[], None]] = {}
        self._calls: deque[Callable[[], None]] = deque()
        self._stop = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._main_thread = threading.get_ident()
        self.timeout_source: Callable[[], float | None] = lambda: None
        self.on_iteration: Callable[[], None] = lambda: None

    # ---- registration
    def _update(self, fd: int) -> None:
        events = (select.EPOLLIN if fd in self._readers else 0) | (select.EPOLLOUT if fd in self._writers else 0)
        old = self._registered.get(fd)
        if old is None:
            if events:
                self._epoll.register(fd, events)  # PermissionError for regular files: callers handle it
                self._registered[fd] = events
        elif events:
            if old != events:
                self._epoll.modify(fd, events)
                self._registered[fd] = events
        else:
            del self._registered[fd]
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass  # already closed

    def add_reader(self, fd: int, cb: Callable[[], None]) -> None:
        self._readers[fd] = cb
        try:
            self._update(fd)
        except PermissionError:
            del self._readers[fd]
            raise

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, cb: Callable[[], None]) -> None:
        self._writers[fd] = cb
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def call_soon_threadsafe(self, cb: Callable[[], None]) -> None:
        """Runs ``cb`` on the loop thread at its next iteration (wakes it up)."""
        self._calls.append(cb)
        self.wakeup()

    def wakeup(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop is waking up anyway

    def install_signal_wakeup(self, handler: Callable[[int], None]) -> None:
        """SIGTERM/SIGINT/SIGHUP call ``handler(signum)`` and wake the loop (main thread only)."""
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: handler(signum))

    def stop(self) -> None:
        self._stop = True
        self.wakeup()

    def close(self) -> None:
        """Releases the loop's own descriptors (epoll, wake-up pipe); the loop is unusable after."""
        self._epoll.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    # ---- running
    def run(self) -> None:
        while not self._stop:
            self.run_once(self.timeout_source())

    def run_once(self, timeout: float | None) -> None:
        if self._calls:
            timeout = 0
        try:
            ready = self._epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:
            ready = []
        for fd, events in ready:
            if fd == self._wake_r:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                continue
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                cb = self._readers.get(fd)
                if cb is not None:
                    cb()
            if events & (select.EPOLLOUT | select.EPOLLERR):
                cb = self._writers.get(fd)
                if cb is not None:
                    cb()
        while self._calls:
            self._calls.popleft()()
        self.on_iteration()

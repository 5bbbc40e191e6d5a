"""The DNS UDP listener: one non-blocking socket, read and answered in batches.

This module owns the UDP socket's reading and writing. The loop wakes us when the socket is
readable, and one wakeup then answers every datagram queued (up to a bound, so that TCP, HTTP
and timers still get their turn under a flood) instead of one datagram per callback, as a
datagram protocol would. On Linux, `recvmmsg`/`sendmmsg` (through ctypes) read and write up to
`BATCH` datagrams per system call, into and out of buffers allocated once; elsewhere, or if the C
library lacks them, `recvfrom`/`sendto` per datagram. Both paths answer the same (tests run
both). What a datagram is answered is `handler`'s.

A UDP answer that the kernel cannot take (its send buffer full, or the client's port closed, an
ICMP error) is dropped, as the network could drop it: the client retries.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import mmap
import socket
import sys
from collections.abc import Callable
from typing import Any

from service_discovery.dns.exact import ExactAnswers

log = logging.getLogger(__name__)

Respond = Callable[[bytes, bool, str | None], bytes | None]

BATCH = 32  # datagrams per recvmmsg/sendmmsg call
_ROUNDS = 8  # calls per wakeup at most: 256 datagrams, then the loop runs others
_SLOT = 65536  # bytes per datagram buffer: any UDP datagram fits, none is cut short
_NAME = 28  # bytes per client address: a sockaddr_in6 (sockaddr_in is 16)
_CLIENTS = 4096  # client addresses kept as text; all forgotten when there are more
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _mmsg_calls() -> tuple[Callable[..., int], Callable[..., int]] | None:
    """libc's recvmmsg and sendmmsg, or None where there are none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # PyDLL: the calls keep the GIL. They never block (the socket is non-blocking), and
        # taking the GIL back from another thread (gRPC's) could wait.
        libc = ctypes.PyDLL(None, use_errno=True)
        recv, send = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    recv.restype = send.restype = ctypes.c_int
    return recv, send


# None: the portable path. Tests set it to None to run that path on Linux too.
MMSG = _mmsg_calls()


def bind(host: str, port: int) -> socket.socket:
    """A non-blocking UDP socket bound to (host, port); host is a literal address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class UdpListener:
    """Answers the datagrams of `sock` with `respond` (whose `client` is the sender's address,
    or None when `with_client` is false: nothing the handler does then needs it). `exact`:
    the handler's answers to datagrams seen before (`QueryHandler.exact`), looked up here
    first on the batched path, which saves a call and the client's address per answer."""

    def __init__(
        self,
        sock: socket.socket,
        respond: Respond,
        with_client: bool = True,
        exact: ExactAnswers | None = None,
    ) -> None:
        self._sock = sock
        self._exact = exact
        self._fd = sock.fileno()
        self._respond = respond
        self._with_client = with_client
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0  # answers the kernel did not take
        self._v4 = sock.family == socket.AF_INET
        calls = MMSG
        self._batched = calls is not None
        if calls is not None:
            self._recvmmsg, self._sendmmsg = calls
            self._buffers()

    def _buffers(self) -> None:
        """The receive and send vectors: BATCH slots each, a datagram buffer per slot (anonymous
        mmap: pages are only resident once written), the client addresses shared, so that an
        answer is sent to the address its query came from without copying it."""
        n = BATCH
        self._rmem = mmap.mmap(-1, n * _SLOT)
        self._smem = mmap.mmap(-1, n * _SLOT)
        rbase = ctypes.addressof(ctypes.c_char.from_buffer(self._rmem))
        sbase = ctypes.addressof(ctypes.c_char.from_buffer(self._smem))
        # Any: slicing a c_char array gives bytes (typeshed says a list)
        self._names: Any = (ctypes.c_char * (n * _NAME))()
        self._riov = (_Iovec * n)()
        self._siov_array = (_Iovec * n)()
        self._rmsgs = (_Mmsghdr * n)()
        self._smsgs = (_Mmsghdr * n)()
        names = ctypes.addressof(self._names)
        namelen = 16 if self._v4 else _NAME  # the size of a sockaddr_in or a sockaddr_in6
        for i in range(n):
            self._riov[i].iov_base = rbase + i * _SLOT
            self._riov[i].iov_len = _SLOT
            self._siov_array[i].iov_base = sbase + i * _SLOT
            for msgs, iov in ((self._rmsgs, self._riov), (self._smsgs, self._siov_array)):
                hdr = msgs[i].msg_hdr
                hdr.msg_name = names + i * _NAME
                hdr.msg_namelen = namelen
                hdr.msg_iov = ctypes.addressof(iov[i])
                hdr.msg_iovlen = 1
        self._rmsgs_at = ctypes.addressof(self._rmsgs)
        self._smsgs_at = ctypes.addressof(self._smsgs)
        # Per-slot fields read and written as machine words through memoryviews (ctypes field
        # access costs several times as much), at offsets computed here once.
        size = ctypes.sizeof(_Mmsghdr)
        word = ctypes.sizeof(ctypes.c_void_p)  # "P": pointers, and size_t, are this wide
        self._lens = memoryview(self._rmsgs).cast("B").cast("I")
        self._swords = memoryview(self._smsgs).cast("B").cast("P")
        self._siov = memoryview(self._siov_array).cast("B").cast("P")
        # the address within a sockaddr_in (port: 2..4, address: 4..8) or a sockaddr_in6 (8..24)
        addr_at = 4 if self._v4 else 8
        len_at = _Mmsghdr.msg_len.offset
        self._slots = [
            (
                i * _SLOT,  # the datagram's buffer in _rmem
                (i * size + len_at) // 4,  # its msg_len in _lens
                # its sender's address: for IPv4 the index of its word in _words, for IPv6
                # its offset in _names
                (i * _NAME + addr_at) // (4 if self._v4 else 1),
                names + i * _NAME,  # a pointer to its sender
            )
            for i in range(n)
        ]
        name_at = _Msghdr.msg_name.offset
        self._sends = [
            (
                i * _SLOT,  # the answer's buffer in _smem
                (ctypes.sizeof(_Iovec) * i + _Iovec.iov_len.offset) // word,  # its length
                (i * size + name_at) // word,  # its msg_name, in _swords
            )
            for i in range(n)
        ]
        # Client addresses as text, by their bytes; an IPv4 address by its 4 bytes as one int
        # (read through _words: cheaper than slicing them out).
        self._clients: dict[int | bytes, str] = {}
        self._words = memoryview(self._names).cast("B").cast("I")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._fd, self._ready_batched if self._batched else self._ready)

    def close(self) -> None:
        """Stop reading and close the socket. Idempotent."""
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        self._sock.close()

    # ---- the portable path: a system call per datagram ------------------------------------
    def _ready(self) -> None:
        recvfrom = self._sock.recvfrom
        sendto = self._sock.sendto
        respond = self._respond
        with_client = self._with_client
        for _ in range(BATCH * _ROUNDS):
            try:
                data, addr = recvfrom(_SLOT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier answer: nothing to do
                log.debug("DNS UDP error: %s", exc)
                continue
            response = respond(data, False, addr[0] if with_client else None)
            if response is not None:
                try:
                    sendto(response, addr)
                except OSError:
                    self.dropped += 1

    # ---- Linux: recvmmsg/sendmmsg, BATCH datagrams per system call ------------------------
    def _ready_batched(self) -> None:
        # Everything per datagram is an index or an offset computed once (`_slots`), and the
        # buffers are sliced directly: this loop costs about what answering does.
        respond = self._respond
        rmem, smem, lens, siov, swords = (
            self._rmem,
            self._smem,
            self._lens,
            self._siov,
            self._swords,
        )
        slots, sends, names = self._slots, self._sends, self._names
        clients = self._clients if self._with_client else None
        words, v4 = self._words, self._v4
        exact = self._exact
        for _ in range(_ROUNDS):
            got = self._recvmmsg(self._fd, self._rmsgs_at, BATCH, 0, None)
            if got <= 0:
                if got < 0 and ctypes.get_errno() not in _AGAIN:
                    log.debug("DNS UDP error: %s", errno.errorcode.get(ctypes.get_errno()))
                    continue
                return
            out = 0
            moved = False
            for i in range(got):
                at, len_at, addr_at, name_ptr = slots[i]
                data = rmem[at : at + lens[len_at]]
                hit = exact.get(data[2:]) if exact is not None else None
                if hit is not None:  # as QueryHandler.respond would answer it
                    hit[0][0] += 1
                    response = data[:2] + next(hit[1])
                else:
                    client = None
                    if clients is not None:
                        key = words[addr_at] if v4 else names[addr_at : addr_at + 16]
                        client = clients.get(key) or self._client(key, addr_at)
                    answer = respond(data, False, client)
                    if answer is None:
                        continue
                    response = answer
                start, iov_len_at, name_word = sends[out]
                size = len(response)
                smem[start : start + size] = response
                siov[iov_len_at] = size
                if out != i:  # an earlier datagram got no answer: point at this one's sender
                    swords[name_word] = name_ptr
                    moved = True
                out += 1
            if out:
                self._send(out, moved)
            if got < BATCH:
                return  # the queue is empty: no need for a call that finds nothing

    def _send(self, count: int, moved: bool) -> None:
        """Send the first `count` answers of the send vector; `moved`: some point at another
        slot's sender (see `_ready_batched`), so point each at its own again."""
        sent = 0
        size = ctypes.sizeof(_Mmsghdr)
        while sent < count:
            done = self._sendmmsg(self._fd, self._smsgs_at + sent * size, count - sent, 0)
            if done > 0:
                sent += done
                continue
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
                self.dropped += count - sent  # the send buffer is full: drop the rest
                break
            self.dropped += 1  # this one's address refused it (ICMP): skip it
            sent += 1
        if moved:
            for j in range(count):
                self._swords[self._sends[j][2]] = self._slots[j][3]

    def _client(self, key: int | bytes, addr_at: int) -> str:
        """The text of a client address (`addr_at`: see `_slots`), kept under `key` for the
        next datagram from it: formatting an address costs more than looking it up."""
        clients = self._clients
        if len(clients) >= _CLIENTS:
            clients.clear()
        if self._v4:
            raw = self._names[addr_at * 4 : addr_at * 4 + 4]
        else:
            raw = self._names[addr_at : addr_at + 16]
        text = clients[key] = socket.inet_ntop(self._sock.family, raw)
        return text

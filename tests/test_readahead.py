"""What libzmq reads ahead from a connection that has not proven the secret (scoop.readahead):
the bookkeeping without sockets, and the kernel's figure on one real loopback connection (no
process, no ZeroMQ).  The broker's side, with real peers, is in tests/test_peer_bounds.py and
tests/test_meta_views.py."""
from __future__ import annotations

import socket
import struct
import sys

import pytest

from scoop import readahead as R


def _watch(limit=1000, per_check=2):
    taken: dict[int, int | None] = {}
    u = R.Unproven(limit=limit, per_check=per_check, measure=lambda fd: taken.get(fd))
    return u, taken


def test_a_connection_over_the_limit_is_returned_once_and_forgotten():
    u, taken = _watch()
    u.opened(5)
    taken[5] = 1000
    assert u.over() == [] and len(u) == 1  # at the limit: kept
    taken[5] = 1001
    assert u.over() == [(5, 1001)]
    assert len(u) == 0 and u.cut == 1
    assert u.over() == []


def test_proven_and_closed_connections_are_no_longer_measured():
    u, taken = _watch()
    for fd in (3, 4):
        u.opened(fd)
        taken[fd] = 10 ** 9
    u.proven(3)
    u.closed(4)
    u.proven(99)  # never seen (a connection accepted before the watch began): nothing to do
    assert u.over() == [] and len(u) == 0 and u.cut == 0


def test_a_connection_the_kernel_says_nothing_about_is_forgotten():
    u, taken = _watch()
    u.opened(7)  # closed, reused by a file, or not TCP: measure says None
    assert u.over() == [] and len(u) == 0


def test_each_check_measures_a_slice_in_turn():
    u, taken = _watch(per_check=3)
    measured = []
    u.measure = lambda fd: measured.append(fd) or 0
    for fd in range(10):
        u.opened(fd)
    for _ in range(4):
        u.over()
    assert measured == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_stale_turns_do_not_pile_up():
    """Thousands of connections that come and go (a flood of handshakes) leave no work behind."""
    u, taken = _watch(per_check=4)
    u.measure = lambda fd: 0
    for fd in range(10_000):
        u.opened(fd)
        u.closed(fd)
    u.opened(1)
    for _ in range(400):
        u.over()
    assert len(u._turn) <= 2 * len(u.fds) + u.per_check
    assert list(u.fds) == [1]


def test_a_reopened_descriptor_is_measured_once_per_turn():
    u, taken = _watch(per_check=10)
    measured = []
    u.measure = lambda fd: measured.append(fd) or 0
    u.opened(3)
    u.opened(3)  # accepted again before its drop was read
    u.over()
    assert measured == [3]


def test_bytes_received_is_read_at_its_offset_and_a_short_struct_says_nothing():
    info = bytearray(256)
    struct.pack_into("=Q", info, 128, 123456789)
    assert R.bytes_received(bytes(info), 256) == 123456789
    assert R.bytes_received(bytes(info), 136) == 123456789
    assert R.bytes_received(bytes(info), 135) is None  # a kernel before 4.1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_INFO's byte counts are Linux's")
def test_taken_is_what_the_process_read_from_a_connection():
    """Received minus what still waits in the kernel: exactly the bytes read so far."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        assert R.taken(server.fileno()) == 0
        client.sendall(b"x" * 100_000)
        got = 0
        while got < 30_000:
            got += len(server.recv(30_000 - got))
        assert R.taken(server.fileno()) == 30_000
        while got < 100_000:
            got += len(server.recv(100_000 - got))
        assert R.taken(server.fileno()) == 100_000
        assert R.taken(listener.fileno()) is None  # a listening socket: no connection
        with open(__file__) as f:
            assert R.taken(f.fileno()) is None  # no socket
        assert R.taken(10 ** 6) is None       # no descriptor
    finally:
        for s in (client, server, listener):
            s.close()

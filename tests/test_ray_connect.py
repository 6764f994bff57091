"""Connecting the "ray" backend to a cluster: an address that does not answer is one line, within a deadline.

The quick tests check the address against small servers run on threads here (a closed port, one
that never speaks, one that speaks HTTP/1, one that answers as a gRPC server); the slow ones go
through a loader and the CLI (they import Ray, and before the fix would start connecting).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import flirdata.backends.ray as ray_backend
from flirdata import ClusterConnectionError, FlirDetection
from flirdata.backends._ray_address import check_reachable, connection_failed
from flirdata.loader import make_loader

NO_RAY: Any = SimpleNamespace()  # a `ray` without Ray's own address reading: the address as written


def closed_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(answer: Callable[[socket.socket], None] | None, host: str = "127.0.0.1") -> Iterator[str]:
    """A local TCP server whose connections ``answer`` serves (None: never accepted, never spoken to).

    ``host="0.0.0.0"`` for an address Ray reads: it takes 127.0.0.1 as this node's own IP.
    """
    listener = socket.socket()
    listener.bind((host, 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                answer(connection)  # type: ignore[misc]

    thread = threading.Thread(target=serve, daemon=True) if answer is not None else None
    if thread is not None:
        thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()
        if thread is not None:
            thread.join(timeout=5)


def http1(connection: socket.socket) -> None:
    connection.recv(4096)
    connection.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")


def grpc_like(connection: socket.socket) -> None:
    """Answers as a gRPC server: its SETTINGS, then stream 1's HEADERS starting with ":status: 200"."""
    connection.recv(4096)
    connection.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # SETTINGS
    connection.sendall(b"\x00\x00\x01\x01\x04\x00\x00\x00\x01\x88")  # HEADERS, END_HEADERS, stream 1
    time.sleep(0.2)  # the client reads before the connection closes


def grpc_404(connection: socket.socket) -> None:
    """An HTTP/2 server that is not a Ray head (a proxy): ":status: 404"."""
    connection.recv(4096)
    connection.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x01\x01\x04\x00\x00\x00\x01\x8d")
    time.sleep(0.2)


def test_a_closed_port_is_one_line_naming_the_address_and_what_to_check() -> None:
    address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(ClusterConnectionError, match=rf"address='{address}': cannot reach .* refused; .*`ray status`"):
        check_reachable(NO_RAY, address, 5.0)


def test_a_port_that_never_answers_fails_at_the_deadline() -> None:
    with server(None) as address:  # the kernel accepts the connection; nobody ever speaks
        start = time.monotonic()
        with pytest.raises(ClusterConnectionError, match=r"no answer within 0\.5 s"):
            check_reachable(NO_RAY, address, 0.5)
        assert time.monotonic() - start >= 0.5  # it waited for the deadline, not less


def trickle(connection: socket.socket) -> None:
    """Speaks HTTP/2 a byte at a time: a frame header announcing 4 KiB, then a byte every 0.1 s."""
    connection.recv(4096)
    connection.sendall(b"\x00\x10\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        for _ in range(200):  # 20 s, unless the client hangs up first
            connection.sendall(b"\x00")
            time.sleep(0.1)


def test_a_peer_sending_a_byte_at_a_time_fails_at_the_deadline() -> None:
    with server(trickle) as address:  # every read gets a byte within its timeout: the deadline is the whole probe's
        start = time.monotonic()
        with pytest.raises(ClusterConnectionError, match=r"no answer within 0\.5 s"):
            check_reachable(NO_RAY, address, 0.5)
        assert time.monotonic() - start < 0.5 + 1.0


def test_a_host_of_several_addresses_is_tried_within_one_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as full, contextlib.ExitStack() as queued:
        full.bind(("127.0.0.1", 0))
        full.listen(0)  # its queue filled: a further connection's SYN goes unanswered
        for _ in range(8):
            try:
                queued.enter_context(socket.create_connection(full.getsockname(), timeout=0.2))
            except TimeoutError:
                break
        else:
            pytest.fail("the listening queue never filled")
        entry = (socket.AF_INET, socket.SOCK_STREAM, 6, "", full.getsockname())
        monkeypatch.setattr(socket, "getaddrinfo", lambda *_, **__: [entry] * 6)  # a name with six addresses
        start = time.monotonic()
        with pytest.raises(ClusterConnectionError, match=r"no answer within 0\.5 s"):
            check_reachable(NO_RAY, "head.example:6379", 0.5)
        assert time.monotonic() - start < 0.5 + 1.0  # not 0.5 s per address


@pytest.mark.parametrize("answer", [http1, grpc_404], ids=["http1", "http2-404"])
def test_something_else_on_the_port_is_not_a_ray_head(answer: Callable[[socket.socket], None]) -> None:
    with server(answer) as address, pytest.raises(ClusterConnectionError, match="not a Ray head answers"):
        check_reachable(NO_RAY, address, 5.0)


def test_a_grpc_server_passes_and_tls_checks_the_connection_only(monkeypatch: pytest.MonkeyPatch) -> None:
    with server(grpc_like) as address:
        check_reachable(NO_RAY, address, 5.0)
    with server(http1) as address:
        monkeypatch.setenv("RAY_USE_TLS", "1")
        check_reachable(NO_RAY, address, 5.0)


def test_an_unknown_host_and_ray_address_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "no-such-host.invalid:6379")
    with pytest.raises(ClusterConnectionError, match=r"RAY_ADDRESS='no-such-host\.invalid:6379': .*unknown host"):
        check_reachable(NO_RAY, "no-such-host.invalid:6379", 5.0)


def test_ray_init_s_own_connection_error_is_one_line_with_its_cause() -> None:
    try:
        try:
            raise RuntimeError(
                "Failed to connect to GCS. Last connection error: Traceback\n  File x\nAuthError: no token. Hint"
            )
        except RuntimeError as cause:
            raise ConnectionError("Failed to connect to Ray cluster at 1.2.3.4:6379") from cause
    except ConnectionError as exc:
        error = connection_failed("1.2.3.4:6379", exc)
    assert "\n" not in str(error)
    assert "address='1.2.3.4:6379': Failed to connect to Ray cluster at 1.2.3.4:6379 (AuthError: no token)" in str(
        error
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_loader_on_a_closed_port_fails_at_once_in_one_line(synth_root: Path) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    address = f"127.0.0.1:{closed_port()}"  # before: ray.init retried for ever ("Failed to get cluster ID")
    dataset = FlirDetection(synth_root, "train")
    options = {"address": address}
    with make_loader(dataset, backend="ray", workers=2, batch_size=4, timeout=30, backend_options=options) as loader:
        with pytest.raises(ClusterConnectionError, match=rf"address='{address}': cannot reach .*refused") as caught:
            next(iter(loader))
    assert "\n" not in str(caught.value) and not ray.is_initialized()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_an_address_that_never_answers_fails_at_the_connect_allowance(
    synth_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    monkeypatch.setattr(ray_backend, "CONNECT_S", 1.0)  # timeout=None: the allowance alone
    dataset = FlirDetection(synth_root, "train")
    with server(None, host="0.0.0.0") as address:
        monkeypatch.setenv("RAY_ADDRESS", address)
        with make_loader(dataset, backend="ray", workers=2, batch_size=4) as loader:
            with pytest.raises(ClusterConnectionError, match=rf"RAY_ADDRESS='{address}': .*no answer within 1 s"):
                next(iter(loader))
    assert not ray.is_initialized()


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_export_on_ray_at_a_closed_port_is_one_line_exit_2(synth_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    address = f"127.0.0.1:{closed_port()}"
    command = [sys.executable, "-m", "flirdata", "export", str(synth_root), "--out", str(tmp_path / "out")]
    command += ["--backend", "ray", "--workers", "2", "--no-progress"]
    env = {**os.environ, "RAY_ADDRESS": address}
    done = subprocess.run(command, capture_output=True, text=True, timeout=140, env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flirdata export: error: flirdata 'ray' backend: "), lines
    assert f"RAY_ADDRESS='{address}'" in lines[0] and "`ray status`" in lines[0]

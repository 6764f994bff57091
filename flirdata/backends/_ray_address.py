"""Whether the Ray cluster at an address answers, checked within a deadline before ``ray.init``.

``ray.init`` has no deadline of its own for a cluster: a refused port, or one where something
other than Ray listens, is retried for ever ("Failed to get cluster ID from GCS server" every
30 s); an unroutable address fails after ~20 s with a long ``ConnectionError`` traceback. So
first, within ``deadline`` seconds: a TCP connection to the address's host and port, and the
first call ``ray.init`` makes there (GetClusterId, in raw HTTP/2: no gRPC package is needed)
answered as a gRPC server answers. Either failing is ``ClusterConnectionError``, one line naming
the address and what to check.

Only a check: the connection itself is still ``ray.init``'s. Over TLS (``RAY_USE_TLS``) only the
TCP connection is checked.
"""

from __future__ import annotations

import os
import socket
import time
from types import ModuleType

from flirdata.errors import ClusterConnectionError

__all__ = ["CONNECT_S", "check_reachable", "connection_failed", "gcs_target"]

# A cluster's connection check has the larger of the loader's timeout and this: a TCP
# connection sends its SYN at 0, 1, 3, 7 s, so a reachable head answers well within it.
CONNECT_S = 15.0
# A gRPC call of the GCS's GetClusterId (what ray.init asks first) in raw HTTP/2: the client
# preface, an empty SETTINGS frame, then on stream 1 a HEADERS frame (HPACK: indexed :method POST,
# :scheme http; literal :path, :authority, content-type, te) and a DATA frame of an empty message.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_PATH = b"/ray.rpc.NodeInfoGcsService/GetClusterId"
_HEADERS, _SETTINGS, _GOAWAY = 0x01, 0x04, 0x07  # HTTP/2 frame types
_STATUS_200 = 0x88  # HPACK: static-table entry 8, ":status: 200", as gRPC servers send it
_CHECK = (
    "check that Ray runs there (`ray status` on the head node), the port (the head's GCS port, 6379 by "
    "default; 10001 for ray://) and any firewall between"
)


def gcs_target(ray: ModuleType, address: str) -> tuple[str, int] | None:
    """The host and port ``ray.init(address=...)`` connects to; None where that cannot be told.

    Raises:
        ClusterConnectionError: "auto" and Ray finds no cluster on this machine.
    """
    if address.startswith("ray://"):
        hostport: str | None = address[len("ray://") :].split("/", 1)[0]
    else:
        try:  # Ray's own reading of the address ("auto", localhost as this node's IP)
            hostport = ray._private.services.canonicalize_bootstrap_address(address)
        except ConnectionError as exc:  # "auto" with no cluster here
            raise ClusterConnectionError(f"{_named(address)}: {exc}") from exc
        except Exception:  # another Ray version: the address as written
            hostport = None if address == "auto" else address
    host, sep, port = (hostport or "").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None  # ray.init judges it
    return host.strip("[]"), int(port)


def check_reachable(ray: ModuleType, address: str, deadline: float) -> None:
    """Return once the cluster at ``address`` answers, else ``ClusterConnectionError`` within ``deadline`` s."""
    target = gcs_target(ray, address)
    if target is None:
        return
    host, port = target
    where = address if address == f"{host}:{port}" else f"{address} ({host}:{port})"
    problem = _probe(host, port, deadline, greet=not os.environ.get("RAY_USE_TLS"))
    if problem is not None:
        raise ClusterConnectionError(f"{_named(address)}: cannot reach the Ray cluster at {where}: {problem}; {_CHECK}")


def connection_failed(address: str, exc: BaseException) -> ClusterConnectionError:
    """The one-line error for ``ray.init``'s own ``ConnectionError``: its first line, why, what to check.

    Why is the first sentence of the last line of its cause, which ends with the traceback of
    the last attempt (e.g. "ray.exceptions.AuthenticationError: ... token is missing or incorrect").
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    causes = [line.strip() for line in str(exc.__cause__ or "").splitlines() if line.strip()]
    if causes:
        text += f" ({causes[-1].split('. ')[0].rstrip('.')})"
    return ClusterConnectionError(f"{_named(address)}: {text}; {_CHECK}")


def _named(address: str) -> str:
    """Where the address came from: the option, or the environment."""
    source = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") == address else "address"
    return f"flirdata 'ray' backend: {source}={address!r}"


def _probe(host: str, port: int, deadline: float, greet: bool) -> str | None:
    """What is wrong with ``host:port`` as a Ray head (None: nothing), within ``deadline`` s."""
    end = time.monotonic() + deadline
    try:
        with _connect(host, port, end) as sock:
            if not greet:
                return None
            _until(sock, end)
            sock.sendall(_PREFACE + _request(f"{host}:{port}".encode()))
            answered = _answers_200(sock, end)
    except socket.gaierror as exc:
        return f"unknown host ({exc.strerror})"
    except TimeoutError:
        return f"no answer within {deadline:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None if answered else "something that is not a Ray head answers on that port"


def _connect(host: str, port: int, end: float) -> socket.socket:
    """A TCP connection to ``host:port`` by ``end``: each of its addresses tried in the time left, not a
    full allowance each (``socket.create_connection``'s timeout is per address)."""
    error: OSError = TimeoutError()
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        sock = None
        try:
            sock = socket.socket(family, kind, proto)  # may fail too: an IPv6 address where IPv6 is off
            _until(sock, end)
            sock.connect(address)
            return sock
        except OSError as exc:
            if sock is not None:
                sock.close()
            error = exc
            if isinstance(exc, TimeoutError):
                break  # the deadline has passed
    raise error


def _until(sock: socket.socket, end: float) -> None:
    """The socket's next call waits until ``end`` at most; TimeoutError once it has passed."""
    left = end - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock.settimeout(left)


def _literal(index: int, value: bytes) -> bytes:
    """HPACK: a header field without indexing, named by static-table ``index`` (< 15)."""
    size, length = len(value), b""
    if size >= 127:  # the integer's 7-bit prefix is full: the rest follows, 7 bits a byte
        size, length = 127, _varint(size - 127)
    return bytes([index, size]) + length + value


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 128:
        out.append(n % 128 + 128)
        n //= 128
    return bytes([*out, n])


def _frame(kind: int, flags: int, payload: bytes) -> bytes:
    """An HTTP/2 frame on stream 1 (SETTINGS: stream 0)."""
    stream = 0 if kind == _SETTINGS else 1
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _request(authority: bytes) -> bytes:
    block = b"\x83\x86" + _literal(4, _PATH) + _literal(1, authority)
    block += b"\x0f\x10" + bytes([16]) + b"application/grpc"  # content-type: static entry 31
    block += b"\x00\x02te\x08trailers"
    return _frame(_HEADERS, 0x04, block) + _frame(0x00, 0x01, b"\x00\x00\x00\x00\x00")  # END_HEADERS; END_STREAM


def _answers_200(sock: socket.socket, end: float) -> bool:
    """Whether the peer answers stream 1 with ":status: 200" (a gRPC server), reading frames until ``end``."""
    while time.monotonic() < end:
        header = _read(sock, 9, end)
        if len(header) < 9:
            return False  # closed: not HTTP/2
        size, kind, flags = int.from_bytes(header[:3], "big"), header[3], header[4]
        if size > 1 << 20:
            return False  # not HTTP/2 (an HTTP/1 reply read as a frame header)
        payload = _read(sock, size, end)
        if kind == _SETTINGS and not flags & 0x01:
            sock.sendall(_frame(_SETTINGS, 0x01, b""))  # acknowledge the server's settings
        elif kind == _GOAWAY:
            return False
        elif kind == _HEADERS and int.from_bytes(header[5:9], "big") & 0x7FFFFFFF == 1:
            skip = (1 if flags & 0x08 else 0) + (5 if flags & 0x20 else 0)  # PADDED, PRIORITY
            return payload[skip : skip + 1] == bytes([_STATUS_200])
    raise TimeoutError


def _read(sock: socket.socket, n: int, end: float) -> bytes:
    """Up to ``n`` bytes (fewer if the peer closes), by ``end`` (a peer sending a byte at a time included)."""
    data = b""
    while len(data) < n:
        _until(sock, end)
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data

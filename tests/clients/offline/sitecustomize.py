"""Imported at start-up by the client tier's subprocesses (on their PYTHONPATH): no network.

Any internet connection raises ``OSError``, so a client that tries to download weights, fonts or
settings fails loudly instead of passing on a machine that happens to be online.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

__all__ = ["install"]

_CONNECT = socket.socket.connect
_CONNECT_EX = socket.socket.connect_ex


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        raise OSError(f"the client tier runs offline: connection to {address!r} refused")


def _connect(sock: socket.socket, address: Any) -> None:
    _check(sock, address)
    _CONNECT(sock, address)


def _connect_ex(sock: socket.socket, address: Any) -> int:
    _check(sock, address)
    return _CONNECT_EX(sock, address)


def install(set_attribute: Callable[[Any, str, Any], None] = setattr) -> None:
    """Refuse every internet connection from now on (``set_attribute`` may be a monkeypatch's)."""
    set_attribute(socket.socket, "connect", _connect)
    set_attribute(socket.socket, "connect_ex", _connect_ex)


if __name__ == "sitecustomize":
    install()

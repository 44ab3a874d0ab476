"""What every socket-owning class of the tap shares: close() and use as a context manager."""
from __future__ import annotations


class SocketOwner:
    """Owns `self.socket` (a pyzmq socket); `with` closes it."""

    socket = None

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

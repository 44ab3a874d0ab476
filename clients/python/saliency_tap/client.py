"""Consumers of the daemon: the alert stream (protocol.md §3) and the query socket (§4)."""
from __future__ import annotations

import json
from typing import Dict, Iterator, Optional

import zmq

from ._socket import CurveArg, SocketOwner, curve_keys


class AlertSubscriber(SocketOwner):
    """SUB to the daemon's alert socket, filtered on `prefix` (default every alert).

    Iterate to get parsed alert dicts (with "_topic" added), or call `recv(timeout)`.
    `last_seq` is the highest seq seen; after a gap, ask `QueryClient.alerts(since=last_seq)`.
    `curve`: `CurveKeys(...)` or `(server_cert_path, client_cert_path)` for a CURVE daemon.
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5561", prefix: str = "alert.",
                 context: Optional[zmq.Context] = None, curve: CurveArg = None):
        self._ctx = context or zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        keys = curve_keys(curve)
        if keys is not None:
            keys.apply(self.socket)
        self.socket.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        self.socket.connect(endpoint)
        self.last_seq: Optional[int] = None

    def recv(self, timeout: Optional[float] = None) -> Optional[Dict]:
        """The next alert, or None after `timeout` seconds (None = wait forever)."""
        if timeout is not None and not self.socket.poll(int(timeout * 1000), zmq.POLLIN):
            return None
        frames = self.socket.recv_multipart()
        if len(frames) != 2:
            raise ValueError(f"alert message has {len(frames)} frames, expected 2")
        alert = json.loads(frames[1])
        alert["_topic"] = frames[0].decode("utf-8", "replace")
        seq = alert.get("seq")
        if isinstance(seq, int) and (self.last_seq is None or seq > self.last_seq):
            self.last_seq = seq
        return alert

    def __iter__(self) -> Iterator[Dict]:
        while True:
            yield self.recv()


class QueryError(RuntimeError):
    """The daemon answered {"ok": false, "error": {"code", "message"}}."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class QueryClient(SocketOwner):
    """REQ to the daemon's query socket, with a timeout.

    On a timeout the REQ socket is in a state that cannot send again, so it is closed and recreated
    (the "lazy pirate" pattern) and `TimeoutError` is raised. `curve`: `CurveKeys(...)` or
    `(server_cert_path, client_cert_path)` for a CURVE daemon (a wrong key also ends in a timeout:
    CURVE refuses the handshake silently).
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5562", timeout: float = 5.0,
                 context: Optional[zmq.Context] = None, curve: CurveArg = None):
        self.endpoint = endpoint
        self.timeout = timeout
        self.curve = curve_keys(curve)
        self._ctx = context or zmq.Context.instance()
        self.socket = None
        self._open()

    def _open(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = self._ctx.socket(zmq.REQ)
        self.socket.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(self.socket)
        self.socket.connect(self.endpoint)

    def request(self, op: str, **args) -> Dict:
        req = {"op": op}
        req.update({k: v for k, v in args.items() if v is not None})
        self.socket.send(json.dumps(req).encode())
        if not self.socket.poll(int(self.timeout * 1000), zmq.POLLIN):
            self._open()
            raise TimeoutError(f"no answer to {op!r} from {self.endpoint} within {self.timeout} s")
        resp = json.loads(self.socket.recv())
        if not resp.get("ok", False):
            err = resp.get("error") or {}
            raise QueryError(err.get("code", "unknown"), err.get("message", ""))
        return resp

    def status(self) -> Dict:
        return self.request("status")

    def top(self, model: str, k: int = 20, by: str = "pot", window=None) -> Dict:
        return self.request("top", model=model, k=k, by=by, window=window)

    def filter(self, model: str, filter: Optional[int] = None, layer: Optional[str] = None,
               channel: Optional[int] = None) -> Dict:
        if filter is None and (layer is None or channel is None):
            raise ValueError("give a global filter index, or layer and channel")
        return self.request("filter", model=model, filter=filter, layer=layer, channel=channel)

    def alerts(self, since: Optional[int] = None, active: Optional[bool] = None) -> Dict:
        return self.request("alerts", since=since, active=active)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)   # a pending request is abandoned, never waited for
            self.socket = None

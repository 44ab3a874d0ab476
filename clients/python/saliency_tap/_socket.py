"""What every socket-owning class of the tap shares: close(), use as a context manager, CURVE keys."""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Tuple, Union

import zmq
import zmq.utils.z85

PathLike = Union[str, "os.PathLike[str]"]


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


def _key(k: Union[str, bytes], what: str) -> bytes:
    b = k.encode("ascii") if isinstance(k, str) else bytes(k)
    if len(b) != 40:
        raise ValueError(f"{what} must be a 40-character Z85 CURVE key, got {len(b)} characters")
    try:
        zmq.utils.z85.decode(b)
    except (ValueError, KeyError, IndexError) as e:   # what z85.decode raises for a bad character
        raise ValueError(f"{what} is not valid Z85: {e!r}") from None
    return b


class CurveKeys(NamedTuple):
    """CURVE client keys (Z85, 40 characters each): the daemon's public key and this client's pair.

    Build it from keys (`CurveKeys(server_public, public, secret)`) or from certificate files with
    `CurveKeys.from_files(server_cert, client_cert)`: ZeroMQ certificates as `saliencyctl keygen`,
    `zmq.auth.create_certificates` and czmq write them (read with `zmq.auth.load_certificate`), or
    saliencyd 0.1 key files (`public = …` / `secret = …` lines).
    """

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(cls, server_cert: PathLike, client_cert: PathLike) -> "CurveKeys":
        """`server_cert`: the daemon's public certificate. `client_cert`: this client's secret
        certificate, or its public one NAME when NAME_secret exists beside it (czmq's convention)."""
        server_public, _ = load_key_file(server_cert)
        secret_path = os.fspath(client_cert)
        if not secret_path.endswith("_secret") and os.path.exists(secret_path + "_secret"):
            secret_path += "_secret"
        public, secret = load_key_file(secret_path)
        if secret is None:
            raise ValueError(f"{secret_path} has no secret key (give the secret certificate, NAME_secret)")
        return cls(server_public, public, secret)

    def apply(self, socket: zmq.Socket) -> None:
        """Makes `socket` a CURVE client of the daemon (before connect)."""
        socket.curve_serverkey = _key(self.server_public, "server public key")
        socket.curve_publickey = _key(self.public, "client public key")
        socket.curve_secretkey = _key(self.secret, "client secret key")


CurveArg = Union[None, CurveKeys, Tuple[PathLike, PathLike]]


def curve_keys(curve: CurveArg) -> Optional[CurveKeys]:
    """Normalizes a `curve=` argument: None, CurveKeys, or (server_cert_path, client_cert_path)."""
    if curve is None or isinstance(curve, CurveKeys):
        return curve
    if isinstance(curve, tuple) and len(curve) == 2:
        return CurveKeys.from_files(*curve)
    raise TypeError("curve= takes CurveKeys or (server_cert_path, client_cert_path)")


def load_key_file(path: PathLike) -> Tuple[bytes, Optional[bytes]]:
    """(public, secret or None) from a ZeroMQ certificate (`zmq.auth.load_certificate`) or a
    saliencyd 0.1 key file; a 0.1 file with only a secret key gets its public key derived."""
    import zmq.auth
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:
        public = secret = None
        with open(path, "rb") as f:
            for raw in f.read(65536).splitlines():
                line = raw.strip()
                if line.startswith(b"#") or b"=" not in line:
                    continue
                name, value = (p.strip() for p in line.split(b"=", 1))
                if name == b"public":
                    public = value
                elif name == b"secret":
                    secret = value
        if public is None and secret is not None:
            public = zmq.curve_public(secret)
        if public is None:
            raise ValueError(f"no CURVE public key in {os.fspath(path)}") from None
    return _key(public, f"public key in {os.fspath(path)}"), (None if secret is None else _key(secret, f"secret key in {os.fspath(path)}"))

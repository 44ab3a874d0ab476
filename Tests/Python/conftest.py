"""Shared helpers for the tests that run a real saliencyd process (Tests/Python/test_hardening.py,
Tests/Python/test_soak.py, test_daemon_*.py, test_crash_recovery.py): one `Daemon` class (start/stop, status, queries, RSS, log), the
`saliencyd` fixture that makes them and kills whatever is left at teardown, and raw wire helpers
(docs/protocol.md) to forge frames and schemas.

The daemon binary comes from $SALIENCYD_BIN (default <repo>/.build/debug/saliencyd) and saliencyctl
from $SALIENCYCTL (default: next to the daemon). The honest producer here (`Producer`) speaks the
wire protocol with pyzmq directly: saliency_tap imports torch at package import time, and these
tests must not need torch. It behaves like saliency_tap.Publisher (XPUB, schema before the first
prediction and on every new subscription) but never drops: XPUB_NODROP with a blocking send, so a
test knows exactly which rows the daemon received.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pytest
import zmq

ROOT = Path(__file__).resolve().parents[2]


def daemon_bin() -> Path:
    return Path(os.environ.get("SALIENCYD_BIN", ROOT / ".build/debug/saliencyd"))


def ctl_bin() -> Path:
    return Path(os.environ.get("SALIENCYCTL", daemon_bin().parent / "saliencyctl"))


# ---------------------------------------------------------------------------------------------
# Wire helpers (docs/protocol.md §1-2)

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK64 = (1 << 64) - 1
HEADER = struct.Struct("<4sHHQQQqiiB3xfQ")
assert HEADER.size == 64


def fnv1a64(data: bytes, h: int = FNV_OFFSET) -> int:
    for c in data:
        h ^= c
        h = (h * FNV_PRIME) & MASK64
    return h


def schema_fingerprint(model: str, layers: Sequence[Tuple[str, int]]) -> int:
    """Protocol §1: model, 0x00, then per layer name, 0x00, decimal filters, 0x00 (filters as given,
    even when they overflow an Int: this is what a forger would send)."""
    parts = [model.encode() + b"\0"]
    for name, filters in layers:
        parts.append(name.encode() + b"\0" + str(int(filters)).encode() + b"\0")
    return fnv1a64(b"".join(parts))


def schema_json(model: str, layers: Sequence[Tuple[str, int]], fingerprint: bool = True) -> bytes:
    body = {"model": model, "layers": [{"name": n, "filters": int(f)} for n, f in layers]}
    if fingerprint:
        body["fingerprint"] = format(schema_fingerprint(model, layers), "016x")
    return json.dumps(body, separators=(",", ":")).encode()


def pack_header(fingerprint: int, producer: int, seq: int, *, ts_ns: Optional[int] = None, predicted: int = -1,
                target: int = -1, kind: int = 0, flags: int = 0, version: int = 1, magic: bytes = b"SALP",
                confidence: float = 0.0, sample_id: int = 0) -> bytes:
    return HEADER.pack(magic, version, flags, fingerprint & MASK64, producer & MASK64, seq & MASK64,
                       time.time_ns() if ts_ns is None else ts_ns, predicted, target, kind, confidence, sample_id)


def row_bytes(row) -> bytes:
    return np.ascontiguousarray(row, dtype="<f4").tobytes()


class Feed:
    """A raw producer socket (XPUB connected to the daemon's feed SUB): sends whatever frames it is
    given, valid or not. `nodrop=True` makes sends block instead of dropping at the HWM."""

    def __init__(self, endpoint: str, context: Optional[zmq.Context] = None, nodrop: bool = False,
                 sndhwm: int = 100_000):
        self.ctx = context or zmq.Context.instance()
        self.socket = self.ctx.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self.socket.setsockopt(zmq.LINGER, 2000)
        if nodrop:
            self.socket.setsockopt(zmq.XPUB_NODROP, 1)
        self.socket.connect(endpoint)
        self.subscriptions = 0

    def drain_subscriptions(self) -> int:
        """Reads subscription notices; returns how many new subscriptions arrived."""
        n = 0
        while True:
            try:
                msg = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if msg[:1] == b"\x01":
                n += 1
        self.subscriptions += n
        return n

    def wait_for_subscriber(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.subscriptions and time.monotonic() < deadline:
            if self.socket.poll(100, zmq.POLLIN):
                self.drain_subscriptions()
        return self.subscriptions > 0

    def send(self, frames: Sequence[bytes]) -> None:
        self.socket.send_multipart(list(frames))

    def schema(self, model: str, layers: Sequence[Tuple[str, int]], fingerprint: bool = True) -> None:
        self.send([f"schema.{model}".encode(), schema_json(model, layers, fingerprint)])

    def schema_raw(self, model: str, body: bytes) -> None:
        self.send([f"schema.{model}".encode(), body])

    def pred(self, model: str, fingerprint: int, producer: int, seq: int, payload: bytes, **header) -> None:
        self.send([f"pred.{model}".encode(), pack_header(fingerprint, producer, seq, **header), payload])

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=1000)
            self.socket = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Producer(Feed):
    """An honest producer of one model (the saliency_tap.Publisher behaviour, without torch):
    the schema goes out before the first prediction and again whenever a subscriber (re)joins or
    `schema_interval` seconds have passed; sequence numbers count from `first_seq` by one."""

    def __init__(self, endpoint: str, model: str, layers: Sequence[Tuple[str, int]], producer_id: Optional[int] = None,
                 context: Optional[zmq.Context] = None, schema_interval: float = 10.0, first_seq: int = 0,
                 nodrop: bool = True):
        super().__init__(endpoint, context, nodrop=nodrop)
        self.model = model
        self.layers = [(n, int(f)) for n, f in layers]
        self.K = sum(f for _, f in self.layers)
        self.fingerprint = schema_fingerprint(model, self.layers)
        self.producer_id = producer_id if producer_id is not None else int.from_bytes(os.urandom(8), "little")
        self.sequence = first_seq
        self.schema_interval = schema_interval
        self._schema_due = True
        self._last_schema = 0.0
        self._topic = f"pred.{model}".encode()

    def send_schema(self) -> None:
        self.schema(self.model, self.layers)
        self._last_schema = time.monotonic()
        self._schema_due = False

    def publish(self, row, **header) -> int:
        payload = row if isinstance(row, (bytes, bytearray)) else row_bytes(row)
        if len(payload) != 4 * self.K:
            raise ValueError(f"row has {len(payload) // 4} values, the schema {self.K}")
        if self.drain_subscriptions():
            self._schema_due = True
        if self._schema_due or time.monotonic() - self._last_schema >= self.schema_interval:
            self.send_schema()
        seq = self.sequence
        self.socket.send_multipart([self._topic, pack_header(self.fingerprint, self.producer_id, seq, **header), payload])
        self.sequence += 1
        return seq


# ---------------------------------------------------------------------------------------------
# Small utilities

def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str) and v.startswith("@raw:"):
        return v[5:]                     # a literal TOML token, e.g. "@raw:inf"
    return json.dumps(str(v))


def toml_text(sections: Dict[str, Dict[str, object]]) -> str:
    """TOML text for {section: {key: value}} (strings quoted, "@raw:TOKEN" verbatim)."""
    out = []
    for sec, keys in sections.items():
        out.append(f"[{sec}]")
        out += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
        out.append("")
    return "\n".join(out)

def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(pred: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition"):
    """Polls `pred` until it returns something truthy (returned) or `timeout` s pass (AssertionError).
    A query timeout inside `pred` counts as "not yet"; an AssertionError (e.g. the daemon died) ends it."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except (TimeoutError, zmq.ZMQError, ConnectionError) as e:
            last_exc = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))
        time.sleep(interval)


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(np.ceil(p / 100.0 * len(v))) - 1))]


def run_saliencyd(*args: str, timeout: float = 30.0, binary: Optional[Path] = None, cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Runs the daemon binary to completion (e.g. --check-config); a hang is killed and reported."""
    b = str(binary or daemon_bin())
    try:
        return subprocess.run([b, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess([b, *args], returncode=None,
                                           stdout=(e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""),
                                           stderr=((e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")) + f"\n[still running after {timeout} s; killed]")


class DaemonExited(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# The daemon

class Daemon:
    """One saliencyd process with its own endpoints, state directory, config file and log file.

    transport "ipc": endpoints under a short private directory (ipc paths are limited to ~107
    bytes); "tcp": free loopback ports. `config` is TOML text written to <name>.toml and passed with
    --config; `config_sections` ({section: {key: value}}) is the same as a dict. Endpoints, state
    directory and metrics are passed as flags (which override the file) unless `endpoint_flags=False`,
    in which case they are written into the file with `config_sections`. `flags` are appended verbatim.
    """

    def __init__(self, workdir: Path, name: str = "d", *, config: Optional[str] = None, flags: Sequence[str] = (),
                 transport: str = "ipc", state_dir: Optional[Path] = None, calibration: Optional[int] = None,
                 snapshot_interval: Optional[float] = None, metrics: bool = False, binary: Optional[Path] = None,
                 env: Optional[Dict[str, str]] = None, endpoint_flags: bool = True, log_level: Optional[str] = None,
                 endpoints: Optional[Dict[str, str]] = None, config_sections: Optional[Dict[str, Dict[str, object]]] = None):
        self.workdir = Path(workdir)
        self.name = name
        self.binary = Path(binary or daemon_bin()).resolve()
        self.sockdir = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
        if endpoints is not None:
            self.endpoints = dict(endpoints)
        elif transport == "ipc":
            self.endpoints = {k: f"ipc://{self.sockdir}/{k}" for k in ("feed", "alerts", "query")}
        elif transport == "tcp":
            self.endpoints = {k: f"tcp://127.0.0.1:{free_port()}" for k in ("feed", "alerts", "query")}
        else:
            raise ValueError(transport)
        self.state_dir = Path(state_dir) if state_dir is not None else self.workdir / f"{name}-state"
        self.log_path = self.workdir / f"{name}.log"
        self.config_path = self.workdir / f"{name}.toml"
        self.metrics_port = free_port() if metrics else None
        self.endpoint_flags = endpoint_flags
        if config_sections is not None:
            if config is not None:
                raise ValueError("give config or config_sections, not both")
            config = self.config_with_endpoints(config_sections) if not endpoint_flags else toml_text(config_sections)
        if config is not None:
            self.write_config(config)
        self.has_config = config is not None
        self.flags = list(flags)
        self.calibration = calibration
        self.snapshot_interval = snapshot_interval
        self.log_level = log_level
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.ctx = zmq.Context()
        self._req = None
        self._log_file = None

    # -- process ---------------------------------------------------------------------------------
    def base_sections(self) -> Dict[str, Dict[str, object]]:
        """The endpoints, state directory and metrics as config sections (for endpoint_flags=False)."""
        return {"feed": {"endpoint": self.endpoints["feed"]}, "alerts": {"endpoint": self.endpoints["alerts"]},
                "query": {"endpoint": self.endpoints["query"]}, "state": {"directory": str(self.state_dir)},
                "metrics": {"listen": f"127.0.0.1:{self.metrics_port}" if self.metrics_port else ""}}

    def config_with_endpoints(self, extra: Optional[Dict[str, Dict[str, object]]] = None) -> str:
        secs = self.base_sections()
        for sec, keys in (extra or {}).items():
            secs.setdefault(sec, {}).update(keys)
        return toml_text(secs)

    def write_config(self, text: Union[str, bytes]) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.config_path.write_bytes(data)

    def argv(self) -> List[str]:
        a = [str(self.binary)]
        if self.has_config:
            a += ["--config", str(self.config_path)]
        if self.endpoint_flags:
            a += ["--feed", self.endpoints["feed"], "--alerts", self.endpoints["alerts"], "--query", self.endpoints["query"],
                  "--state-dir", str(self.state_dir),
                  "--metrics", f"127.0.0.1:{self.metrics_port}" if self.metrics_port else ""]
        if self.calibration is not None:
            a += ["--calibration", str(self.calibration)]
        if self.snapshot_interval is not None:
            a += ["--snapshot-interval", str(self.snapshot_interval)]
        if self.log_level is not None:
            a += ["--log-level", self.log_level]
        return a + self.flags

    def start(self, wait: bool = True, timeout: float = 30.0) -> "Daemon":
        if not self.binary.exists():
            pytest.fail(f"saliencyd binary not found at {self.binary}; set SALIENCYD_BIN or run `swift build`")
        # A restart (same endpoints, state directory and log, appended): drop the previous run's
        # log handle and query socket.
        self._close_log()
        self.close_sockets()
        self._log_file = open(self.log_path, "ab")
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        env.pop("NOTIFY_SOCKET", None)
        if self.env:
            env.update(self.env)
        self.proc = subprocess.Popen(self.argv(), stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(self.workdir))
        if wait:
            self.wait_ready(timeout)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def wait_ready(self, timeout: float = 30.0) -> Dict:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DaemonExited(f"saliencyd exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                return self.status(timeout=1.0)
            except TimeoutError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"saliencyd did not answer status within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> Optional[int]:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> Optional[int]:
        """Sends `sig` and waits up to `timeout` s. Returns the exit code (negative: killed by a
        signal), or None if it had to be killed with SIGKILL after the timeout."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self._close_log()
                return None
        self._close_log()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def sighup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def send_signal(self, sig: int) -> None:
        """Sends `sig` without waiting (e.g. SIGTERM, then watch $NOTIFY_SOCKET, then wait_exit)."""
        self.proc.send_signal(sig)

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def cleanup(self) -> None:
        self.kill()
        self._close_log()
        self.close_sockets()
        self.ctx.destroy(linger=0)
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def close_sockets(self) -> None:
        if self._req is not None:
            self._req.close(linger=0)
            self._req = None

    # -- queries ---------------------------------------------------------------------------------
    def _socket(self):
        if self._req is None:
            self._req = self.ctx.socket(zmq.REQ)
            self._req.setsockopt(zmq.LINGER, 0)
            self._req.connect(self.endpoints["query"])
        return self._req

    def query_raw(self, body: bytes, timeout: float = 5.0) -> bytes:
        """One request/response on a persistent REQ socket (recreated after a timeout)."""
        s = self._socket()
        s.send(body)
        if not s.poll(int(timeout * 1000), zmq.POLLIN):
            self.close_sockets()
            raise TimeoutError(f"no answer from {self.endpoints['query']} within {timeout} s")
        return s.recv()

    def query(self, req: Union[Dict, bytes], timeout: float = 5.0) -> Dict:
        """The parsed reply (ok or not: the caller looks at "ok")."""
        body = req if isinstance(req, bytes) else json.dumps(req).encode()
        return json.loads(self.query_raw(body, timeout))

    def query_timed(self, req: Union[Dict, bytes], timeout: float = 5.0) -> Tuple[Dict, float]:
        t0 = time.perf_counter()
        r = self.query(req, timeout)
        return r, time.perf_counter() - t0

    def check_alive(self) -> None:
        if not self.alive():
            raise AssertionError(f"saliencyd exited with {self.returncode()}:\n{self.log_tail()}")

    def status(self, timeout: float = 5.0) -> Dict:
        self.check_alive()
        r = self.query({"op": "status"}, timeout)
        assert r.get("ok"), r
        return r

    def model(self, name: str, timeout: float = 5.0) -> Optional[Dict]:
        for m in self.status(timeout)["models"]:
            if m["model"] == name:
                return m
        return None

    def wait_rows(self, model: str, rows: int, timeout: float = 60.0) -> Dict:
        return wait_for(lambda: (lambda m: m if m and m["rows"] >= rows else None)(self.model(model)),
                        timeout, what=f"{rows} rows of model {model!r}")

    def wait_model(self, model: str, timeout: float = 20.0) -> Dict:
        return wait_for(lambda: self.model(model), timeout, what=f"model {model!r} in status")

    def metrics_text(self, timeout: float = 5.0) -> str:
        import urllib.request
        return urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=timeout).read().decode()

    # -- process facts -----------------------------------------------------------------------
    def rss_bytes(self) -> int:
        """Resident set size from /proc/<pid>/status (VmRSS); 0 if the process is gone."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError):
            pass
        return 0

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_lines(self) -> List[str]:
        return self.log_text().splitlines()

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_lines()[-n:])

    def feed(self, **kw) -> Feed:
        return Feed(self.endpoints["feed"], self.ctx, **kw)

    def producer(self, model: str, layers, **kw) -> Producer:
        return Producer(self.endpoints["feed"], model, layers, context=self.ctx, **kw)


@pytest.fixture
def saliencyd(tmp_path):
    """Factory: `saliencyd(**Daemon kwargs, start=True)` → a started Daemon (name auto-numbered).
    Every daemon made is killed and its sockets closed at teardown."""
    made: List[Daemon] = []

    def make(start: bool = True, name: Optional[str] = None, **kw) -> Daemon:
        d = Daemon(tmp_path, name or f"d{len(made)}", **kw)
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in made:
        d.cleanup()


# ---------------------------------------------------------------------------------------------
# Background measurement

class Sampler(threading.Thread):
    """Samples a daemon's RSS every `interval` s until stopped; keeps the max and the series."""

    def __init__(self, daemon: Daemon, interval: float = 0.1):
        super().__init__(daemon=True)
        self.d = daemon
        self.interval = interval
        self.stop_event = threading.Event()
        self.samples: List[Tuple[float, int]] = []

    def run(self):
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            self.samples.append((time.monotonic() - t0, self.d.rss_bytes()))
            self.stop_event.wait(self.interval)

    @property
    def max(self) -> int:
        return max((r for _, r in self.samples), default=0)

    def stop(self) -> int:
        self.stop_event.set()
        self.join(5)
        return self.max


class StatusPoller(threading.Thread):
    """A well-behaved REQ client: `status` every `interval` s, each with `timeout`; records latencies
    (seconds) and the times of failures (no answer within the timeout)."""

    def __init__(self, endpoint: str, interval: float = 0.05, timeout: float = 1.0, context: Optional[zmq.Context] = None):
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.interval = interval
        self.timeout = timeout
        self.ctx = context or zmq.Context.instance()
        self.stop_event = threading.Event()
        self.latencies: List[float] = []
        self.sent_at: List[float] = []          # time.monotonic() of each answered request's send
        self.failures: List[float] = []
        self.replies = 0
        self.last: Optional[Dict] = None
        self.max_reply_bytes = 0

    def run(self):
        sock = None
        try:
            while not self.stop_event.is_set():
                if sock is None:
                    sock = self.ctx.socket(zmq.REQ)
                    sock.setsockopt(zmq.LINGER, 0)
                    sock.connect(self.endpoint)
                t0 = time.perf_counter()
                m0 = time.monotonic()
                sock.send(b'{"op":"status"}')
                if sock.poll(int(self.timeout * 1000), zmq.POLLIN):
                    raw = sock.recv()
                    dt = time.perf_counter() - t0
                    self.latencies.append(dt)
                    self.sent_at.append(m0)
                    self.replies += 1
                    self.max_reply_bytes = max(self.max_reply_bytes, len(raw))
                    try:
                        self.last = json.loads(raw)
                    except ValueError:
                        pass
                else:
                    self.failures.append(time.monotonic())
                    sock.close(linger=0)
                    sock = None
                self.stop_event.wait(self.interval)
        finally:
            if sock is not None:
                sock.close(linger=0)

    def stop(self):
        self.stop_event.set()
        self.join(self.timeout + 5)

    def p(self, q: float, since: float = float("-inf"), until: float = float("inf")) -> float:
        """Latency percentile of the requests sent in [since, until) (monotonic times); requests
        that timed out in that span count as infinitely slow."""
        lat = [l for t, l in zip(self.sent_at, self.latencies) if since <= t < until]
        lat += [float("inf")] * sum(1 for t in self.failures if since <= t - self.timeout < until)
        return percentile(lat, q)


# ---------------------------------------------------------------------------------------------
# Disk full

@contextlib.contextmanager
def small_tmpfs(path: Path, size_kb: int):
    """Mounts a `size_kb` KiB tmpfs on `path` (created); unmounts in the end. Skips the test if
    mounting is not permitted here."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test (needs root / CAP_SYS_ADMIN): {r.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill_disk(directory: Path, name: str = "filler") -> Path:
    """Writes `directory/name` until the filesystem is full (ENOSPC); returns its path."""
    p = Path(directory) / name
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (65536, 4096, 512, 64, 1):
            buf = b"\xff" * chunk
            while True:
                try:
                    if os.write(fd, buf) < chunk:
                        break
                except OSError as e:
                    if e.errno == errno.ENOSPC:
                        break
                    raise
    finally:
        os.close(fd)
    return p

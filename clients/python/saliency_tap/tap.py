"""`Tap`: model + publisher, with sampling and a background worker that keeps saliency off the request path.

Serving thread                              worker thread (one per Tap)
-------------                               ---------------------------
out = model(x)          (unchanged)
tap.submit(x, y)        per row: sampled?   -> pops up to `max_batch` queued rows of one shape,
  copies the sampled rows into a bounded       runs the hooked forward + one backward
  queue and returns; never blocks, never       (SaliencyComputer), publishes the rows
  computes a gradient

`tap(x)` does both lines for you. `tap.observe(x, y)` is the synchronous 0.1 API: every row,
computed and published on the caller's thread.
"""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .batch import SaliencyBatch
from .publisher import Publisher
from .saliency import SaliencyComputer, _batch_size, _index
from .schema import schema_from_model, schema_quantity

log = logging.getLogger("saliency_tap")


class _Item:
    __slots__ = ("x", "y", "ids", "n", "sig")

    def __init__(self, x, y, ids, n, sig):
        self.x, self.y, self.ids, self.n, self.sig = x, y, ids, n, sig


def _signature(x) -> Any:
    """What must agree for queued rows to be concatenated into one batch."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return ("t", tuple(x.shape[1:]), x.dtype, str(x.device))
    if isinstance(x, np.ndarray):
        return ("a", tuple(x.shape[1:]), x.dtype.str)
    if isinstance(x, dict):
        return ("d",) + tuple((k, _signature(v)) for k, v in x.items())
    if isinstance(x, (tuple, list)):
        return (type(x).__name__,) + tuple(_signature(v) for v in x)
    return ("o", type(x).__name__)


def _cat(parts: List[Any]):
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(parts) if len(parts) > 1 else first
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, dict):
        return type(first)((k, _cat([p[k] for p in parts])) for k in first)
    if isinstance(first, (tuple, list)):
        if first and not isinstance(first[0], (torch.Tensor, np.ndarray, dict, tuple, list)):
            return type(first)(v for p in parts for v in p)      # per-row values (labels, ids)
        return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
    return first


def _take(x, idx: List[int]):
    """Copy rows `idx` of a batch (tensors are copied out of inference mode and off the autograd graph)."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        with torch.inference_mode(False), torch.no_grad():
            if len(idx) == x.shape[0]:
                return x.detach().clone()
            return x.detach()[torch.as_tensor(idx, device=x.device)]     # advanced indexing copies
    if isinstance(x, np.ndarray):
        return x[idx].copy()
    if isinstance(x, dict):
        return type(x)((k, _take(v, idx)) for k, v in x.items())
    if isinstance(x, (tuple, list)):
        if x and not isinstance(x[0], (torch.Tensor, np.ndarray, dict, tuple, list)):
            return type(x)(x[i] for i in idx)   # a plain list of per-row values (labels, ids)
        return type(x)(_take(v, idx) for v in x)
    return x


class Tap:
    """Model + publisher.

    sample_rate: fraction of predictions monitored (each row independently, Bernoulli).
    max_per_second: cap on monitored rows per second (token bucket, burst of one second); rows over
      the cap count as "rate_limited".
    queue_rows: bound of the worker's queue, in rows; rows that do not fit count as
      "dropped_queue_full" and never consume a sequence number.
    max_batch: rows per worker computation (queued rows of the same shape are batched).
    worker_nice: on Linux, the worker thread's nice value (e.g. 10) so that the serving threads win
      the CPU when there are not enough cores for both; None leaves it alone.
    seed: seeds the sampler (reproducible sampling in tests).
    """

    def __init__(self, model, publisher: Publisher, computer: Optional[SaliencyComputer] = None, *,
                 sample_rate: float = 1.0, max_per_second: Optional[float] = None, queue_rows: int = 256,
                 max_batch: int = 32, worker_nice: Optional[int] = None, seed: Optional[int] = None):
        self.model = model
        self.computer = computer or SaliencyComputer(model)
        if self.computer.K != publisher.K:
            raise ValueError(f"model has {self.computer.K} filters, publisher's schema {publisher.K}")
        computed = getattr(self.computer, "quantity", "saliency")
        if computed != schema_quantity(publisher.schema):
            raise ValueError(f"the computer's quantity is {computed!r}, the publisher's schema declares "
                             f"{schema_quantity(publisher.schema)!r}: build the schema with "
                             f"schema_from_model(..., quantity={computed!r}) (or use Tap.connect)")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        if max_per_second is not None and max_per_second <= 0:
            raise ValueError("max_per_second must be positive (or None for no cap)")
        if queue_rows < 1 or max_batch < 1:
            raise ValueError("queue_rows and max_batch must be at least 1")
        self.publisher = publisher
        self.sample_rate = float(sample_rate)
        self.max_per_second = max_per_second
        self.queue_rows = int(queue_rows)
        self.max_batch = int(max_batch)
        self.worker_nice = worker_nice
        self._rng = random.Random(seed)
        self._tokens = float(max_per_second or 0.0)
        self._t_tokens = time.monotonic()
        self._lock = threading.Lock()           # queue, sampler and counters
        self._pub_lock = threading.Lock()       # the publisher's socket (worker and observe())
        self._cv = threading.Condition(self._lock)
        self._queue: Deque[_Item] = deque()
        self._queued = 0                        # rows in the queue
        self._busy = 0                          # rows the worker is computing
        self._worker: Optional[threading.Thread] = None
        self._stop = False
        self.last_error: Optional[str] = None
        self.worker_seconds = 0.0               # wall time the worker spent computing and publishing
        self.worker_cpu_seconds = 0.0           # CPU time of the worker thread in that work

    @classmethod
    def connect(cls, model, name: str, endpoint: str = "tcp://127.0.0.1:5560", *,
                depths: Optional[Sequence[int]] = None, units: Sequence[str] = ("conv",),
                loss_fn=None, logits_fn=None, autocast: Optional[torch.dtype] = None,
                quantity: str = "saliency", sample_rate: float = 1.0, max_per_second: Optional[float] = None, queue_rows: int = 256,
                max_batch: int = 32, worker_nice: Optional[int] = None, seed: Optional[int] = None,
                **publisher_kwargs) -> "Tap":
        """Schema from the model (names independent of torch.compile/DataParallel/DDP), a Publisher
        connected to the daemon's feed, and the computer; see the class for the sampling arguments.
        quantity="taylor" publishes Taylor blame instead of saliency (SaliencyComputer) and says so in
        the schema; give such a stream its own model name (e.g. "my-resnet-taylor") when the same
        network is also published with plain saliency."""
        schema = schema_from_model(model, name, depths=depths, units=units, quantity=quantity)
        computer = SaliencyComputer(model, units=units, loss_fn=loss_fn, logits_fn=logits_fn, autocast=autocast,
                                    quantity=quantity)
        return cls(model, Publisher(endpoint, name, schema, **publisher_kwargs), computer,
                   sample_rate=sample_rate, max_per_second=max_per_second, queue_rows=queue_rows,
                   max_batch=max_batch, worker_nice=worker_nice, seed=seed)

    # -- synchronous (0.1 API) --------------------------------------------------------------------
    def observe(self, x, y=None, sample_ids=None) -> SaliencyBatch:
        """Compute every row's saliency on the caller's thread and publish it (no sampling, no queue)."""
        batch = self.computer.compute(x, y)
        with self._pub_lock:
            self.publisher.publish_batch(batch, sample_ids)
        return batch

    # -- serving path -----------------------------------------------------------------------------
    def __call__(self, x, y=None, sample_ids=None):
        """Serve: `model(x)` under torch.inference_mode, then `submit(x, y, sample_ids)`; returns the output."""
        with torch.inference_mode():
            out = self.model(x)
        self.submit(x, y, sample_ids)
        return out

    def submit(self, x, y=None, sample_ids=None) -> int:
        """Offer a batch the model has served (or is serving). Each row is sampled with probability
        `sample_rate` and under `max_per_second`; sampled rows are copied into the worker's queue if it
        has room. Never blocks and computes no gradient. Returns the number of rows queued."""
        n = _batch_size(x)
        rate = self.sample_rate
        if rate >= 1.0:
            idx = list(range(n))
        elif rate <= 0.0:
            idx = []
        else:
            r = self._rng.random
            idx = [i for i in range(n) if r() < rate]
        counters = self.publisher.counters
        if not idx:
            with self._lock:
                counters["sampled_out"] += n
            return 0
        with self._lock:
            counters["sampled_out"] += n - len(idx)
            if self.max_per_second is not None:
                now = time.monotonic()
                cap = max(1.0, float(self.max_per_second))
                self._tokens = min(cap, self._tokens + (now - self._t_tokens) * self.max_per_second)
                self._t_tokens = now
                allowed = min(len(idx), int(self._tokens))
                self._tokens -= allowed
                if allowed < len(idx):
                    counters["rate_limited"] += len(idx) - allowed
                    idx = idx[:allowed]
            room = self.queue_rows - self._queued
            if len(idx) > room:
                counters["dropped_queue_full"] += len(idx) - max(room, 0)
                idx = idx[:max(room, 0)]
            if not idx:
                return 0
            self._queued += len(idx)     # reserve before copying, outside the lock
        try:
            item = _Item(_take(x, idx), _take(y, idx), _take(sample_ids, idx), len(idx), None)
            item.sig = (_signature(item.x), _signature(item.y), item.ids is not None)
        except BaseException:
            with self._lock:
                self._queued -= len(idx)
            raise
        with self._lock:
            self._queue.append(item)
            self._ensure_worker()
            self._cv.notify()
        return len(idx)

    # -- worker -------------------------------------------------------------------------------------
    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._stop = False
            self._worker = threading.Thread(target=self._run, name="saliency-tap-worker", daemon=True)
            self._worker.start()

    def _next_batch(self) -> Optional[List[_Item]]:
        with self._lock:
            while not self._queue:
                if self._stop:
                    return None
                self._cv.wait(0.5)
            items = [self._queue.popleft()]
            rows = items[0].n
            while self._queue and rows + self._queue[0].n <= self.max_batch and self._queue[0].sig == items[0].sig:
                it = self._queue.popleft()
                items.append(it)
                rows += it.n
            self._queued -= rows
            self._busy = rows
            return items

    def _run(self) -> None:
        if self.worker_nice is not None and hasattr(os, "setpriority"):
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), int(self.worker_nice))
            except OSError as e:  # pragma: no cover - not permitted to lower priority further
                log.warning("saliency_tap: could not set the worker's nice value: %s", e)
        while True:
            items = self._next_batch()
            if items is None:
                return
            rows = sum(it.n for it in items)
            t0 = time.perf_counter()
            c0 = time.thread_time()
            try:
                x = _cat([it.x for it in items])
                y = _cat([it.y for it in items])
                ids = None if items[0].ids is None else _cat([it.ids for it in items])
                batch = self.computer.compute(x, y)
                published = 0
                with self._pub_lock:
                    for i in range(len(batch)):
                        conf = float(batch.confidence[i])
                        try:
                            self.publisher.publish(batch.saliency[i], int(batch.predicted[i]), int(batch.target[i]),
                                                   batch.target_kind, None if conf != conf else conf,
                                                   None if ids is None else int(ids[i]))
                            published += 1
                        except ValueError as e:   # non-finite saliency (e.g. fp16 overflow): not sent
                            self._error(1, e)
            except Exception as e:  # the worker must survive a bad batch; the rows are counted
                self._error(rows, e)
            finally:
                self.worker_seconds += time.perf_counter() - t0
                self.worker_cpu_seconds += time.thread_time() - c0
                with self._lock:
                    self._busy = 0
                    self._cv.notify_all()

    def _error(self, rows: int, e: BaseException) -> None:
        with self._lock:
            self.publisher.counters["error"] += rows
            first = self.last_error is None
            self.last_error = f"{type(e).__name__}: {e}"
        if first:
            log.warning("saliency_tap: worker failed on %d rows: %s (counted as 'error'; further errors are "
                        "only counted)", rows, self.last_error)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every queued row has been computed and published (True) or `timeout` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._queued or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(0.5 if left is None else min(left, 0.5))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Publish what is queued (up to `timeout` s), stop the worker, close the publisher."""
        if self._worker is not None:
            self.flush(timeout)
            with self._lock:
                self._stop = True
                self._cv.notify_all()
            self._worker.join(timeout)
            self._worker = None
        self.computer.close()
        with self._pub_lock:
            self.publisher.close()

    def __enter__(self) -> "Tap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- visibility -----------------------------------------------------------------------------
    def metrics(self) -> Dict:
        """Publisher counters (published / sampled_out / rate_limited / dropped_queue_full / error),
        the queue's depth and the worker's time."""
        with self._lock:
            m = self.publisher.metrics()
            m.update(queued_rows=self._queued, queue_rows=self.queue_rows, sample_rate=self.sample_rate,
                     worker_seconds=round(self.worker_seconds, 6),
                     worker_cpu_seconds=round(self.worker_cpu_seconds, 6), last_error=self.last_error)
        return m

    def prometheus_text(self) -> str:
        with self._lock:
            text = self.publisher.prometheus_text()
            lab = f'model="{self.publisher.model}",producer="{self.publisher.producer_id:016x}"'
            text += ("# HELP saliency_tap_queued_rows Rows waiting for the tap's worker.\n"
                     "# TYPE saliency_tap_queued_rows gauge\n"
                     f"saliency_tap_queued_rows{{{lab}}} {self._queued}\n")
        return text

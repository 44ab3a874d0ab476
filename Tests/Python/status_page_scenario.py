"""The status page's scenario, headless Chromium and a PNG check, shared by test_status_page.py and
the screenshot script (this file run as a program):

    python3 Tests/Python/status_page_scenario.py docs/status-page.png

starts a real saliencyd (the build's, or $SALIENCYD_BIN) with its metrics port on a free loopback
port, feeds a calibration and a shift until an alert fires, and has Debian's chromium screenshot
the overview (1100×740; another page with --path /model/vision).
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import Daemon, wait_for  # noqa: E402

MODEL = "vision"
# fc is wider than both heat-map widths (overview 64, model page 96): it is drawn binned.
LAYERS = [("conv1", 8), ("layer1.0.conv1", 16), ("layer1.0.conv2", 16), ("fc", 200)]
SPIKED = 13                     # layer1.0.conv1[5]
HOSTILE_MODEL = "<script>alert(\"x\")</script>&'q'"       # a valid model name: printable ASCII, no space or dot
HOSTILE_LAYER = "<img src=x onerror=alert(1)> & \"quoted\""
CALIBRATION = 100


def rows(rng, n: int, k: int, spike=None, factor: float = 1000.0) -> np.ndarray:
    r = np.exp(0.5 * rng.standard_normal((n, k))).astype(np.float32)
    if spike is not None:
        r[:, spike] *= factor
    return r


def feed_until_firing(d: Daemon, seed: int = 7) -> Dict:
    """Calibrates MODEL, shifts filter SPIKED until it fires, leaves a hostile model calibrating.
    Returns the firing alert (as `alerts --active` gives it)."""
    rng = np.random.default_rng(seed)
    p = d.producer(MODEL, LAYERS)
    assert p.wait_for_subscriber(), "the daemon did not subscribe to the feed"
    k = sum(f for _, f in LAYERS)
    for r in rows(rng, CALIBRATION + 60, k):
        p.publish(r)
    for r in rows(rng, 30, k, spike=[SPIKED]):
        p.publish(r)
    h = d.producer(HOSTILE_MODEL, [(HOSTILE_LAYER, 4), ("ok", 3)])
    assert h.wait_for_subscriber()
    for r in rows(rng, 20, 7):
        h.publish(r)
    d.wait_rows(MODEL, CALIBRATION + 90)
    d.wait_rows(HOSTILE_MODEL, 20)
    active = wait_for(lambda: (lambda r: r["alerts"] or None)(d.query({"op": "alerts", "active": True})), 15,
                      what="a firing alert")
    p.close()
    h.close()
    return next(a for a in active if a.get("filter") == SPIKED)


def http(url: str, method: str = "GET", timeout: float = 10.0) -> Tuple[int, Dict[str, str], bytes]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    raise RuntimeError("chromium not found: install Debian's chromium (apt-get install chromium); scripts/test.sh does")


def chromium(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess:
    """Runs headless Chromium with a throw-away profile; fails with its stderr on error or timeout."""
    profile = tempfile.mkdtemp(prefix="sd-chromium-")
    try:
        cmd = [chromium_binary(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"chromium did not finish within {timeout} s: {cmd}\n{(e.stderr or b'')[-2000:]!r}")
        if r.returncode != 0:
            raise AssertionError(f"chromium exited {r.returncode}: {cmd}\n{r.stderr.decode(errors='replace')[-2000:]}")
        return r
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dump_dom(url: str) -> str:
    return chromium("--dump-dom", url).stdout.decode("utf-8", "replace")


def screenshot(url: str, out: Path, size: Tuple[int, int] = (1280, 900)) -> Path:
    out = Path(out).resolve()
    out.unlink(missing_ok=True)
    chromium(f"--screenshot={out}", f"--window-size={size[0]},{size[1]}", url)
    assert out.exists() and out.stat().st_size > 0, f"chromium wrote no screenshot to {out}"
    return out


def png_pixels(data: bytes) -> Tuple[int, int, np.ndarray]:
    """Decodes an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) with the standard library:
    (width, height, an h×w×3 uint8 array). Raises ValueError for anything that is not a valid PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG signature")
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]:
            raise ValueError(f"bad CRC in {kind!r} chunk")
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
        pos += 12 + n
    if ihdr is None:
        raise ValueError("no IHDR")
    w, h, depth, ctype, _, _, interlace = ihdr
    if depth != 8 or ctype not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG form depth={depth} colour type={ctype} interlace={interlace}")
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    out, prev = [], np.zeros(stride, dtype=np.int64)
    for y in range(h):
        f = raw[y * (stride + 1)]
        cur = np.frombuffer(raw, dtype=np.uint8, count=stride, offset=y * (stride + 1) + 1).astype(np.int64)
        if f == 1:
            cur = (np.cumsum(cur.reshape(w, bpp), axis=0) & 255).reshape(-1)
        elif f == 2:
            cur = (cur + prev) & 255
        elif f in (3, 4):
            line, p = cur.tolist(), prev.tolist()
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = p[i]
                if f == 3:
                    line[i] = (line[i] + ((a + b) >> 1)) & 255
                else:
                    c = p[i - bpp] if i >= bpp else 0
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            cur = np.array(line, dtype=np.int64)
        elif f != 0:
            raise ValueError(f"bad filter type {f}")
        out.append(cur.reshape(w, bpp)[:, :3].astype(np.uint8))
        prev = cur
    return w, h, np.stack(out)


def main(argv) -> int:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default="docs/status-page.png")
    ap.add_argument("--path", default="/", help="page to screenshot (default: the overview)")
    ap.add_argument("--size", default="1100x740")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sd-shot-"))
    d = Daemon(work, "shot", calibration=CALIBRATION, metrics=True)
    try:
        d.start()
        alert = feed_until_firing(d)
        url = f"http://127.0.0.1:{d.metrics_port}{a.path}"
        w, h = (int(x) for x in a.size.split("x"))
        time.sleep(0.2)
        out = screenshot(url, Path(a.out), (w, h))
        pw, ph, _ = png_pixels(out.read_bytes())
        print(f"{out}: {pw}x{ph}, {out.stat().st_size} bytes; firing: {alert['layer']}[{alert['channel']}] filter {alert['filter']}")
    finally:
        d.stop()
        d.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The status page on the metrics port (docs/status-page.md), against a real saliencyd that has
calibrated a model and fired an alert, over plain HTTP and through a real headless Chromium.

Needs Debian's chromium (scripts/test.sh installs it); without it the browser tests fail, they do
not skip."""
import html
import re
import time
import urllib.parse
from html.parser import HTMLParser

import numpy as np
import pytest

from status_page_scenario import (CALIBRATION, HOSTILE_LAYER, HOSTILE_MODEL, LAYERS, MODEL, SPIKED, dump_dom,
                                  feed_until_firing, http, png_pixels, screenshot)


@pytest.fixture
def fired(saliencyd):
    d = saliencyd(calibration=CALIBRATION, metrics=True)
    alert = feed_until_firing(d)
    yield d, f"http://127.0.0.1:{d.metrics_port}", alert
    if d.alive():
        assert d.stop(timeout=30) == 0, "saliencyd did not exit cleanly on SIGTERM"


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href"]


def links(page: str):
    p = Links()
    p.feed(page)
    return p.hrefs


def tail_cells(page: str):
    """The filter page's tail-model table: {key: text}."""
    return {html.unescape(k): html.unescape(v) for k, v in re.findall(r'<td class="n" data-key="([^"]+)">([^<]*)</td>', page)}


def test_routes_status_codes_and_content_types(fired):
    d, base, _ = fired
    code, h, body = http(base + "/")
    assert code == 200 and h["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in h["content-security-policy"] and "default-src 'none'" in h["content-security-policy"]
    page = body.decode()
    assert page.startswith("<!DOCTYPE html>") and '<meta http-equiv="refresh" content="5">' in page
    # /metrics is unchanged: Prometheus text.
    code, h, body = http(base + "/metrics")
    assert code == 200 and h["content-type"].startswith("text/plain; version=0.0.4") and b"# TYPE" in body
    # HEAD: headers as GET, no body.
    code, h, body = http(base + "/", method="HEAD")
    assert code == 200 and body == b"" and int(h["content-length"]) > 1000
    code, h, _ = http(base + "/", method="POST")
    assert code == 405 and h["allow"] == "GET, HEAD"
    code, h, body = http(base + "/metrics", method="DELETE")
    assert code == 405
    code, h, body = http(base + "/no/such/page")
    assert code == 404 and h["content-type"].startswith("text/html") and b'href="/"' in body and b"/filter/" in body
    code, _, body = http(base + "/model/%zz")
    assert code == 400 and b"percent-encoded" in body
    code, _, body = http(base + "/model/nosuchmodel")
    assert code == 404 and b"no model &#39;nosuchmodel&#39;" in body and b"known:" in body
    k = sum(f for _, f in LAYERS)
    code, _, body = http(f"{base}/filter/{MODEL}/{k}")
    assert code == 404 and b"out of range" in body
    code, _, body = http(f"{base}/filter/{MODEL}/abc")
    assert code == 400
    code, _, body = http(base + "/model/" + "a" * 5000)
    assert code == 414
    code, _, body = http(base + "/model/x%00%3Cblink%3E")         # NUL and markup in a name: 404, escaped
    assert code == 404 and b"<blink>" not in body and b"\x00" not in body and "x\ufffd&lt;blink&gt;".encode() in body
    assert d.alive()


def test_every_link_from_the_overview_resolves(fired):
    d, base, alert = fired
    page = http(base + "/")[2].decode()
    hrefs = sorted(set(links(page)))
    assert f"/model/{MODEL}" in hrefs
    assert f"/filter/{MODEL}/{SPIKED}" in hrefs, "the firing alert links to its filter page"
    assert "/model/" + urllib.parse.quote(HOSTILE_MODEL, safe="") in hrefs
    # Every link but the heat-map cells' filter links, and a sample of those (≈ 140 of them).
    cells = [x for x in hrefs if x.startswith("/filter/") and x != f"/filter/{MODEL}/{SPIKED}"]
    assert len(cells) >= 100, "the overview's heat-map cells link to their filters"
    second = set()
    for href in [x for x in hrefs if x not in cells] + cells[::10]:
        code, h, body = http(base + href)
        assert code == 200, f"{href} → {code}: {body[:300]!r}"
        if href.startswith("/model/"):
            second.update(links(body.decode()))
    # The model pages' links (heat-map cells, top tables) resolve too (a bounded sample).
    filters = sorted(x for x in second if x.startswith("/filter/"))
    assert len(filters) >= 20
    for href in filters[:: max(1, len(filters) // 25)]:
        assert http(base + href)[0] == 200, href


def test_hostile_names_are_escaped(fired):
    d, base, _ = fired
    for path in ("/", "/model/" + urllib.parse.quote(HOSTILE_MODEL, safe="")):
        code, _, body = http(base + path)
        assert code == 200, path
        page = body.decode()
        assert "<script" not in page and "<img" not in page, path
        assert html.escape(HOSTILE_MODEL, quote=True).replace("&#x27;", "&#39;") in page, path
    # A calibrating model: a progress bar, no heat map.
    page = http(base + "/model/" + urllib.parse.quote(HOSTILE_MODEL, safe=""))[2].decode()
    assert 'class="bar"' in page and "calibrating" in page and 'class="heatmap"' not in page
    # The hostile layer appears (escaped) once its model page has a heat map or top table: here only
    # its filter page names it.
    page = http(f"{base}/filter/{urllib.parse.quote(HOSTILE_MODEL, safe='')}/1")[2].decode()
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quoted&quot;" in page and "<img" not in page


def test_filter_page_of_the_firing_filter_matches_the_filter_query(fired):
    d, base, alert = fired
    assert alert["filter"] == SPIKED
    page = http(f"{base}/filter/{MODEL}/{SPIKED}")[2].decode()
    q = d.query({"op": "filter", "model": MODEL, "filter": SPIKED})
    assert q["ok"] and q["firing"]
    cells = tail_cells(page)
    for key, field in (("threshold", "threshold"), ("extreme threshold", "extreme_threshold"),
                       ("GPD shape ξ", "shape"), ("GPD scale σ", "scale"), ("mean", "mean"), ("std", "std")):
        assert float(cells[key]) == pytest.approx(q[field], rel=1e-5, abs=1e-9), key
    for key, field in (("observations n", "n"), ("peaks over threshold", "peaks"), ("extremes", "extremes")):
        assert int(cells[key]) == q[field], key
    assert cells["tail"] == q["tail"]
    assert "FIRING" in page and f"{alert['layer']}[{alert['channel']}]" in page
    assert '<svg class="spark-value"' in page and '<svg class="spark-score"' in page
    # The sparkline has one point per recent row (monitor.recent_rows = 32 by default).
    spark = page[page.index('<svg class="spark-value"'):]
    spark = spark[:spark.index("</svg>")]
    assert spark.count("<circle") == 32


def test_engine_stays_responsive_while_pages_are_served(fired):
    """Pages come from the engine through a bounded mailbox: many page loads at once get 200 or
    503 (never a hang), and queries keep being answered."""
    import concurrent.futures as cf
    d, base, _ = fired
    with cf.ThreadPoolExecutor(32) as ex:
        futs = [ex.submit(http, f"{base}/model/{MODEL}", "GET", 10.0) for _ in range(64)]
        t0 = time.monotonic()
        st = d.status(timeout=5)
        query_latency = time.monotonic() - t0
        codes = [f.result()[0] for f in futs]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 8, codes
    assert st["models"] and query_latency < 2.0


def test_headless_chromium_renders_heat_map_and_alert(fired, tmp_path):
    d, base, alert = fired
    dom = dump_dom(f"{base}/model/{MODEL}")
    svg = dom[dom.index('<svg class="heatmap"'):]
    svg = svg[:svg.index("</svg>")]
    rows = re.findall(r'<g class="hm-row" data-layer="([^"]*)" data-filters="(\d+)" data-cells="(\d+)"', svg)
    assert [(html.unescape(n), int(f)) for n, f, _ in rows] == LAYERS, rows
    assert [int(c) for _, _, c in rows] == [8, 16, 16, 96], "fc (200 filters) is binned to 96 cells"
    assert svg.count("<rect") == 8 + 16 + 16 + 96
    assert "binned to 96 cells" in dom
    # The firing alert is in the alerts table, linked to its filter.
    assert 'class="firing-alert"' in dom and f'href="/filter/{MODEL}/{SPIKED}"' in dom
    # The heat map shows the same scores as the `top` query: its top filter is the darkest cell.
    fills = dict(re.findall(r'<a href="/filter/vision/(\d+)"><rect [^>]*fill="#([0-9a-f]{6})"', svg))
    assert len(fills) == 8 + 16 + 16 + 96

    def luminance(hexrgb):
        r, g, b = (int(hexrgb[i:i + 2], 16) for i in (0, 2, 4))
        return 0.2126 * r + 0.7152 * g + 0.0722 * b
    top = d.query({"op": "top", "model": MODEL, "k": 1, "by": "pot"})["top"][0]
    darkest = min(luminance(c) for c in fills.values())
    assert luminance(fills[str(top["filter"])]) == darkest, (top, fills[str(top["filter"])])
    assert fills[str(top["filter"])] != "f4f4f2"
    # The shifted filter is above its extreme threshold in the latest row: its cell is outlined.
    assert re.search(rf'<a href="/filter/{MODEL}/{SPIKED}"><rect [^>]*class="x"', svg), "the firing filter's cell is not outlined"
    overview = dump_dom(base + "/")
    assert overview.count('<g class="hm-row"') == len(LAYERS)       # the hostile model is calibrating: no map
    assert "<script" not in overview.replace("&lt;script", "")
    png = screenshot(base + "/", tmp_path / "overview.png", (1280, 900))
    w, h, px = png_pixels(png.read_bytes())
    assert (w, h) == (1280, 900)
    colours = np.unique(px.reshape(-1, 3), axis=0)
    assert len(colours) > 20, f"screenshot has {len(colours)} distinct colours: blank?"
    # Not mostly one colour (a blank or error page would be).
    flat = px.reshape(-1, 3)
    _, counts = np.unique(flat, axis=0, return_counts=True)
    assert counts.max() < 0.97 * len(flat)
    assert d.alive()

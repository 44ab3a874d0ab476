"""Taylor blame (SaliencyComputer(quantity="taylor"), docs/tap.md "Taylor blame"):

    b_j(x) = max(0, sum over filter j's weights w of w * dL/dw)

The hook path never forms per-sample weight gradients (it uses sum_w w*g = sum over output positions
of (o - bias) * dL/do); it is checked against the tap's own references ("vmap", "loop"), against an
independent per-sample autograd reference written here, against a closed form for a final nn.Linear,
and against finite differences of the loss when a filter is scaled towards zero. The default quantity
must still give 0.2's numbers (golden values computed by the code before quantity existed), the schema
says "quantity": "taylor" only for Taylor streams, and a real saliencyd accepts such a stream.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zmq
from torch import nn

from conftest import fnv1a64, free_port
from saliency_tap import Publisher, Recorder, SaliencyComputer, Tap, schema_from_model
from saliency_tap.cli import main as cli_main
from saliency_tap.schema import schema_fingerprint, schema_json

torch.set_num_threads(1)


# -- models -----------------------------------------------------------------------------------------
class Variety2d(nn.Module):
    """Biased convs followed by in-place ReLU (the hook keeps `output`; the model goes on with
    output + z, so the in-place op must not reach the kept tensor), strides, padding, dilation,
    groups, depthwise + reflect padding, a strided 1x1, padding="same", BN, an in-place add."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.c4 = nn.Conv2d(8, 8, 3, padding=1, groups=8, padding_mode="reflect")
        self.c5 = nn.Conv2d(8, 10, 1, stride=2)
        self.c6 = nn.Conv2d(10, 10, 2, padding="same")
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        h = F.relu(self.c1(x), inplace=True)
        h = F.relu(self.bn(self.c2(h)), inplace=True)
        h = torch.tanh(self.c3(h))
        h = self.c4(h)
        h.mul_(1.5)
        h = torch.tanh(self.c5(h))
        h = self.c6(h)
        h += 0.25
        return self.fc(torch.tanh(h).mean((2, 3)))


class Net1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 6, 5, stride=2, padding=2)
        self.c2 = nn.Conv1d(6, 6, 3, dilation=2, groups=3)
        self.c3 = nn.Conv1d(6, 8, 3, padding=2, padding_mode="circular", bias=False)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.tanh(self.c3(torch.tanh(self.c2(torch.relu(self.c1(x)))))).mean(2))


class Shared(nn.Module):
    """`block` applied twice and a weight tied to `twin`: the blame of a shared filter is the clip of
    the SUM of every call's contribution. untie=True gives each call its own copy of the weight (a
    test reads each call's contribution from it)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.block = nn.Conv2d(6, 6, 3, padding=1)
        self.twin = nn.Conv2d(6, 6, 3, padding=1)
        self.twin.weight = self.block.weight
        self.fc = nn.Linear(6, 3)
        self.second = None

    def untie(self) -> "Shared":
        m = copy.deepcopy(self)
        m.second = copy.deepcopy(m.block)
        m.twin.weight = nn.Parameter(m.block.weight.detach().clone())
        return m

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        h = torch.tanh(self.block(h))
        h = torch.tanh((self.second or self.block)(h))
        h = torch.tanh(self.twin(h))
        return self.fc(h.mean((2, 3)))


class Seq(nn.Module):
    """nn.Linear on [B, T, F] (a Linear unit summed over sequence positions), a Conv1d, a Linear head."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(5, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):                         # x: [B, T, 5]
        h = torch.tanh(self.proj(x))              # [B, T, 8]
        h = torch.relu(self.conv(h.transpose(1, 2)))
        return self.head(h.mean(2))


def _warm_bn(model, shape, dtype):
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn((16,) + shape, dtype=dtype) * 1.5 + 0.3)
    return model.eval()


def make(name, dtype=torch.float32):
    torch.manual_seed({"variety2d": 1, "net1d": 2, "shared": 3, "seq": 4}[name])
    model, shape, units = {
        "variety2d": (Variety2d(), (3, 12, 12), ("conv",)),
        "net1d": (Net1d(), (2, 30), ("conv", "linear")),
        "shared": (Shared(), (3, 8, 8), ("conv",)),
        "seq": (Seq(), (7, 5), ("conv", "linear")),
    }[name]
    model = _warm_bn(model.to(dtype), shape, dtype)
    x = torch.randn((6,) + shape, dtype=dtype)
    return model, x, units


def reference_taylor(model, x, y, weights) -> torch.Tensor:
    """Independent reference: per sample, autograd of that sample's loss w.r.t. every monitored
    weight, then sum(w * g) per row (unclipped). y=None: the predicted label."""
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i:i + 1])
        t = out.argmax(1).detach() if y is None else y[i:i + 1]
        loss = F.cross_entropy(out, t)
        gs = torch.autograd.grad(loss, weights, allow_unused=True)
        rows.append(torch.cat([torch.zeros(w.shape[0], dtype=w.dtype) if g is None
                               else (w.detach() * g).flatten(1).sum(1) for w, g in zip(weights, gs)]))
    return torch.stack(rows)


def _tol(dtype):
    return (1e-10, 1e-12) if dtype == torch.float64 else (2e-4, 2e-5)


# -- hooks == vmap == loop ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["variety2d", "net1d", "shared", "seq"])
@pytest.mark.parametrize("labels", [True, False])
def test_hooks_match_vmap_and_loop(name, dtype, labels):
    model, x, units = make(name, dtype)
    y = torch.randint(0, 3, (x.shape[0],)) if labels else None
    got = {m: SaliencyComputer(model, method=m, units=units, quantity="taylor").compute(x, y)
           for m in ("hooks", "vmap", "loop")}
    scale = float(got["loop"].saliency.max())
    assert scale > 0
    rtol, atol = _tol(dtype)
    for ref in ("vmap", "loop"):
        np.testing.assert_allclose(got["hooks"].saliency, got[ref].saliency, rtol=rtol, atol=atol * scale)
        assert np.array_equal(got["hooks"].predicted, got[ref].predicted)
        assert np.array_equal(got["hooks"].target, got[ref].target)
    for b in got.values():
        assert b.saliency.dtype == np.float32 and (b.saliency >= 0).all() and np.isfinite(b.saliency).all()
    # The clip is active (some filters help the target) and most of the row is not clipped away.
    frac_zero = float((got["hooks"].saliency == 0).mean())
    assert 0.05 < frac_zero < 0.95, frac_zero


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["variety2d", "net1d", "shared", "seq"])
def test_hooks_match_independent_autograd_reference(name, dtype):
    model, x, units = make(name, dtype)
    y = torch.randint(0, 3, (x.shape[0],))
    comp = SaliencyComputer(model, units=units, quantity="taylor")
    weights = [p for n, p in model.named_parameters() if n in comp.names]
    assert len(weights) == len(comp.names)
    for yy in (y, None):
        want = reference_taylor(model, x, yy, weights).clamp_min(0).double().numpy()
        got = comp.compute(x, yy).saliency
        rtol, atol = _tol(dtype)
        np.testing.assert_allclose(got, want, rtol=max(rtol, 1e-7), atol=atol * float(want.max()))


def test_shared_weight_clips_the_sum_of_all_calls():
    """Each call's contribution, read from an untied copy; the blame is max(0, sum), which differs here
    from the sum of per-call clips (the test would catch a clip per call)."""
    model, x, _ = make("shared", torch.float64)
    y = torch.randint(0, 3, (x.shape[0],))
    untied = model.untie()
    parts = reference_taylor(untied, x, y, [untied.block.weight, untied.second.weight, untied.twin.weight])
    c1, c2, c3 = parts[:, 0:6], parts[:, 6:12], parts[:, 12:18]
    total = (c1 + c2 + c3).clamp_min(0)
    per_call = c1.clamp_min(0) + c2.clamp_min(0) + c3.clamp_min(0)
    assert float((per_call - total).abs().max()) > 1e-3 * float(total.max())
    got = SaliencyComputer(model, quantity="taylor").compute(x, y).saliency      # [stem 6 | block 6]
    np.testing.assert_allclose(got[:, 6:12], total.numpy(), rtol=1e-7, atol=1e-12 * float(total.max()))


# -- closed form and meaning ----------------------------------------------------------------------------
def test_final_linear_closed_form():
    """For the last nn.Linear, o = W h + bias, dL/do = softmax(o) - onehot(target), so
    b_j = max(0, (o_j - bias_j) * (p_j - [j == target]))."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 5)).double().eval()
    x = torch.randn(8, 3, 7, 7, dtype=torch.float64)
    y = torch.randint(0, 5, (8,))
    with torch.no_grad():
        o = model(x)
    p = torch.softmax(o, 1)
    d = p - F.one_hot(y, 5).double()
    want = ((o - model[4].bias.detach()) * d).clamp_min(0).numpy()
    for method in ("hooks", "vmap", "loop"):
        got = SaliencyComputer(model, method=method, units=("conv", "linear"), quantity="taylor").compute(x, y)
        np.testing.assert_allclose(got.saliency[:, 6:], want, rtol=1e-6, atol=1e-9)
    assert (want > 0).any() and (want == 0).any()


def _loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def test_first_order_loss_drop_when_a_filter_is_scaled_towards_zero():
    """phi(t) = L(W with row j scaled by t): phi(1) - phi(1 - h) ~ h * sum_w w*g. The tap's value must
    be max(0, that finite difference / h) for every sample, layer and filter."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 5, 3, stride=2), nn.Tanh(),
                          nn.Flatten(), nn.Linear(5 * 2 * 2, 3)).double().eval()
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    comp = SaliencyComputer(model, units=("conv", "linear"), quantity="taylor")
    got = comp.compute(x, y).saliency.astype(np.float64)
    h = 1e-6
    base = _loss(model, x, y)
    fd = []
    for name in comp.names:
        w = dict(model.named_parameters())[name]
        for j in range(w.shape[0]):
            keep = w.detach()[j].clone()
            with torch.no_grad():
                w[j].mul_(1 - h)
            fd.append(((base - _loss(model, x, y)) / h).numpy())
            with torch.no_grad():
                w[j].copy_(keep)
    fd = np.stack(fd, 1)                                        # [B, K], unclipped
    assert fd.shape == got.shape
    np.testing.assert_allclose(got, np.maximum(fd, 0), rtol=1e-4, atol=1e-6 * float(np.abs(fd).max()))
    assert (fd < 0).any() and (fd > 0).any()


def test_a_zeroed_filter_has_zero_blame():
    """The documented blind spot: w = 0 gives w * g = 0 whatever the gradient (hooks: o - bias = 0)."""
    model, x, _ = make("variety2d")
    with torch.no_grad():
        model.c1.weight[2].zero_()
        model.c5.weight[4].zero_()
    for method in ("hooks", "vmap", "loop"):
        b = SaliencyComputer(model, method=method, quantity="taylor").compute(x).saliency
        assert (b[:, 2] == 0).all() and (b[:, 6 + 8 + 8 + 8 + 4] == 0).all(), method
        assert (b > 0).mean() > 0.1


def test_autocast_model_accumulates_in_float32():
    model, x, units = make("variety2d")
    got = SaliencyComputer(model, autocast=torch.bfloat16, quantity="taylor").compute(x).saliency
    ref = SaliencyComputer(model, method="loop", autocast=torch.bfloat16, quantity="taylor").compute(x).saliency
    full = SaliencyComputer(model, quantity="taylor").compute(x).saliency
    assert got.dtype == np.float32 and (got >= 0).all()
    scale = float(full.max())
    # bf16 forward: both paths agree with each other and with float32 to bf16 precision, not more.
    assert float(np.abs(got - ref).max()) < 0.1 * scale
    assert float(np.abs(got - full).max()) < 0.1 * scale


# -- the default is unchanged ---------------------------------------------------------------------------
def _golden_model():
    torch.manual_seed(1234)
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2), nn.Flatten(),
                      nn.Linear(4 * 2 * 2, 3)).double().eval()
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    return m, x, torch.tensor([0, 2, 1])


# SaliencyComputer(m, units=("conv", "linear")).compute(x, y).saliency on _golden_model(), computed by
# saliency_tap at commit 93ae2c9 (before `quantity` existed).
GOLDEN_SALIENCY = [
    [0.061968181282281876, 0.08847709000110626, 0.030619971454143524, 0.019783174619078636, 0.029609449207782745,
     0.0516853891313076, 0.02898341603577137, 0.10436614602804184, 0.05527722090482712, 0.04908892512321472],
    [0.053188346326351166, 0.07241646945476532, 0.05548417940735817, 0.045295242220163345, 0.02070646546781063,
     0.030475331470370293, 0.07206042855978012, 0.06990128755569458, 0.0639982745051384, 0.13389955461025238],
    [0.06770512461662292, 0.07911087572574615, 0.05462484806776047, 0.019583990797400475, 0.06702204048633575,
     0.05206816643476486, 0.03830338642001152, 0.07691394537687302, 0.13687145709991455, 0.05995751544833183],
]


@pytest.mark.parametrize("method", ["hooks", "vmap", "loop"])
def test_default_quantity_is_unchanged_saliency(method):
    m, x, y = _golden_model()
    omitted = SaliencyComputer(m, method=method, units=("conv", "linear")).compute(x, y)
    explicit = SaliencyComputer(m, method=method, units=("conv", "linear"), quantity="saliency").compute(x, y)
    assert np.array_equal(omitted.saliency, explicit.saliency)
    np.testing.assert_allclose(omitted.saliency, np.array(GOLDEN_SALIENCY, np.float32), rtol=2e-7, atol=0)
    taylor = SaliencyComputer(m, method=method, units=("conv", "linear"), quantity="taylor").compute(x, y)
    assert not np.allclose(taylor.saliency, omitted.saliency)
    assert SaliencyComputer(m, method=method).quantity == "saliency"


# -- argument, schema, Tap, CLI ----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["blame", "Taylor", "", None, 1])
def test_bad_quantity_raises(bad):
    m, _, _ = _golden_model()
    with pytest.raises(ValueError, match="quantity must be 'saliency'.*'taylor'"):
        SaliencyComputer(m, quantity=bad)
    with pytest.raises(ValueError, match="quantity must be"):
        schema_from_model(m, "golden", quantity=bad)


def test_schema_says_taylor_only_when_asked():
    m, _, _ = _golden_model()
    plain = schema_from_model(m, "golden")
    explicit = schema_from_model(m, "golden", quantity="saliency")
    taylor = schema_from_model(m, "golden", quantity="taylor")
    assert "quantity" not in plain and plain == explicit
    # 0.2's bytes: model, layers, fingerprint, nothing else.
    old = {"model": "golden", "layers": [{"name": "0", "filters": 3, "depth": 0}, {"name": "2", "filters": 4, "depth": 1}]}
    old["fingerprint"] = format(schema_fingerprint(old), "016x")
    assert schema_json(plain) == json.dumps(old, separators=(",", ":")).encode()
    assert taylor["quantity"] == "taylor"
    # The fingerprint covers the quantity (protocol.md §1): b"quantity\0taylor\0" after the layers.
    assert taylor["fingerprint"] != plain["fingerprint"]
    assert int(taylor["fingerprint"], 16) == fnv1a64(b"quantity\0taylor\0", int(plain["fingerprint"], 16))
    assert b'"quantity":"taylor"' in schema_json(taylor)
    assert b"quantity" not in schema_json(plain)


def test_publisher_and_tap_check_the_quantity():
    m, x, _ = _golden_model()
    ep = f"tcp://127.0.0.1:{free_port()}"
    pub = Publisher(ep, "golden", schema_from_model(m, "golden"))
    assert pub.quantity == "saliency"
    with pytest.raises(ValueError, match="quantity"):
        Tap(m, pub, SaliencyComputer(m, quantity="taylor"))
    pub.close()
    with pytest.raises(ValueError, match="quantity must be"):
        Publisher(ep, "golden", dict(schema_from_model(m, "golden"), quantity="blame"))
    tap = Tap.connect(m, "golden-taylor", ep, quantity="taylor")
    try:
        assert tap.computer.quantity == "taylor" and tap.publisher.quantity == "taylor"
        assert tap.publisher.schema["quantity"] == "taylor"
    finally:
        tap.close()


def _schema_from_wire(sub, timeout=10.0):
    if not sub.poll(int(timeout * 1000), zmq.POLLIN):
        raise AssertionError("no schema message")
    frames = sub.recv_multipart()
    return frames[0], json.loads(frames[1])


def test_cli_publish_npy_quantity(tmp_path):
    m, x, y = _golden_model()
    rows = SaliencyComputer(m, quantity="taylor").compute(x, y)
    rec = Recorder(str(tmp_path / "feed"), schema_from_model(m, "golden"))   # recorded without the key
    rec.append_batch(rows)
    rec.save()
    ctx = zmq.Context.instance()
    port = free_port()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"schema.")
    # The CLI binds and the subscriber connects (it retries until the bind exists): an XPUB that
    # connects to a bound SUB does not see the subscription with this libzmq (4.3.5), and would
    # publish before the subscriber had joined.
    sub.connect(f"tcp://127.0.0.1:{port}")
    try:
        rc = cli_main(["publish-npy", str(tmp_path / "feed"), "--endpoint", f"tcp://127.0.0.1:{port}", "--bind",
                       "--model", "golden-taylor", "--quantity", "taylor", "--wait", "10"])
        assert rc == 0
        topic, schema = _schema_from_wire(sub)
        assert topic == b"schema.golden-taylor" and schema["quantity"] == "taylor"
    finally:
        sub.close()
    # A recorded Taylor schema contradicted on the command line: refused before anything is sent.
    rec2 = Recorder(str(tmp_path / "t"), schema_from_model(m, "golden", quantity="taylor"))
    rec2.append_batch(rows)
    rec2.save()
    assert json.load(open(tmp_path / "t.schema.json"))["quantity"] == "taylor"
    assert cli_main(["publish-npy", str(tmp_path / "t"), "--endpoint", f"tcp://127.0.0.1:{free_port()}",
                     "--quantity", "saliency", "--wait", "0"]) == 2


# -- a real daemon ----------------------------------------------------------------------------------------
def test_daemon_accepts_a_taylor_stream_beside_plain_saliency(saliencyd):
    """The same network published twice, under two model names: saliency and Taylor blame. Taylor rows
    are mostly exact zeros; the daemon accepts every row, calibrates and monitors both."""
    d = saliencyd(calibration=100)
    model, _, _ = make("variety2d")
    gen = torch.Generator().manual_seed(5)
    taps = {q: Tap.connect(model, "v2d" if q == "saliency" else "v2d-taylor", d.endpoints["feed"], quantity=q)
            for q in ("saliency", "taylor")}
    try:
        for t in taps.values():
            assert t.publisher.wait_for_subscriber(10.0)
        zeros = 0
        for _ in range(8):
            x = torch.randn(16, 3, 12, 12, generator=gen)
            y = torch.randint(0, 5, (16,), generator=gen)
            for q, t in taps.items():
                b = t.observe(x, y)
                if q == "taylor":
                    zeros += int((b.saliency == 0).sum())
        assert zeros > 0
        for name in ("v2d", "v2d-taylor"):
            st = d.wait_rows(name, 128, timeout=60)
            assert st["rows"] == 128 and st["phase"] == "monitoring", st
            assert not st.get("rejected_rows"), st
        assert not d.status()["rejected"]
        for t in taps.values():
            assert t.metrics()["published"] == 128 and t.metrics()["error"] == 0
    finally:
        for t in taps.values():
            t.close()

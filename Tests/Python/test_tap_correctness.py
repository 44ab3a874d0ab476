"""saliency-tap's hook path (the default) against two independent references: torch.func
(functional_call + vmap + grad, method="vmap") and one loss.backward() per sample (method="loop").

Per-sample weight gradients are checked in full for every convolution kind (Conv1d/2d/3d; plain,
strided, dilated, padded including "same" and non-zero padding modes, grouped, depthwise, 1x1
projections) and both kernels ("conv" and "unfold"); then whole models in float32 (rtol 1e-5) and
float64, bf16 and AMP models, custom losses and outputs, nn.Linear units, shared weights, and the
wrappers that must not change layer names (torch.compile, DataParallel).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saliency_tap import SaliencyComputer, schema_from_model
from saliency_tap.grad_sample import conv_grad_sample, linear_grad_sample

torch.set_num_threads(1)

# (constructor, input shape without batch)
CONV_CASES = {
    "2d_plain": (lambda: nn.Conv2d(3, 4, 3), (3, 9, 9)),
    "2d_strided_padded": (lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1), (3, 9, 9)),
    "2d_dilated": (lambda: nn.Conv2d(3, 4, 3, dilation=2, padding=2), (3, 9, 9)),
    "2d_rect_kernel_stride": (lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0)), (3, 9, 8)),
    "2d_same_even_kernel": (lambda: nn.Conv2d(3, 4, 4, padding="same", dilation=2), (3, 9, 9)),
    "2d_valid": (lambda: nn.Conv2d(3, 4, 3, padding="valid"), (3, 7, 7)),
    "2d_reflect": (lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (3, 8, 8)),
    "2d_circular": (lambda: nn.Conv2d(3, 4, 3, padding=2, padding_mode="circular", stride=2), (3, 8, 8)),
    "2d_grouped": (lambda: nn.Conv2d(4, 6, 3, groups=2, padding=1), (4, 8, 8)),
    "2d_depthwise": (lambda: nn.Conv2d(4, 8, 3, groups=4, padding=1, stride=2), (4, 8, 8)),
    "2d_1x1": (lambda: nn.Conv2d(5, 7, 1), (5, 6, 6)),
    "2d_1x1_strided_projection": (lambda: nn.Conv2d(5, 7, 1, stride=2, bias=False), (5, 7, 7)),
    "2d_1x1_padded": (lambda: nn.Conv2d(5, 3, 1, padding=1), (5, 4, 4)),
    "2d_small_output_wide_patch": (lambda: nn.Conv2d(16, 6, 3), (16, 4, 4)),  # "unfold" by default
    "1d_strided_padded": (lambda: nn.Conv1d(3, 4, 5, stride=2, padding=2), (3, 17)),
    "1d_dilated_grouped": (lambda: nn.Conv1d(4, 6, 3, dilation=2, groups=2), (4, 15)),
    "1d_same": (lambda: nn.Conv1d(3, 4, 4, padding="same"), (3, 11)),
    "3d_plain": (lambda: nn.Conv3d(2, 3, 3, padding=1), (2, 5, 6, 6)),
    "3d_strided_anisotropic": (lambda: nn.Conv3d(3, 4, (1, 3, 3), stride=(1, 2, 2), dilation=(1, 1, 1)), (3, 4, 7, 7)),
    "3d_depthwise_dilated": (lambda: nn.Conv3d(3, 3, 3, groups=3, dilation=2, padding=2), (3, 6, 6, 6)),
}


def _reference_grad_sample(conv: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per-sample dL/dW by torch.func, L_b = sum(conv(x_b) * r_b) (so dL/d(output) = r)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in conv.named_parameters()}

    def loss(w, xb, rb):
        return (functional_call(conv, {**params, "weight": w}, (xb.unsqueeze(0),)) * rb.unsqueeze(0)).sum()

    return vmap(grad(loss), in_dims=(None, 0, 0))(params["weight"], x, r)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["conv", "unfold"])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_grad_sample_kernels_match_torch_func(case, method, dtype):
    make, shape = CONV_CASES[case]
    torch.manual_seed(hash(case) % 1000)
    conv = make().to(dtype)
    if method == "unfold" and (conv.groups != 1 or len(shape) != 3):
        pytest.skip("the unfold kernel is for ungrouped Conv2d")
    x = torch.randn((5,) + shape, dtype=dtype)
    with torch.no_grad():
        r = torch.randn_like(conv(x))
    ref = _reference_grad_sample(conv, x, r)
    full = conv_grad_sample(conv, x, r, reduce=False, method=method, chunk_size=2)
    rtol = 1e-5 if dtype == torch.float32 else 1e-10
    scale = float(ref.abs().max())
    torch.testing.assert_close(full, ref, rtol=rtol, atol=rtol * scale)
    l1 = conv_grad_sample(conv, x, r, reduce=True, method=method, chunk_size=3)
    torch.testing.assert_close(l1, ref.abs().flatten(2).sum(2), rtol=rtol, atol=rtol * float(l1.max()))
    assert l1.dtype == dtype


def test_linear_grad_sample_2d_and_sequence_match_torch_func():
    from torch.func import functional_call, grad, vmap
    torch.manual_seed(3)
    lin = nn.Linear(6, 4)
    params = {k: v.detach() for k, v in lin.named_parameters()}
    for shape in [(7, 6), (7, 5, 6)]:
        x = torch.randn(shape)
        r = torch.randn(shape[:-1] + (4,))

        def loss(w, xb, rb):
            return (functional_call(lin, {**params, "weight": w}, (xb.unsqueeze(0),)) * rb.unsqueeze(0)).sum()

        ref = vmap(grad(loss), in_dims=(None, 0, 0))(params["weight"], x, r)
        torch.testing.assert_close(linear_grad_sample(x, r, reduce=False), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(linear_grad_sample(x, r), ref.abs().sum(2), rtol=1e-5, atol=1e-6)


def test_bf16_operands_are_accumulated_in_float32():
    """Low-precision activations and output gradients: the per-sample gradient is summed in float32,
    i.e. it equals the float64 computation on the same (bf16-valued) operands to float32 precision."""
    torch.manual_seed(4)
    conv = nn.Conv2d(8, 4, 3, padding=1)
    x = torch.randn(3, 8, 32, 32).to(torch.bfloat16)
    r = torch.randn(3, 4, 32, 32).to(torch.bfloat16)
    for method in ("conv", "unfold"):
        got = conv_grad_sample(conv.to(torch.bfloat16), x, r, method=method)
        assert got.dtype == torch.float32
        want = conv_grad_sample(conv.double(), x.double(), r.double(), method=method)
        torch.testing.assert_close(got.double(), want, rtol=2e-5, atol=0)
        # bf16 accumulation would be off by far more than that:
        coarse = torch.ops.aten.convolution_backward(r[:1], x[:1], conv.weight.to(torch.bfloat16), None, [1, 1], [1, 1],
                                                     [1, 1], False, [0, 0], 1, [False, True, False])[1]
        assert not torch.allclose(coarse.double().abs().flatten(1).sum(1), want[0], rtol=2e-5, atol=0)


# -- whole models ---------------------------------------------------------------------------------
class ConvNet(nn.Module):
    """Conv layers of one dimensionality (tanh between them), a global mean, a linear classifier."""

    def __init__(self, convs, channels_out: int, classes: int = 5):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.bn = nn.BatchNorm2d(channels_out) if isinstance(convs[-1], nn.Conv2d) else nn.Identity()
        self.fc = nn.Linear(channels_out, classes)

    def forward(self, x):
        for c in self.convs:
            x = torch.tanh(c(x))
        x = self.bn(x)
        return self.fc(x.flatten(2).mean(2))


def net2d():
    return ConvNet([nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, stride=2, padding=1, dilation=1),
                    nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                    nn.Conv2d(8, 12, 1, stride=2), nn.Conv2d(12, 10, 3, padding=1, padding_mode="reflect"),
                    nn.Conv2d(10, 16, 2, padding="same")], 16), (3, 12, 12)


def net1d():
    return ConvNet([nn.Conv1d(2, 6, 5, stride=2, padding=2), nn.Conv1d(6, 6, 3, dilation=2, groups=3),
                    nn.Conv1d(6, 8, 1)], 8), (2, 30)


def net3d():
    return ConvNet([nn.Conv3d(2, 4, 3, padding=1), nn.Conv3d(4, 4, 3, stride=2, groups=4),
                    nn.Conv3d(4, 6, 1)], 6), (2, 6, 7, 7)


class TinyResNet(nn.Module):
    """A ResNet-shaped model (stem, BasicBlocks with BN and a strided 1x1 projection shortcut)."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.b1c1, self.b1n1 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b1c2, self.b1n2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b2c1, self.b2n1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16)
        self.b2c2, self.b2n2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.b1n2(self.b1c2(F.relu(self.b1n1(self.b1c1(x))))))
        x = F.relu(self.down(x) + self.b2n2(self.b2c2(F.relu(self.b2n1(self.b2c1(x))))))
        return self.fc(x.mean((2, 3)))


def warm_bn(model, shape):
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn((16,) + shape) * 1.5 + 0.3)
    return model.eval()


MODELS = {"2d": net2d, "1d": net1d, "3d": net3d, "resnet": lambda: (TinyResNet(), (3, 16, 16))}


def _compare(model, x, y, rtol, **kw):
    hooks = SaliencyComputer(model, **kw).compute(x, y)
    vm = SaliencyComputer(model, method="vmap", **kw).compute(x, y)
    loop = SaliencyComputer(model, method="loop", **kw).compute(x, y)
    scale = float(np.abs(vm.saliency).max())
    assert scale > 0
    for ref in (vm, loop):
        np.testing.assert_allclose(hooks.saliency, ref.saliency, rtol=rtol, atol=rtol * 1e-2 * scale)
        assert np.array_equal(hooks.predicted, ref.predicted)
        assert np.array_equal(hooks.target, ref.target)
        np.testing.assert_allclose(hooks.confidence, ref.confidence, rtol=1e-5)
    return hooks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_hooks_match_vmap_and_loop(name, dtype):
    torch.manual_seed(10)
    model, shape = MODELS[name]()
    model = warm_bn(model, shape).to(dtype)
    x = torch.randn((7,) + shape, dtype=dtype)
    y = torch.randint(0, 5, (7,))
    rtol = 1e-5 if dtype == torch.float32 else 1e-9
    out = _compare(model, x, y, rtol)                      # true labels
    K = sum(layer["filters"] for layer in schema_from_model(model, "m")["layers"])
    assert out.saliency.dtype == np.float32 and out.saliency.shape == (7, K)
    _compare(model, x, None, rtol, chunk_size=2)          # predicted labels, chunks cross the batch


def test_default_is_hooks_and_keeps_filters_and_order():
    torch.manual_seed(0)
    model, shape = net2d()
    comp = SaliencyComputer(model)
    assert comp.method == "hooks"
    schema = schema_from_model(model, "m")
    assert comp.names == [layer["name"] + ".weight" for layer in schema["layers"]]
    assert comp.filters == [l["filters"] for l in schema["layers"]]
    # nn.Conv2d only, parameter order, ".weight" dropped: exactly the 0.1 schema for 2-D CNNs.
    assert comp.names == [f"convs.{i}.weight" for i in range(7)]
    assert [l["name"] for l in schema["layers"]] == [f"convs.{i}" for i in range(7)]


def test_bf16_model():
    """A bf16 model: forward and backward in bf16, per-sample gradients summed in float32; agrees with
    the bf16 per-sample backward loop and torch.func to bf16 precision, and with the float32 model."""
    torch.manual_seed(11)
    model, shape = MODELS["resnet"]()
    model = warm_bn(model, shape)
    x = torch.randn((6,) + shape)
    y = torch.randint(0, 10, (6,))
    ref32 = SaliencyComputer(model, method="vmap").compute(x, y).saliency
    m16 = model.to(torch.bfloat16)
    x16 = x.to(torch.bfloat16)
    got = SaliencyComputer(m16).compute(x16, y)
    assert got.saliency.dtype == np.float32 and np.isfinite(got.saliency).all()
    assert got.confidence.dtype == np.float32
    for method in ("loop", "vmap"):
        ref = SaliencyComputer(m16, method=method).compute(x16, y).saliency
        err = np.abs(got.saliency - ref).max(axis=1) / np.abs(ref).max(axis=1)
        assert err.max() < 3e-2, (method, err)
    err32 = np.abs(got.saliency - ref32).sum() / np.abs(ref32).sum()
    assert err32 < 0.1, err32


def test_autocast_bf16_model():
    torch.manual_seed(12)
    model, shape = MODELS["resnet"]()
    model = warm_bn(model, shape)
    x = torch.randn((5,) + shape)
    got = SaliencyComputer(model, autocast=torch.bfloat16).compute(x).saliency
    ref = SaliencyComputer(model, method="loop", autocast=torch.bfloat16).compute(x).saliency
    full = SaliencyComputer(model).compute(x).saliency
    err = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
    assert err.max() < 3e-2, err
    assert not np.array_equal(got, full)   # autocast really ran in bf16


class DictRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv(x)))).mean((2, 3))
        return {"value": self.head(h), "features": h}


def test_dict_output_custom_loss():
    torch.manual_seed(13)
    model = DictRegressor().eval()
    x = torch.randn(6, 3, 10, 10)
    y = torch.randn(6, 2)

    def loss_fn(out, target):
        return ((out["value"] - target) ** 2).mean(1)

    out = _compare_custom(model, x, y, loss_fn)
    assert (out.predicted == -1).all() and (out.target == -1).all() and np.isnan(out.confidence).all()


def _compare_custom(model, x, y, loss_fn, **kw):
    hooks = SaliencyComputer(model, loss_fn=loss_fn, **kw).compute(x, y)
    for method in ("vmap", "loop"):
        ref = SaliencyComputer(model, method=method, loss_fn=loss_fn, **kw).compute(x, y)
        np.testing.assert_allclose(hooks.saliency, ref.saliency, rtol=1e-5, atol=1e-7 * np.abs(ref.saliency).max())
    return hooks


def test_tuple_and_dict_logits_default_loss():
    torch.manual_seed(14)
    base = TinyResNet().eval()

    class AsTuple(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = base

        def forward(self, x):
            return self.net(x), x.mean()

    class AsDict(AsTuple):
        def forward(self, x):
            return {"logits": self.net(x), "aux": x.mean()}

    x = torch.randn(4, 3, 16, 16)
    want = SaliencyComputer(base).compute(x)
    for wrapped in (AsTuple(), AsDict()):
        got = SaliencyComputer(wrapped).compute(x)
        np.testing.assert_array_equal(got.saliency, want.saliency)
        np.testing.assert_array_equal(got.predicted, want.predicted)


class SeqModel(nn.Module):
    """Token MLP: embedding, Linear on [B, T, D], a conv over the sequence, a Linear head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 12)
        self.conv = nn.Conv1d(12, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, tokens):
        h = torch.tanh(self.proj(self.emb(tokens)))          # [B, T, 12]
        h = torch.tanh(self.conv(h.transpose(1, 2)))        # [B, 6, T]
        return self.head(h.mean(2))


def test_linear_units_sequence_model():
    torch.manual_seed(15)
    model = SeqModel().eval()
    tokens = torch.randint(0, 20, (6, 9))
    comp = SaliencyComputer(model, units=("conv", "linear"))
    assert comp.names == ["proj.weight", "conv.weight", "head.weight"] and comp.K == 12 + 6 + 4
    assert SaliencyComputer(model).names == ["conv.weight"]     # linear units are off by default
    y = torch.randint(0, 4, (6,))
    _compare(model, tokens, y, 1e-5, units=("conv", "linear"))
    schema = schema_from_model(model, "seq", units=("conv", "linear"))
    assert [l["name"] for l in schema["layers"]] == ["proj", "conv", "head"]


class Shared(nn.Module):
    """One conv applied twice, and a weight tied between two modules: gradients sum over uses."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.block = nn.Conv2d(6, 6, 3, padding=1)
        self.twin = nn.Conv2d(6, 6, 3, padding=1)
        self.twin.weight = self.block.weight
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.stem(x))
        h = torch.tanh(self.block(h))
        h = torch.tanh(self.block(h))
        h = torch.tanh(self.twin(h))
        return self.fc(h.mean((2, 3)))


def test_shared_and_reused_weights():
    torch.manual_seed(16)
    model = Shared().eval()
    comp = SaliencyComputer(model)
    assert comp.names == ["stem.weight", "block.weight"]
    _compare(model, torch.randn(5, 3, 8, 8), torch.randint(0, 3, (5,)), 1e-5)


def test_wrappers_do_not_change_names_or_values():
    torch.manual_seed(17)
    model = warm_bn(TinyResNet(), (3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    base = schema_from_model(model, "r")
    want = SaliencyComputer(model).compute(x).saliency
    inner_compiled = TinyResNet()
    inner_compiled.load_state_dict(model.state_dict())
    inner_compiled.eval()
    inner_compiled.down = torch.compile(inner_compiled.down)            # a compiled submodule
    for wrapped in (torch.compile(model), nn.DataParallel(model), torch.compile(nn.DataParallel(model)),
                    inner_compiled):
        s = schema_from_model(wrapped, "r")
        assert s == base, [l["name"] for l in s["layers"]]
        np.testing.assert_array_equal(SaliencyComputer(wrapped).compute(x).saliency, want)


def test_served_model_untouched_and_inference_mode_inputs():
    torch.manual_seed(18)
    model = warm_bn(TinyResNet(), (3, 16, 16))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    comp = SaliencyComputer(model)
    with torch.inference_mode():
        x = torch.randn(3, 3, 16, 16)
    out = comp.compute(x)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules()), "hooks must live on the tap's copy only"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    np.testing.assert_allclose(out.saliency, SaliencyComputer(model, method="loop").compute(x.clone()).saliency,
                               rtol=1e-5, atol=1e-9)
    # Weights updated in place (load_state_dict, optimizer steps) are seen by the tap's copy.
    with torch.no_grad():
        model.conv1.weight.mul_(2.0)
    assert not np.allclose(comp.compute(x).saliency, out.saliency)


def test_frozen_weights():
    """Serving models often have requires_grad=False everywhere; the hook path does not need it."""
    torch.manual_seed(19)
    model = warm_bn(TinyResNet(), (3, 16, 16))
    x = torch.randn(4, 3, 16, 16)
    want = SaliencyComputer(model, method="vmap").compute(x).saliency
    model.requires_grad_(False)
    got = SaliencyComputer(model).compute(x).saliency
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7 * want.max())
    assert all(p.grad is None for p in model.parameters())

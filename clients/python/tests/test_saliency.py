import numpy as np
import pytest
import torch
import torch.nn.functional as F

from saliency_tap import TARGET_PREDICTED, TARGET_TRUE, SaliencyComputer, conv_weights


def naive(model, x, target):
    """Reference: one loss.backward() per sample; mean |grad| per filter."""
    model.eval()
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        loss = F.cross_entropy(model(x[i : i + 1]), target[i : i + 1])
        loss.backward()
        rows.append(np.concatenate([w.grad.abs().mean(dim=(1, 2, 3)).numpy() for _, w in conv_weights(model)]))
    model.zero_grad()
    return np.stack(rows)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 1, 8, 8, generator=g), torch.randint(0, 4, (12,), generator=g)


def test_vmap_matches_naive_loop_true_label(tiny_model, batch):
    x, y = batch
    out = SaliencyComputer(tiny_model).compute(x, y)
    ref = naive(tiny_model, x, y)
    assert out.saliency.shape == (12, 13) and out.saliency.dtype == np.float32
    np.testing.assert_allclose(out.saliency, ref, rtol=1e-5, atol=1e-7 * ref.max())
    assert out.target_kind == TARGET_TRUE
    assert np.array_equal(out.target, y.numpy())


def test_vmap_matches_naive_loop_float64(tiny_model, batch):
    m = tiny_model.double()
    x, y = batch
    out = SaliencyComputer(m, chunk_size=5).compute(x.double(), y)  # chunking crosses batch boundaries
    ref = naive(m, x.double(), y)
    np.testing.assert_allclose(out.saliency, ref.astype(np.float32), rtol=1e-6)


def test_loop_method_equals_vmap(tiny_model, batch):
    x, y = batch
    a = SaliencyComputer(tiny_model, method="vmap").compute(x, y).saliency
    b = SaliencyComputer(tiny_model, method="loop").compute(x, y).saliency
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7 * b.max())


def test_predicted_target_and_confidence(tiny_model, batch):
    x, _ = batch
    out = SaliencyComputer(tiny_model).compute(x)
    logits = tiny_model(x).detach()
    p = torch.softmax(logits, 1)
    assert out.target_kind == TARGET_PREDICTED
    assert np.array_equal(out.predicted, logits.argmax(1).numpy())
    assert np.array_equal(out.target, out.predicted)
    np.testing.assert_allclose(out.confidence, p.max(1).values.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out.saliency, naive(tiny_model, x, logits.argmax(1)), rtol=1e-5, atol=1e-9)


def test_true_label_differs_from_predicted(tiny_model, batch):
    x, _ = batch
    c = SaliencyComputer(tiny_model)
    pred = c.compute(x)
    wrong = torch.as_tensor((pred.predicted + 1) % 4)
    forced = c.compute(x, wrong)
    assert not np.allclose(pred.saliency, forced.saliency)
    np.testing.assert_allclose(forced.saliency, naive(tiny_model, x, wrong), rtol=1e-5, atol=1e-9)


def test_mean_not_l2(tiny_model, batch):
    x, y = batch
    out = SaliencyComputer(tiny_model).compute(x[:1], y[:1]).saliency[0]
    tiny_model.zero_grad()
    F.cross_entropy(tiny_model(x[:1]), y[:1]).backward()
    g = tiny_model.conv2.weight.grad  # layer 1: global filters 3..7, each 3*3*3 = 27 weights
    mean_abs = g.abs().flatten(1).mean(1).numpy()
    l2 = g.flatten(1).norm(dim=1).numpy()
    np.testing.assert_allclose(out[3:8], mean_abs, rtol=1e-5)
    assert not np.allclose(out[3:8], l2, rtol=1e-2)
    tiny_model.zero_grad()


def test_eval_mode_used_and_training_flag_restored(tiny_model, batch):
    x, y = batch
    tiny_model.train()
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    out = SaliencyComputer(tiny_model).compute(x, y)
    assert tiny_model.training
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed (BatchNorm running stats must not update)"
    tiny_model.eval()
    np.testing.assert_allclose(out.saliency, naive(tiny_model, x, y), rtol=1e-5, atol=1e-9)


def test_label_count_mismatch(tiny_model, batch):
    x, y = batch
    with pytest.raises(ValueError):
        SaliencyComputer(tiny_model).compute(x, y[:3])

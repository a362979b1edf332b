"""The oneDNN CPU linear (kernels/cpu_linear.py) against its reference, its version guard, and the module swap."""

import platform

import pytest
import torch

from anydecode import RuntimeAdapterError
from anydecode.kernels import cpu_linear
from anydecode.plugins.hf import HFSession
from tests.helpers.tiny import tiny_llama

x86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.skipif(not x86, reason="the oneDNN path is used on x86-64 only")
def test_installed_torch_is_a_tested_release():
    # the operator is private: when PyTorch moves to an untested release this fails, and the release must be
    # checked (the tests below) and added to TESTED_TORCH
    assert cpu_linear.torch_release() in cpu_linear.TESTED_TORCH, torch.__version__
    assert cpu_linear.available()


def test_untested_releases_take_the_reference():
    assert not cpu_linear.available("2.99.0")
    assert cpu_linear.torch_release("2.13.0+cpu") == "2.13"


@pytest.mark.skipif(not cpu_linear.available(), reason="oneDNN linear not available here")
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 7, 16, 33])
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_matches_the_reference(rows, bias):
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(96, 40, generator=gen)
    b = torch.randn(96, generator=gen) if bias else None
    for x in (torch.randn(rows, 40, generator=gen), torch.randn(2, rows, 40, generator=gen)):
        with torch.no_grad():
            got = cpu_linear.linear(x, w, b)
        ref = cpu_linear.reference_linear(x, w, b)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        # and a non-contiguous input (a slice of hidden states)
        wide = torch.randn(*x.shape[:-1], 80, generator=gen)[..., ::2]
        with torch.no_grad():
            torch.testing.assert_close(cpu_linear.linear(wide, w, b), cpu_linear.reference_linear(wide, w, b),
                                       rtol=1e-5, atol=1e-5)


def test_autograd_and_other_dtypes_take_the_reference():
    w = torch.randn(8, 4, requires_grad=True)
    x = torch.randn(3, 4)
    assert not cpu_linear.eligible(x, w)  # grad enabled
    out = cpu_linear.linear(x, w)
    out.sum().backward()
    assert w.grad is not None
    with torch.no_grad():
        assert not cpu_linear.eligible(x, torch.randn(4, 8).t())  # a transposed view of weights
        assert cpu_linear.linear(x, torch.randn(4, 8).t()).shape == (3, 8)
        assert not cpu_linear.eligible(x.double(), w.double())
        assert not cpu_linear.eligible(x.bfloat16(), w.bfloat16())


class Scaled(torch.nn.Linear):
    pass


@pytest.mark.skipif(not cpu_linear.available(), reason="oneDNN linear not available here")
def test_fast_linear_swaps_plain_layers_and_restores_them():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), Scaled(8, 8), torch.nn.Linear(8, 2), torch.nn.Linear(2, 2))
    custom = model[3]
    custom.forward = lambda x: x * 0  # someone else's replacement (accelerate hooks do this)
    x = torch.randn(5, 4)
    with torch.no_grad():
        ref = model(x)
        with cpu_linear.fast_linear(model) as switched:
            assert switched == 2
            assert "forward" in model[0].__dict__ and "forward" not in model[1].__dict__
            got = model(x)
    assert "forward" not in model[0].__dict__ and "forward" not in model[2].__dict__
    assert model[3].forward is not None and model[3].forward(x[:, :2]).abs().sum() == 0
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    with cpu_linear.fast_linear(model, enabled=False) as switched:
        assert switched == 0


def test_fast_linear_restores_after_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8))
    with pytest.raises(ValueError), cpu_linear.fast_linear(model):
        raise ValueError("boom")
    assert "forward" not in model[0].__dict__


@pytest.mark.skipif(not cpu_linear.available(), reason="oneDNN linear not available here")
def test_session_logits_agree_with_and_without_fast_linear():
    model = tiny_llama()
    prompt = torch.tensor([[1, 5, 9, 4]])
    fast, plain = HFSession(model, [2]), HFSession(model, [2], fast_linear=False)
    assert fast.fast_linear and not plain.fast_linear
    torch.testing.assert_close(fast.start(prompt), plain.start(prompt), rtol=1e-4, atol=1e-4)
    for block in ([[7]], [[8, 9]], [[10, 11, 12, 13, 14]]):
        torch.testing.assert_close(fast.append(block), plain.append(block), rtol=1e-4, atol=1e-4)
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_fast_linear_true_where_unavailable_is_an_error(monkeypatch):
    monkeypatch.setattr(cpu_linear, "available", lambda version=None: False)
    with pytest.raises(RuntimeAdapterError, match="fast_linear=True needs a CPU model"):
        HFSession(tiny_llama(), [2], fast_linear=True)
    assert not HFSession(tiny_llama(), [2]).fast_linear


@pytest.mark.skipif(not cpu_linear.available(), reason="oneDNN linear not available here")
def test_fast_linear_follows_replaced_weights_and_leaves_autograd_alone():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with torch.no_grad():
        with cpu_linear.fast_linear(layer, modules=[layer]):
            layer(x)
        layer.weight = torch.nn.Parameter(torch.randn(3, 4))  # a new tensor, not an in-place copy
        with cpu_linear.fast_linear(layer, modules=[layer]) as switched:
            assert switched == 1
            got = layer(x)
        torch.testing.assert_close(got, torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    with cpu_linear.fast_linear(layer, modules=[layer]) as switched:  # autograd on: transformers' own path
        assert switched == 0
        assert layer(x).requires_grad


@pytest.mark.skipif(not cpu_linear.available(), reason="oneDNN linear not available here")
def test_the_forward_cache_does_not_keep_models_alive():
    import gc
    import weakref

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    with torch.no_grad(), cpu_linear.fast_linear(model) as switched:
        assert switched == 2
        model(torch.randn(1, 4))
    gone = weakref.ref(model)
    layers = len(cpu_linear._FORWARDS)
    del model
    gc.collect()
    assert gone() is None
    assert len(cpu_linear._FORWARDS) <= layers - 2


@pytest.mark.skipif(not cpu_linear.available(), reason="oneDNN linear not available here")
def test_pruned_layers_keep_their_own_forward_and_other_threads_keep_autograd():
    """A pruned layer gets its weight from a hook at every call: it is left alone. While a layer is swapped, a call
    with autograd on (another thread's training step) takes transformers' path and gets gradients."""
    from torch.nn.utils import prune

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    prune.l1_unstructured(model[0], "weight", 0.5)
    assert cpu_linear.linear_modules(model) == [model[1]]
    x = torch.randn(3, 4)
    with torch.no_grad(), cpu_linear.fast_linear(model) as switched:
        assert switched == 1
        forward = model[1].__dict__["forward"]
    with torch.enable_grad():
        out = forward(x)
        out.sum().backward()
    assert model[1].weight.grad is not None

"""The fused LoRA-FA fast path against the plain parametrization: outputs, gradients, gradcheck,
dtypes, the merge rule and dropout."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lora
from tests.test_lora_common import (
    ATTN,
    ENCODER,
    INITS,
    adapted_linear,
    adapter,
    hidden,
    linear_with,
    perturb_B,
    spectral_matrix,
    tiny_model,
    token_ids,
    trained_tiny_model,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # small matrices: one thread is faster


def _fast_vs_plain(init, freeze_a, dropout=0.0, train=True):
    targets = ATTN if init == "seed" else ENCODER
    model = tiny_model(head=False).double()  # float64: compare the math, not float32 rounding
    lora.add_lora(model, r=4, init=init, targets=targets, freeze_a=freeze_a, lora_dropout=dropout,
                  generator=torch.Generator().manual_seed(0))
    perturb_B(model, scale=0.5)
    model.train(train)
    ids = token_ids()
    G = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = {}
    for fast in (True, False):
        lora.set_fast_path(model, fast)
        model.zero_grad()
        torch.manual_seed(123)
        out = model(input_ids=ids).last_hidden_state
        (out * G).sum().backward()
        res[fast] = (out.detach(), [t.grad.clone() for t in lora.get_lora_params(model)])
    return res


@pytest.mark.parametrize("freeze_a", [True, False])
@pytest.mark.parametrize("init", INITS)
def test_fast_path_equals_plain_parametrization(init, freeze_a):
    res = _fast_vs_plain(init, freeze_a)
    (y1, g1), (y0, g0) = res[True], res[False]
    # float64 model: the paths differ only by rounding, far below the 1e-6 asked for
    torch.testing.assert_close(y1, y0, atol=1e-10, rtol=0)
    assert len(g1) == len(g0) == (1 if freeze_a else 2) * (8 if init == "seed" else 12)
    for a, b in zip(g1, g0):
        assert b.abs().max() > 1e-5  # (seed: s = 1/4 and A's rows have norms σ_i ~ 0.2)
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("with_bias, with_dropout, merge", [(True, False, True), (True, False, False),
                                                            (False, False, True), (False, False, False),
                                                            (True, True, False)])
def test_lora_fa_linear_matches_autograd_and_gradcheck(with_bias, with_dropout, merge):
    """The fused LoRA-FA layer against the same math as plain autograd ops (float64), and
    torch.autograd.gradcheck of its hand-written backward (W and A frozen: no gradient), on both
    routes (merged W_eff GEMM, separate rank-r term). With dropout, x_d is a different tensor and
    gets its own gradient."""
    from lora.layers import LoRAFALinear

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, dtype=torch.float64, generator=gen, requires_grad=True)
    W = torch.randn(5, 7, dtype=torch.float64, generator=gen)  # (out, in), frozen
    b = torch.randn(5, dtype=torch.float64, generator=gen, requires_grad=True) if with_bias else None
    A = torch.randn(2, 7, dtype=torch.float64, generator=gen)  # (r, in), frozen
    D = torch.randn(5, 2, dtype=torch.float64, generator=gen, requires_grad=True)  # (out, r)
    mask = (torch.rand(2, 3, 7, generator=gen) > 0.3).double() / 0.7
    G = torch.randn(2, 3, 5, dtype=torch.float64, generator=gen)

    def fused(x_, b_, d):
        return LoRAFALinear.apply(x_, x_ * mask if with_dropout else None, W, b_, A, d, 0.75, merge)

    def reference(x_, b_, d):
        xd = x_ * mask if with_dropout else x_
        return F.linear(x_, W, b_) + 0.75 * (xd @ A.T) @ d.T

    torch.testing.assert_close(fused(x, b, D), reference(x, b, D), atol=1e-12, rtol=0)
    inputs = [t for t in (x, b, D) if t is not None]
    grads = torch.autograd.grad((fused(x, b, D) * G).sum(), inputs)
    refs = torch.autograd.grad((reference(x, b, D) * G).sum(), inputs)
    for a, r in zip(grads, refs):
        torch.testing.assert_close(a, r, atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(fused, (x, b, D))


@pytest.mark.parametrize("merge", [True, False])
def test_lora_fa_linear_bf16_autocast_keeps_dtypes(merge):
    from lora.layers import LoRAFALinear

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, generator=gen, requires_grad=True)  # float32 input, as after a LayerNorm
    A, D = torch.randn(2, 8, generator=gen), torch.randn(6, 2, generator=gen).requires_grad_()
    W, b = torch.randn(6, 8, generator=gen), torch.randn(6, generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = LoRAFALinear.apply(x, None, W, b, A, D, 2.0, merge)
        y_ref = F.linear(x, W, b)  # what the frozen layer alone gives under autocast
    assert y.dtype == y_ref.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == D.grad.dtype == torch.float32
    ref = torch.ones(4, 6) @ (W + 2.0 * D.detach() @ A)  # dL/dx for L = sum(y), in float32
    torch.testing.assert_close(x.grad, ref, atol=0.05 * ref.abs().max().item(), rtol=0)


def test_merge_rule_by_hand():
    from lora.layers import merge_is_cheaper

    # N* = 2·in·out / (in + 2·out): 2·768·768 / 2304 = 512; 2·2048·5632 / 13312 = 1733.0
    assert not merge_is_cheaper(511, 768, 768) and merge_is_cheaper(512, 768, 768)
    assert not merge_is_cheaper(1732, 2048, 5632) and merge_is_cheaper(1733, 2048, 5632)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), d_in=st.integers(1, 24), d_out=st.integers(1, 24), r=st.integers(1, 6))
def test_merge_modes_agree_and_auto_follows_the_rule(n, d_in, d_out, r):
    """set_fast_path(merge=...): "always" and "never" give the same output and gradients (float64),
    "auto" takes the route `merge_is_cheaper` names; a bad mode is refused by name."""
    from lora.layers import merge_is_cheaper

    gen = torch.Generator().manual_seed(n * 1000 + d_in * 10 + d_out)
    lin = nn.Linear(d_in, d_out, dtype=torch.float64)
    lora.add_lora(lin, r=min(r, d_in, d_out), lora_alpha=2.0, init="random", freeze_a=True)
    with torch.no_grad():
        lin.parametrizations.weight[0].lora_B.normal_(generator=gen)
    x = torch.randn(n, d_in, dtype=torch.float64, generator=gen, requires_grad=True)
    out = {}
    for mode in lora.layers.MERGE_MODES:
        lora.set_fast_path(lin, merge=mode)
        y = lin(x)
        out[mode] = (y, *torch.autograd.grad(y.square().sum(), [x, *lora.get_lora_params(lin)]))
    for a, b in zip(out["always"], out["never"]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    auto = out["always" if merge_is_cheaper(n, d_in, d_out) else "never"]
    assert all(torch.equal(a, b) for a, b in zip(out["auto"], auto))  # bit for bit: the same route
    with pytest.raises(ValueError, match="merge='sometimes'"):
        lora.set_fast_path(lin, merge="sometimes")


def test_fast_path_float32_bert():
    model, ids = trained_tiny_model(4, ENCODER)
    with torch.no_grad():
        fast = hidden(model, ids)
        lora.set_fast_path(model, False)
        plain = hidden(model, ids)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)


def test_dropout_fast_path_eval_equals_plain_and_train_is_stochastic():
    # eval mode: dropout is off, both paths agree
    res = _fast_vs_plain("svd", True, dropout=0.3, train=False)
    torch.testing.assert_close(res[True][0], res[False][0], atol=1e-6, rtol=0)
    # train mode, fast path: the adapter's input dropout is active and follows the torch seed
    lin, W = adapted_linear("svd")
    lin2 = linear_with(W)
    lora.add_lora(lin2, r=2, lora_alpha=3.0, init="svd", lora_dropout=0.5)
    x = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    outs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outs.append(lin2(x))
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])
    # the dropout applies to the adapter's input only: x Wᵀ + b + s·(dropout(x) Aᵀ)Bᵀ
    p = adapter(lin2)
    torch.manual_seed(1)
    mask = F.dropout(torch.ones_like(x), 0.5, training=True)
    ref = x @ W.T + lin2.bias + p.scaling * ((x * mask) @ p.lora_A.T) @ p.lora_B.T
    torch.testing.assert_close(outs[0], ref, atol=1e-12, rtol=0)


def test_plain_path_applies_dropout_in_train_mode():
    W, _ = spectral_matrix(5, 7, seed=0)
    lin = linear_with(W)
    lora.add_lora(lin, r=2, init="svd", lora_dropout=0.5)
    lora.set_fast_path(lin, False)
    lin.train()
    x = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    a = lin(x)
    torch.manual_seed(2)
    b = lin(x)
    assert not torch.allclose(a, b)



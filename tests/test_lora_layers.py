"""The parametrization and its fast path: forward formula, gradients, training, memory, enable/disable."""
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize

import lora
from bench.common import saved_storages
from tests.test_lora_common import (
    ATTN,
    ENCODER,
    INITS,
    adapter,
    base_weight,
    hidden,
    linear_with,
    perturb_B,
    spectral_matrix,
    tiny_model,
    token_ids,
    trained_tiny_model,
    truncation,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # small matrices: one thread is faster


def _square_or_not(init):
    return (6, 6) if init == "seed" else (5, 7)  # seed only handles square weights


def _adapted_linear(init, freeze_a=True, alpha=3.0, r=2, seed=0):
    out_f, in_f = _square_or_not(init)
    W, _ = spectral_matrix(out_f, in_f, seed=seed)
    lin = linear_with(W)
    lora.add_lora(lin, r=r, lora_alpha=alpha, init=init, freeze_a=freeze_a,
                  generator=torch.Generator().manual_seed(seed))
    assert not lin.bias.requires_grad  # add_lora froze it (the base)
    lin.bias.requires_grad_(True)  # trained, to check its gradient too
    return lin, W


@pytest.mark.parametrize("freeze_a", [True, False])
@pytest.mark.parametrize("init", INITS)
def test_forward_and_gradients_match_hand_derivation(init, freeze_a):
    """y = x Wᵀ + b + s·(x Aᵀ)Dᵀ, D = B − B0 (residual) or B; L = Σ y ⊙ G.

    dL/dB = s·Gᵀ(x Aᵀ) summed over (batch, seq); dL/dA = s·Dᵀ Gᵀ x; W gets no gradient.
    """
    lin, W = _adapted_linear(init, freeze_a)
    p = adapter(lin)
    with torch.no_grad():  # move B off its init so that D ≠ 0 (and dL/dA ≠ 0)
        p.lora_B.add_(0.3 * torch.randn(p.lora_B.shape, generator=torch.Generator().manual_seed(9),
                                         dtype=torch.float64))
    out_f, in_f = W.shape
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, in_f, generator=g, dtype=torch.float64)
    G = torch.randn(2, 3, out_f, generator=g, dtype=torch.float64)
    s = p.scaling
    assert s == pytest.approx(3.0 / 2)
    A, B, B0 = p.lora_A.detach(), p.lora_B.detach(), p.lora_B0
    D = B - B0 if p.residual else B
    for fast in (True, False):
        lora.set_fast_path(lin, fast)
        p.lora_B.grad = None
        p.lora_A.grad = None
        y = lin(x)
        ref = x @ W.T + lin.bias.detach() + s * (x @ A.T) @ D.T
        torch.testing.assert_close(y, ref, atol=1e-12, rtol=0)
        (y * G).sum().backward()
        xf, Gf = x.reshape(-1, in_f), G.reshape(-1, out_f)
        torch.testing.assert_close(p.lora_B.grad, s * Gf.T @ (xf @ A.T), atol=1e-12, rtol=0)
        if freeze_a:
            assert p.lora_A.grad is None and not p.lora_A.requires_grad
        else:
            torch.testing.assert_close(p.lora_A.grad, s * D.T @ Gf.T @ xf, atol=1e-12, rtol=0)
        assert base_weight(lin).grad is None and not base_weight(lin).requires_grad
        torch.testing.assert_close(lin.bias.grad, Gf.sum(0), atol=1e-12, rtol=0)
        lin.bias.grad = None


def test_weight_attribute_is_W_eff():
    for init in INITS:
        lin, W = _adapted_linear(init)
        perturb_B(lin)
        p = adapter(lin)
        D = p.lora_B - p.lora_B0 if p.residual else p.lora_B
        torch.testing.assert_close(lin.weight, W + p.scaling * D @ p.lora_A, atol=1e-12, rtol=0)


def test_from_linear_plain_parametrization():
    """minLoRA-style use: register the parametrization by hand (no fast-path hooks)."""
    W, _ = spectral_matrix(5, 7, seed=2)
    lin = linear_with(W)
    p = lora.LoRAFAParametrization.from_linear(lin, r=2, lora_alpha=3.0, init="svd")
    assert p.scaling == 1.5 and not p.lora_A.requires_grad and not p.residual
    parametrize.register_parametrization(lin, "weight", p)
    W_r = p.scaling * p.lora_B.detach() @ p.lora_A
    torch.testing.assert_close(W_r, truncation(W, 2), atol=1e-12, rtol=0)
    x = torch.randn(4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lin(x), x @ (W + W_r).T + lin.bias.detach(), atol=1e-12, rtol=0)
    assert lora.adapted_modules(lin)[0][2] is p
    q = lora.LoRAParametrization.from_linear(linear_with(W), r=2, init="pissa")
    assert q.lora_alpha == 2.0 and q.residual and q.lora_A.requires_grad


def test_from_linear_seed_default_alpha_matches_add_lora():
    W, _ = spectral_matrix(6, 6, seed=2)
    lin = linear_with(W)
    lora.add_lora(lin, r=3, init="seed")
    p = lora.LoRAFAParametrization.from_linear(linear_with(W), r=3, init="seed")
    assert p.lora_alpha == adapter(lin).lora_alpha == 1.0


@pytest.mark.parametrize("init", ["random", "pissa"])
def test_lora_fa_training_never_moves_A_or_W(init):
    model = tiny_model()
    lora.add_lora(model, r=4, init=init, targets=ATTN, freeze_a=True)
    params = lora.get_lora_params(model)
    assert len(params) == 8 and all(t.requires_grad for t in params)
    adapters = [p for _, _, p in lora.adapted_modules(model)]
    A0 = [p.lora_A.detach().clone() for p in adapters]
    B0 = [p.lora_B.detach().clone() for p in adapters]
    W0 = [base_weight(m).detach().clone() for _, m, _ in lora.adapted_modules(model)]
    # every parameter in the optimizer, with weight decay: frozen ones must still not move
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ids, labels = token_ids(), torch.tensor([0, 1, 2])
    losses = []
    for _ in range(4):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    for p, a, b in zip(adapters, A0, B0):
        assert torch.equal(p.lora_A, a)  # bitwise
        assert p.lora_A.grad is None
        assert (p.lora_B - b).abs().max() > 1e-3  # B did train
    for (_, m, _), w in zip(lora.adapted_modules(model), W0):
        assert torch.equal(base_weight(m), w)
    assert losses[-1] < losses[0]


def test_plain_lora_trains_A():
    model = tiny_model()
    lora.add_lora(model, r=4, init="svd", targets=ATTN, freeze_a=False)
    assert len(lora.get_lora_params(model)) == 16
    A0 = [p.lora_A.detach().clone() for _, _, p in lora.adapted_modules(model)]
    opt = torch.optim.AdamW(lora.get_lora_params(model), lr=1e-2)
    loss = model(input_ids=token_ids(), labels=torch.tensor([0, 1, 2])).loss
    loss.backward()
    opt.step()
    for (_, _, p), a in zip(lora.adapted_modules(model), A0):
        assert (p.lora_A - a).abs().max() > 1e-4


# -- fast path vs plain parametrization -------------------------------------------------------------
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
    lin, W = _adapted_linear("svd")
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


# -- memory: what autograd saves ---------------------------------------------------------------------
def _extra(storages, base):
    """Bytes saved on top of the base model, and a Counter of the sizes of those extra storages."""
    extra = Counter(storages.values())
    extra.subtract(Counter(base.values()))
    return sum(storages.values()) - sum(base.values()), +extra


DIMS = [24, 40, 16, 56]  # Linear(24, 40) -> Linear(40, 16) -> Linear(16, 56)
N, R = 3 * 5, 2  # tokens (batch * seq), rank


def _sequential(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(DIMS[:-1], DIMS[1:])])


def _bound(layers, n, r):
    """(N·r + r·in + out·r) float32 values per adapted layer: x Aᵀ, A and D."""
    return sum(n * r + r * i + o * r for i, o in layers) * 4


@pytest.mark.parametrize("init", ["random", "svd", "pissa", "milora"])
def test_lora_fa_fast_path_saves_no_input_sized_tensor(init):
    x = torch.randn(3, 5, DIMS[0], generator=torch.Generator().manual_seed(0)).requires_grad_()
    base = _sequential()
    for t in base.parameters():
        t.requires_grad_(False)
    _, st_base = saved_storages(lambda: base(x))
    input_bytes = {N * i * 4 for i in DIMS[:-1]}  # sizes of the adapted layers' inputs (all distinct)
    assert not input_bytes & set(st_base.values())  # frozen Linear layers save only their weights

    results = {}
    for fast, freeze_a in ((True, True), (False, True), (True, False)):
        model = _sequential()
        lora.add_lora(model, r=R, init=init, freeze_a=freeze_a)
        lora.mark_only_lora_trainable(model)
        perturb_B(model)
        lora.set_fast_path(model, fast)
        out, st = saved_storages(lambda model=model: model(x))
        out.square().sum().backward()  # the saved tensors suffice for the backward
        assert all(t.grad is not None for t in lora.get_lora_params(model))
        results[fast, freeze_a] = _extra(st, st_base)

    layers = list(zip(DIMS[:-1], DIMS[1:]))
    extra, sizes = results[True, True]
    # LoRA-FA fast path: at most x·Aᵀ (N×r), A (r×in) and D (out×r) per layer, and at least the x·Aᵀ
    assert len(layers) * N * R * 4 <= extra <= _bound(layers, N, R)
    assert not input_bytes & set(sizes), "an input-sized tensor was saved"
    # the plain parametrization saves every layer's input (for dW_eff) on top of that
    extra_plain, sizes_plain = results[False, True]
    assert input_bytes <= set(sizes_plain)
    assert extra_plain >= sum(input_bytes) > _bound(layers, N, R)
    # and so does plain LoRA even on the fast path (dA needs x): the test can see inputs
    assert input_bytes <= set(results[True, False][1])


def test_lora_fa_memory_on_tiny_bert():
    """The same bound on a transformer: inputs_embeds require grad, everything but B frozen."""
    batch, seq, r, width = 4, 32, 2, 32
    n = batch * seq
    ids = token_ids(batch, seq)

    def run(model):
        lora.mark_only_lora_trainable(model)  # (on the base model: freezes everything)
        emb = model.embeddings.word_embeddings(ids).detach().requires_grad_()
        return saved_storages(lambda: model(inputs_embeds=emb).last_hidden_state)[1]

    base = run(tiny_model(head=False))
    res = {}
    for fast in (True, False):
        model = tiny_model(head=False)
        names = lora.add_lora(model, r=r, init="pissa", targets=ATTN)
        lora.set_fast_path(model, fast)
        res[fast] = _extra(run(model), base)
    bound = _bound([(width, width)] * len(names), n, r)
    extra, sizes = res[True]
    assert len(names) * n * r * 4 <= extra <= bound
    assert sizes[n * width * 4] == 0  # no input-sized storage beyond the base model's
    # plain: the LayerNorm output feeding q, k and v of each layer is saved (once, shared) for dW_eff
    # (the attention context feeding attention.output.dense is already saved by the base model)
    extra_plain, sizes_plain = res[False]
    assert sizes_plain[n * width * 4] == 2
    assert extra_plain >= 2 * n * width * 4 > 2 * bound


# -- enable / disable ------------------------------------------------------------------------------
@pytest.mark.parametrize("init", INITS)
def test_disable_uses_the_base_weight_and_enable_restores(init):
    lin, W = _adapted_linear(init)
    perturb_B(lin, scale=0.5)
    p = adapter(lin)
    x = torch.randn(2, 3, W.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    b = lin.bias.detach()
    W_base = W - p.scaling * p.lora_B0 @ p.lora_A if p.residual else W  # W − W_r for pissa/milora
    for fast in (True, False):
        lora.set_fast_path(lin, fast)
        adapted = lin(x)
        lora.disable_lora(lin)
        assert not p.enabled
        torch.testing.assert_close(lin(x), x @ W_base.T + b, atol=1e-12, rtol=0)
        torch.testing.assert_close(lin.weight, W_base, atol=1e-12, rtol=0)
        lora.enable_lora(lin)
        assert torch.equal(lin(x), adapted)
        assert (adapted - (x @ W_base.T + b)).abs().max() > 1e-3
    if init in ("pissa", "milora"):
        assert (W_base - W).abs().max() > 1e-3  # disabling a residual adapter really removes W_r


def test_disable_on_a_model_gives_the_base_model():
    ref = tiny_model()
    model = tiny_model()
    ids = token_ids()
    lora.add_lora(model, r=4, init="svd", targets=ENCODER)
    perturb_B(model)
    with torch.no_grad():
        base_out = hidden(ref, ids)
        adapted = hidden(model, ids)
        lora.disable_lora(model)
        disabled = hidden(model, ids)
        lora.enable_lora(model)
        again = hidden(model, ids)
    torch.testing.assert_close(disabled, base_out, atol=1e-6, rtol=0)
    assert (adapted - base_out).abs().max() > 1e-2
    assert torch.equal(again, adapted)

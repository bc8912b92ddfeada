"""Top-r singular triplets of a stack of same-shaped matrices: block Krylov in float64, batched.

For X of shape (L, m, n) this finds, for each of the L matrices, the r largest singular values
and their vectors without forming a full SVD or the n × n Gram matrix. It runs block Lanczos on
M = XᵀX (the smaller side), using only products with X and Xᵀ:

    Q_1 = orth(G)                         G: a fixed Gaussian (n, b) start block, b = block size
    Y_j = X Q_j            (m, b)         the basis blocks' images, kept
    Z_j = Xᵀ Y_j = M Q_j   (n, b)         minus its Q_{j-1}, Q_j parts (the Lanczos recurrence),
    Q_{j+1} R_{j+1} = Z_j                 reorthogonalised against Q_1..Q_j, then QR
    T = Yᵀ Y = Qᵀ M Q      (jb, jb)       Rayleigh–Ritz: T s_i = θ_i s_i, θ_1 ≥ θ_2 ≥ ...
    V_r = Q S_r,  σ_i = √θ_i,  U_r = Y S_r / σ_r

The basis spans the block Krylov space {Q_1, M Q_1, ..., M^{j−1} Q_1}, whose top Ritz vectors
converge at a rate set by the gap between σ_r and σ_{b+1} (Chebyshev-accelerated, as in Musco &
Musco 2015), so flat spectra (σ_{r+1}/σ_r ≈ 0.98 on attention weights) need a modest depth where
plain subspace iteration stalls. Because M Q_j lies in span(Q_1..Q_{j+1}), the residual of the
Ritz pair (θ_i, Q s_i) is ‖M Q s_i − θ_i Q s_i‖ = ‖R_{j+1} s_i[last block]‖: convergence is
checked without another product. A matrix is done when every one of its r residuals is at most
`tol`·θ_i; the depth of the next check is extrapolated from the residuals' decay. Matrices
whose basis would exceed 3n/4 columns (64 for small n) before converging (a dense spectrum
with no gap after σ_r, rank deficiency) come back flagged, for the caller to solve exactly.
"""
import math

import torch

START_SEED = 0  # the start block is the same Gaussian draw on every call: reproducible factors


def krylov_top_r(X, r, *, tol=1e-8, block=None, first_check=64):
    """Top-r singular triplets of each X[l] (X: (L, m, n), float64, any device).

    Returns U (L, m, r), S (L, r) descending, V (L, n, r) and ok (L,) bool: False where the
    method did not converge (those rows of U, S, V are not meaningful).
    block: block size b (default r + 4); first_check: basis columns before the first check.
    """
    L, m, n = X.shape
    if m < n:  # work with the smaller Gram matrix: right vectors of Xᵀ are the left ones of X
        V, S, U, ok = krylov_top_r(X.transpose(1, 2), r, tol=tol, block=block, first_check=first_check)
        return U, S, V, ok
    b = min(block or r + 4, n)
    cap = max(3 * n // 4, min(n, 64), b)  # largest basis worth building: beyond it a full SVD is as cheap
    U, S, V = X.new_zeros(L, m, r), X.new_zeros(L, r), X.new_zeros(L, n, r)
    ok = torch.zeros(L, dtype=torch.bool, device=X.device)
    idx = torch.arange(L, device=X.device)  # the matrices still iterating
    g = torch.Generator().manual_seed(START_SEED)
    start = torch.linalg.qr(torch.randn(n, b, generator=g, dtype=torch.float64))[0].to(X)  # (n, b)
    # buffers, filled block by block (only the filled part is ever read)
    Q = X.new_empty(L, n, cap + b)  # orthonormal basis blocks Q_1, Q_2, ...
    Y = X.new_empty(L, m, cap)  # Y = X Q
    T = X.new_empty(L, cap, cap)  # T = Yᵀ Y = Qᵀ XᵀX Q
    Q[:, :, :b] = start
    X_ = X
    tiny = torch.finfo(X.dtype).tiny
    d, next_check, last = 0, min(max(first_check, b), cap), None
    while True:
        Yj = torch.bmm(X_, Q[:, :, d:d + b])  # (L', m, b)
        Y[:, :, d:d + b] = Yj
        col = Y[:, :, :d + b].transpose(1, 2) @ Yj  # (L', d + b, b) = Qᵀ M Q_j: T's new columns
        T[:, :d + b, d:d + b] = col
        T[:, d:d + b, :d] = col[:, :d].transpose(1, 2)
        Z = torch.bmm(Yj.transpose(1, 2), X_).transpose(1, 2)  # (L', n, b) = M Q_j, as (Yjᵀ X)ᵀ: no Xᵀ copy
        lo = max(d - b, 0)  # block Lanczos: M Q_j lies in span(Q_{j-1}, Q_j, Q_{j+1}) in exact arithmetic
        Z = Z - Q[:, :, lo:d + b] @ col[:, lo:]
        Qa = Q[:, :, :d + b]
        Z = Z - Qa @ (Qa.transpose(1, 2) @ Z)  # full reorthogonalisation against every block
        Qn, R = torch.linalg.qr(Z)  # (L', n, b), (L', b, b)
        Q[:, :, d + b:d + 2 * b] = Qn
        d += b
        # breakdown (the basis spans an invariant subspace, e.g. rank(X) < d): Qn is arbitrary,
        # so the Ritz pairs must be read now; converged or not, such a matrix stops here
        broken = R.diagonal(dim1=1, dim2=2).abs().amin(-1) <= 1e-13 * T.diagonal(dim1=1, dim2=2)[:, :d].amax(-1)
        if d < next_check and d + b <= cap and not broken.any():
            continue
        theta, Sr = torch.linalg.eigh(T[:, :d, :d])  # ascending
        theta, Sr = theta.flip(-1)[:, :r], Sr.flip(-1)[:, :, :r]  # (L', r), (L', d, r)
        res = torch.linalg.norm(R @ Sr[:, d - b:d], dim=1)  # (L', r) Ritz residuals
        rho = (res / theta.clamp_min(tiny)).amax(-1)  # (L',)
        done = rho <= tol
        stop = done | broken
        if stop.any() or d + b > cap:
            keep = idx[done]
            sig = theta[done].clamp_min(0).sqrt()  # (l, r)
            V[keep] = Q[done, :, :d] @ Sr[done]
            U[keep] = (Y[done, :, :d] @ Sr[done]) / sig.clamp_min(tiny)[:, None, :]
            S[keep] = sig
            ok[keep] = True
            if d + b > cap or stop.all():
                return U, S, V, ok
            live = ~stop
            idx, X_, Q, Y, T, rho = idx[live], X_[live], Q[live], Y[live], T[live], rho[live]
        worst = float(rho.max())
        step = 2 * b  # the first two checks measure the decay rate
        if last is not None and 0 < worst < last[1]:  # geometric decay: extrapolate the depth needed
            rate = math.log(worst / last[1]) / (d - last[0])  # log-decay per basis column, < 0
            step = max(b, min(8 * b, math.ceil(math.log(tol / worst) / rate)))
        last = (d, worst)
        next_check = min(d + step, cap)


def lanczos_top_r(W, r):
    """Top-r singular triplets of one float64 CPU matrix W (m, n) by ARPACK, or None if it fails.

    Implicitly restarted Lanczos (scipy `eigsh`, residual tolerance 1e-10) on the smaller Gram
    matrix G = XᵀX, X = W or Wᵀ (whichever is tall): V_r = top eigenvectors of G,
    S_r = sqrt(eigenvalues), U_r = X V_r / S_r. None for a (near) rank-deficient W or when
    ARPACK gives up (e.g. W = 0): the caller then takes the exact SVD.
    """
    import numpy as np
    from scipy.sparse.linalg import ArpackError, eigsh

    m, n = W.shape
    tall = m >= n
    X = W if tall else W.T  # (m', k) with m' >= k
    k = X.shape[1]
    G = (X.T @ X).numpy()  # (k, k), symmetric positive semi-definite
    v0 = np.ones(k) / math.sqrt(k)  # deterministic start vector: same factors on every call
    try:
        lam, V = eigsh(G, k=r, which="LA", tol=1e-10, ncv=min(k, max(2 * r + 1, 48)), v0=v0)
    except ArpackError:
        return None
    V = torch.from_numpy(np.ascontiguousarray(V))  # (k, r)
    S = torch.from_numpy(lam).clamp_min(0).sqrt()  # (r,)
    if S.min() <= 1e-6 * S.max():  # (near) rank-deficient: U = X V / S is unstable
        return None
    U = (X @ V) / S  # (m', r)
    return (U, S, V) if tall else (V, S, U)

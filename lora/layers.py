"""The adapter itself: a `torch.nn.utils.parametrize` parametrization of `Linear.weight`.

    W_eff = W + s·(B − B0)·A        A: (r, in), B: (out, r), s = alpha / r

B0 is the initial B for residual inits (`pissa`, `milora`), so W_eff = W at init
(the same as PiSSA's base weight W − s·B0·A plus s·B·A), and zero otherwise. The
pretrained W itself is never modified: `remove_lora` gives it back bit for bit.

Reading `layer.weight` gives W_eff, as in minLoRA. The layer's own forward does something
cheaper (the *fast path*, `adapted_linear_forward`, installed on each adapted nn.Linear):
it computes with the base W and adds the low-rank term,

    y = x Wᵀ + b + s·((x Aᵀ)(B − B0)ᵀ)

so W_eff (out × in) is never built and the full weight gradient is never computed. With A
(and W) frozen the whole layer is one autograd Function, `LoRAFALinear`: it keeps only
x Aᵀ (N × r) for the adapter, never x (N × in), which is what makes LoRA-FA save memory;
its GEMMs use a transient W_eff (out × in, rebuilt, never saved), so the adapter adds only
two thin passes (x Aᵀ and gᵀ h) to the frozen layer's cost.
`lora.set_fast_path(model, False)` switches to the plain parametrization (W_eff
materialised), e.g. to compare the two.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .inits import RESIDUAL_INITS, init_factors


class LoRAParametrization(nn.Module):
    """LoRA on a weight of shape (out, in): W ↦ W + s·(B − B0)·A, A and B trained."""

    freeze_a = False

    def __init__(self, A, B, *, alpha, init="custom", dropout=0.0, residual=False):
        super().__init__()
        r = A.shape[0]
        assert A.dim() == 2 and B.dim() == 2 and B.shape[1] == r, (A.shape, B.shape)
        self.lora_A = nn.Parameter(A, requires_grad=not self.freeze_a)  # (r, in)
        self.lora_B = nn.Parameter(B)  # (out, r)
        # B0: the initial B (out, r). Residual inits subtract it so that W_eff = W at init; the
        # B-drift regularizer and PEFT export use it too. Saved with the adapter, so a reload
        # never depends on recomputing an SVD (whose singular vectors are only defined up to sign).
        self.register_buffer("lora_B0", B.detach().clone())
        self.rank = r
        self.alpha = float(alpha)
        self.scaling = self.alpha / r
        self.init = init
        self.residual = bool(residual)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True  # False: the layer computes with its base weight
        self.fast = True  # the layer's forward uses W and the low-rank term, not W_eff

    # -- the math ---------------------------------------------------------------------------
    def delta_B(self):
        """The factor D in W_eff − W = s·D·A (out, r): B − B0 for residual inits, else B.

        Disabled, the layer computes with its base weight: W (D = 0) or, for residual
        inits, W − s·B0·A (D = −B0)."""
        if self.enabled:
            return self.lora_B - self.lora_B0 if self.residual else self.lora_B
        return -self.lora_B0 if self.residual else torch.zeros_like(self.lora_B0)

    def delta_weight(self):
        """W_eff − W = s·D·A as a dense (out, in) matrix (for merging and inspection)."""
        return self.scaling * (self.delta_B() @ self.lora_A)  # (out, in)

    def forward(self, W):
        if not self.enabled and not self.residual:
            return W
        A = self.lora_A
        if self.training and isinstance(self.dropout, nn.Dropout):
            # A materialised weight cannot drop per token: drop input features for the whole
            # batch instead (minLoRA's choice). The fast path drops per token, like PEFT.
            A = A * self.dropout(torch.ones_like(A[:1]))  # (r, in)
        return W + (self.scaling * (self.delta_B() @ A)).to(W.dtype)

    def lowrank(self, x):
        """s·(dropout(x) Aᵀ) Dᵀ for an input x (..., in): the adapter's share of the output."""
        h = F.linear(self.dropout(x), self.lora_A.to(x.dtype))  # (..., r)
        return F.linear(h, self.delta_B().to(x.dtype)) * self.scaling  # (..., out)

    @classmethod
    def from_linear(cls, layer, rank=4, alpha=None, init="random", dropout=0.0, generator=None,
                    svd_method="auto", *, stat=None, factors=None):
        """minLoRA-style constructor for users who register the parametrization themselves:

            parametrize.register_parametrization(layer, "weight", LoRAFAParametrization.from_linear(layer))

        (That gives the plain parametrization; `lora.add_lora` also installs the fast path.)
        stat: the layer's calibration statistic for init="eva"/"grad" (`lora.calibrate`);
        factors: precomputed top-r singular triplets (see `lora.inits.init_factors`).
        """
        W = layer.weight.detach()  # (out, in)
        if alpha is None:
            alpha = 1.0 if init == "seed" else rank  # seed: the original project's alpha = 1
        alpha = float(alpha)
        A, B = init_factors(init, W, rank, alpha / rank, generator=generator, svd_method=svd_method,
                            stat=stat, factors=factors)
        return cls(A.to(W), B.to(W), alpha=alpha, init=init, dropout=dropout, residual=init in RESIDUAL_INITS)

    def extra_repr(self):
        return (f"rank={self.rank}, alpha={self.alpha:g}, init={self.init!r}, "
                f"freeze_a={self.freeze_a}, residual={self.residual}, enabled={self.enabled}")


class LoRAFAParametrization(LoRAParametrization):
    """LoRA-FA: the same parametrization with A frozen (requires_grad=False); only B trains."""

    freeze_a = True


class LoRAFALinear(torch.autograd.Function):
    """y = x Wᵀ + b + s·(x_d Aᵀ) Dᵀ for frozen W and A, with the backward written out.

    Shapes: x, x_d (..., in) (x_d = dropout(x), or x itself), W (out, in), b (out,) or None,
    A (r, in), D (out, r); N = the product of the leading dims. Saved for backward:
    h = x_d Aᵀ (N, r), W, A and D, never x and never an (out, in) W_eff. With g = dL/dy (N, out):
        dL/dx = g W_eff = g (W + s·D A) when x_d is x, else g W and dL/dx_d = s·(g D) A,
        dL/dD = s·gᵀ h (out, r),   dL/db = Σ_N g.
    Without dropout both GEMMs use W_eff, rebuilt in forward and backward (out × in, cheap next
    to the N × in / N × out passes a separate low-rank term would add).
    Computed in the autocast dtype if autocast is on (as F.linear would), else in x's dtype,
    with autocast off inside, so the backward sees the forward's dtypes.
    """

    @staticmethod
    def forward(ctx, x, xd, W, b, A, D, s):
        dev = x.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        same = xd is x
        with torch.autocast(dev, enabled=False):
            W_, A_, D_ = W.to(dt), A.to(dt), D.to(dt)  # (out, in), (r, in), (out, r)
            x2 = x.reshape(-1, x.shape[-1]).to(dt)  # (N, in)
            # without dropout, one GEMM with the transient W_eff = W + s·D·A (out, in): cheaper
            # than a rank-r update of the (N, out) output; W_eff is not kept for backward
            M = torch.addmm(W_, D_, A_, alpha=s) if same else W_  # (out, in)
            y = x2 @ M.T if b is None else torch.addmm(b.to(dt), x2, M.T)  # (N, out)
            h = (x2 if same else xd.reshape(-1, xd.shape[-1]).to(dt)) @ A_.T  # (N, r)
            if not same:
                y.addmm_(h, D_.T, alpha=s)
        ctx.save_for_backward(h, W_, A_, D_)
        ctx.same, ctx.s = same, s
        ctx.x_meta, ctx.xd_meta = (x.shape, x.dtype), (xd.shape, xd.dtype)
        ctx.b_dtype, ctx.D_dtype = (None if b is None else b.dtype), D.dtype
        return y.view(*x.shape[:-1], W.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        h, W, A, D = ctx.saved_tensors
        need = ctx.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1]).to(h.dtype)  # (N, out)
        gx = gxd = gb = gD = None
        if need[0]:  # without dropout: g·W_eff, W_eff rebuilt (out, in), one GEMM
            gx = g2 @ (torch.addmm(W, D, A, alpha=ctx.s) if ctx.same else W)  # (N, in)
            gx = gx.to(ctx.x_meta[1]).view(ctx.x_meta[0])
        if need[1] and not ctx.same:
            gxd = ((g2 @ D) @ A).mul_(ctx.s).to(ctx.xd_meta[1]).view(ctx.xd_meta[0])  # (..., in)
        if need[3]:
            gb = g2.sum(0).to(ctx.b_dtype)  # (out,)
        if need[5]:
            gD = (g2.T @ h).mul_(ctx.s).to(ctx.D_dtype)  # (out, r)
        return gx, gxd, None, gb, None, gD, None


# -- fast path: the adapted nn.Linear's forward --------------------------------------------------
def _adapter(module):
    return module.parametrizations.weight[0]


def adapted_linear_forward(self, x):
    """forward of an adapted nn.Linear (bound to the instance by `lora.add_lora`).

    Plain path (`fast` off): F.linear with `self.weight`, i.e. W_eff. Fast path: the base W
    plus the low-rank term; with W and A frozen, through `LoRAFALinear`."""
    p = _adapter(self)
    if not p.fast:
        return F.linear(x, self.weight, self.bias)
    W = self.parametrizations.weight.original  # (out, in)
    if not p.enabled and not p.residual:
        return F.linear(x, W, self.bias)
    if p.lora_A.requires_grad or W.requires_grad:  # plain LoRA (or W unfrozen): autograd does it
        return F.linear(x, W, self.bias) + p.lowrank(x)
    xd = p.dropout(x) if p.training and isinstance(p.dropout, nn.Dropout) else x
    return LoRAFALinear.apply(x, xd, W, self.bias, p.lora_A, p.delta_B(), p.scaling)

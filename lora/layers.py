"""The adapter itself: a `torch.nn.utils.parametrize` parametrization of a layer's weight.

    W_eff = W + s·ΔB·A        A: (r, in), B: (out, r), s = scaling = lora_alpha / r
                              (rsLoRA, `use_rslora=True`: s = lora_alpha / √r)

W is the (out, in) matrix: `nn.Linear.weight` itself, or the transpose of a transformers
`Conv1D.weight` (stored in × out; `fan_in_fan_out=True`, whose parametrization adds (s·ΔB·A)ᵀ).

ΔB = B − B0 for residual inits (`pissa`, `milora`), where B0 is the initial B, so that W_eff = W
at init (the same as PiSSA's base weight W − s·B0·A plus s·B·A); ΔB = B for every other init.
The pretrained W itself is never modified: `remove_lora` gives it back bit for bit.

Reading `layer.weight` gives W_eff, as in minLoRA. The layer's own forward does something
cheaper (the *fast path*, `adapted_linear_forward`, installed on each adapted nn.Linear):
it computes with the base W and adds the low-rank term,

    y = x Wᵀ + b + s·((x Aᵀ) ΔBᵀ)

so W_eff (out × in) is never built and the full weight gradient is never computed. With A
(and W) frozen the whole layer is one autograd Function, `LoRAFALinear`: it keeps only
x Aᵀ (N × r) for the adapter, never x (N × in), which is what makes LoRA-FA save memory;
for many rows (N) its GEMMs use a transient W_eff (out × in, rebuilt, never saved), for few
rows (an LLM's short batch against wide layers) it adds the rank-r term separately instead:
`merge_is_cheaper` decides per call from the shapes alone.
`lora.set_fast_path(model, False)` switches to the plain parametrization (W_eff
materialised), e.g. to compare the two; `merge="always"/"never"` fixes the route.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .inits import RESIDUAL_INITS, init_factors
from .targets import is_fan_in_fan_out, weight_oi


def scaling_of(lora_alpha, r, use_rslora=False):
    """s = lora_alpha / r (LoRA), or lora_alpha / √r (rsLoRA, Kalajdzievski 2023: keeps the
    update's scale stable as r grows)."""
    return lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r


class LoRAParametrization(nn.Module):
    """LoRA on a weight of shape (out, in): W ↦ W + s·ΔB·A, A and B trained."""

    freeze_a = False

    def __init__(self, A, B, *, lora_alpha, init="custom", lora_dropout=0.0, residual=False, use_rslora=False,
                 fan_in_fan_out=False):
        super().__init__()
        r = A.shape[0]
        assert A.dim() == 2 and B.dim() == 2 and B.shape[1] == r, (A.shape, B.shape)
        self.lora_A = nn.Parameter(A, requires_grad=not self.freeze_a)  # (r, in)
        self.lora_B = nn.Parameter(B)  # (out, r)
        # B0: the initial B (out, r). Residual inits subtract it so that W_eff = W at init; the
        # B-drift regularizer and PEFT export use it too. Saved with the adapter, so a reload
        # never depends on recomputing an SVD (whose singular vectors are only defined up to sign).
        self.register_buffer("lora_B0", B.detach().clone())
        self.r = r
        self.lora_alpha = float(lora_alpha)
        self.use_rslora = bool(use_rslora)
        self.scaling = scaling_of(self.lora_alpha, r, self.use_rslora)  # s
        self.fan_in_fan_out = bool(fan_in_fan_out)  # the weight is stored (in, out), as Conv1D's
        self.init = init
        self.residual = bool(residual)
        self.lora_dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        self.enabled = True  # False: the layer computes with its base weight
        self.fast = True  # the layer's forward uses W and the low-rank term, not W_eff
        self.merge = "auto"  # LoRA-FA's fast path: W_eff GEMM or separate rank-r term (`MERGE_MODES`)

    # -- the math ---------------------------------------------------------------------------
    def delta_B(self):
        """ΔB (out, r), the factor in W_eff − W = s·ΔB·A: B − B0 for residual inits, else B.

        Disabled, the layer computes with its base weight: W (ΔB = 0) or, for residual
        inits, W − s·B0·A (ΔB = −B0)."""
        if self.enabled:
            return self.lora_B - self.lora_B0 if self.residual else self.lora_B
        return -self.lora_B0 if self.residual else torch.zeros_like(self.lora_B0)

    def delta_weight(self):
        """W_eff − W = s·ΔB·A as a dense (out, in) matrix (for merging and inspection)."""
        return self.scaling * (self.delta_B() @ self.lora_A)  # (out, in)

    def stored(self, M):
        """An (out, in) matrix `M` in the layout of the layer's weight ((in, out) for Conv1D)."""
        return M.T if self.fan_in_fan_out else M

    def forward(self, W):
        if not self.enabled and not self.residual:
            return W
        A = self.lora_A
        if self.training and isinstance(self.lora_dropout, nn.Dropout):
            # A materialised weight cannot drop per token: drop input features for the whole
            # batch instead (minLoRA's choice). The fast path drops per token, like PEFT.
            A = A * self.lora_dropout(torch.ones_like(A[:1]))  # (r, in)
        return W + self.stored(self.scaling * (self.delta_B() @ A)).to(W.dtype)

    def lowrank(self, x):
        """s·(dropout(x) Aᵀ) ΔBᵀ for an input x (..., in): the adapter's share of the output."""
        h = F.linear(self.lora_dropout(x), self.lora_A.to(x.dtype))  # (..., r)
        return F.linear(h, self.delta_B().to(x.dtype)) * self.scaling  # (..., out)

    @classmethod
    def from_linear(cls, layer, r=4, lora_alpha=None, init="random", lora_dropout=0.0, generator=None,
                    svd_method="auto", *, stat=None, factors=None, use_rslora=False):
        """minLoRA-style constructor (for an nn.Linear or a transformers Conv1D `layer`) for users who
        register the parametrization themselves:

            parametrize.register_parametrization(layer, "weight", LoRAFAParametrization.from_linear(layer))

        (That gives the plain parametrization; `lora.add_lora` also installs the fast path.)
        stat: the layer's calibration statistic for init="eva"/"grad" (`lora.calibrate`);
        factors: precomputed top-r singular triplets (see `lora.inits.init_factors`).
        """
        W = weight_oi(layer).detach()  # (out, in)
        if lora_alpha is None:
            lora_alpha = 1.0 if init == "seed" else r  # seed: the original project's lora_alpha = 1
        lora_alpha = float(lora_alpha)
        A, B = init_factors(init, W, r=r, scaling=scaling_of(lora_alpha, r, use_rslora), generator=generator,
                            svd_method=svd_method, stat=stat, factors=factors)
        return cls(A.to(W), B.to(W), lora_alpha=lora_alpha, init=init, lora_dropout=lora_dropout,
                   residual=init in RESIDUAL_INITS, use_rslora=use_rslora, fan_in_fan_out=is_fan_in_fan_out(layer))

    def extra_repr(self):
        return (f"r={self.r}, lora_alpha={self.lora_alpha:g}, init={self.init!r}, "
                f"freeze_a={self.freeze_a}, residual={self.residual}, use_rslora={self.use_rslora}, "
                f"fan_in_fan_out={self.fan_in_fan_out}, enabled={self.enabled}")


class LoRAFAParametrization(LoRAParametrization):
    """LoRA-FA: the same parametrization with A frozen (requires_grad=False); only B trains."""

    freeze_a = True


MERGE_MODES = ("auto", "always", "never")


def merge_is_cheaper(n, in_features, out_features):
    """Whether LoRAFALinear should use one GEMM with a transient W_eff = W + s·ΔB·A for N = `n` rows.

    Per forward + backward, merging builds W_eff twice: 2 · 2·r·in·out flops (and two (out, in)
    passes); the separate rank-r term costs h ΔBᵀ, g ΔB and (g ΔB) A: 2·N·r·(2·out + in) flops.
    Merge when N ≥ 2·in·out / (in + 2·out). Measured on a 2-core CPU (`bench/fused_layer.py`), this
    threshold sits where the two routes cross, within the timing noise."""
    return n * (in_features + 2 * out_features) >= 2 * in_features * out_features


class LoRAFALinear(torch.autograd.Function):
    """y = x Wᵀ + b + s·(x_d Aᵀ) ΔBᵀ for frozen W and A, with the backward written out.

    Shapes: x, x_d (..., in) (x_d = dropout(x), or None for x itself), W (out, in), b (out,) or None,
    A (r, in), ΔB (out, r) (`delta_B`), s = `scaling`; N = the product of the leading dims. Saved
    for backward: h = x_d Aᵀ (N, r), W, A and ΔB, never x and never an (out, in) W_eff. With
    g = dL/dy (N, out):
        dL/dx = g W_eff = g W + s·(g ΔB) A when x_d is x, else g W and dL/dx_d = s·(g ΔB) A,
        dL/dΔB = s·gᵀ h (out, r),   dL/db = Σ_N g.
    `merge` (only without dropout): both GEMMs use W_eff, rebuilt in forward and backward, instead
    of adding the rank-r terms separately (`merge_is_cheaper` says which is faster for the shapes).
    Computed in the autocast dtype if autocast is on (as F.linear would), else in x's dtype,
    with autocast off inside, so the backward sees the forward's dtypes.
    """

    @staticmethod
    def forward(ctx, x, xd, W, b, A, delta_B, scaling, merge):
        dev = x.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        same = xd is None  # no dropout: x_d is x (passed as None: autograd.Function inputs must be distinct)
        merge = merge and same
        with torch.autocast(dev, enabled=False):
            W_, A_, dB_ = W.to(dt), A.to(dt), delta_B.to(dt)  # (out, in), (r, in), (out, r)
            x2 = x.reshape(-1, x.shape[-1]).to(dt)  # (N, in)
            # merged: one GEMM with the transient W_eff = W + s·ΔB·A (out, in), not kept for backward
            M = torch.addmm(W_, dB_, A_, alpha=scaling) if merge else W_  # (out, in)
            y = x2 @ M.T if b is None else torch.addmm(b.to(dt), x2, M.T)  # (N, out)
            h = (x2 if same else xd.reshape(-1, xd.shape[-1]).to(dt)) @ A_.T  # (N, r)
            if not merge:
                y.addmm_(h, dB_.T, alpha=scaling)
        ctx.save_for_backward(h, W_, A_, dB_)
        ctx.same, ctx.merge, ctx.scaling = same, merge, scaling
        ctx.x_meta = (x.shape, x.dtype)
        ctx.b_dtype, ctx.dB_dtype = (None if b is None else b.dtype), delta_B.dtype
        return y.view(*x.shape[:-1], W.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        h, W, A, dB = ctx.saved_tensors
        need = ctx.needs_input_grad
        g2 = g.reshape(-1, g.shape[-1]).to(h.dtype)  # (N, out)
        gx = gxd = gb = g_dB = None
        if need[0]:  # without dropout: g·W_eff, merged (W_eff rebuilt, one GEMM) or g W + s·(g ΔB) A
            gx = g2 @ (torch.addmm(W, dB, A, alpha=ctx.scaling) if ctx.merge else W)  # (N, in)
            if ctx.same and not ctx.merge:
                gx.addmm_(g2 @ dB, A, alpha=ctx.scaling)
            gx = gx.to(ctx.x_meta[1]).view(ctx.x_meta[0])
        if need[1] and not ctx.same:  # x_d has x's shape and dtype
            gxd = ((g2 @ dB) @ A).mul_(ctx.scaling).to(ctx.x_meta[1]).view(ctx.x_meta[0])  # (..., in)
        if need[3]:
            gb = g2.sum(0).to(ctx.b_dtype)  # (out,)
        if need[5]:
            g_dB = (g2.T @ h).mul_(ctx.scaling).to(ctx.dB_dtype)  # (out, r)
        return gx, gxd, None, gb, None, g_dB, None, None


# -- fast path: the adapted nn.Linear's forward --------------------------------------------------
def _adapter(module):
    return module.parametrizations.weight[0]


def adapted_linear_forward(self, x):
    """forward of an adapted nn.Linear or Conv1D (bound to the instance by `lora.add_lora`).

    Plain path (`fast` off): the layer class's own forward, which reads `self.weight`, i.e. W_eff.
    Fast path: the base W (as (out, in)) plus the low-rank term; with W and A frozen, through
    `LoRAFALinear`."""
    p = _adapter(self)
    if not p.fast:
        return type(self).forward(self, x)
    W = p.stored(self.parametrizations.weight.original)  # (out, in)
    if not p.enabled and not p.residual:
        return F.linear(x, W, self.bias)
    if p.lora_A.requires_grad or W.requires_grad:  # plain LoRA (or W unfrozen): autograd does it
        return F.linear(x, W, self.bias) + p.lowrank(x)
    xd = p.lora_dropout(x) if p.training and isinstance(p.lora_dropout, nn.Dropout) else None
    merge = p.merge == "always" or p.merge == "auto" and merge_is_cheaper(x.numel() // x.shape[-1], *W.shape[::-1])
    return LoRAFALinear.apply(x, xd, W, self.bias, p.lora_A, p.delta_B(), p.scaling, merge)

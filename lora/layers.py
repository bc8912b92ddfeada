"""The adapter itself: a `torch.nn.utils.parametrize` parametrization of `Linear.weight`.

    W_eff = W + s·(B − B0)·A        A: (r, in), B: (out, r), s = alpha / r

B0 is the initial B for residual inits (`pissa`, `milora`), so W_eff = W at init
(the same as PiSSA's base weight W − s·B0·A plus s·B·A), and zero otherwise. The
pretrained W itself is never modified: `remove_lora` gives it back bit for bit.

Reading `layer.weight` gives W_eff, as in minLoRA. Inside the layer's forward the
parametrization does something cheaper (the *fast path*): the weight it hands to
F.linear is the base W, and a forward hook adds the low-rank term

    y = x Wᵀ + b + s·((x Aᵀ)(B − B0)ᵀ)

so W_eff (out × in) is never built, the full weight gradient is never computed,
and with A frozen only x Aᵀ (N × r) is kept for the adapter, not x (N × in): this is
what makes LoRA-FA save memory. With A frozen the term is one autograd Function
(`LowRankAddFA`: one addmm into the layer output, the backward written out by hand),
cheaper than the same math as separate autograd ops (bench/step.py measures it). `lora.set_fast_path(model, False)` switches
back to the plain parametrization (W_eff materialised), e.g. to compare the two.
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
        self.fast = True  # use the low-rank forward inside the layer's forward
        self._bypass = False  # set by the pre-hook while the fast path runs

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
        if self._bypass:  # inside the layer's forward: the hook adds the low-rank term
            return W
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

    def add_lowrank(self, out, x):
        """out + lowrank(x); with A frozen, through the fused LowRankAddFA."""
        if self.lora_A.requires_grad:
            return out + self.lowrank(x)
        return LowRankAddFA.apply(out, self.dropout(x), self.lora_A, self.delta_B(), self.scaling)

    @classmethod
    def from_linear(cls, layer, rank=4, alpha=None, init="random", dropout=0.0, generator=None,
                    svd_method="auto"):
        """minLoRA-style constructor for users who register the parametrization themselves:

            parametrize.register_parametrization(layer, "weight", LoRAFAParametrization.from_linear(layer))

        (That gives the plain parametrization; `lora.add_lora` also installs the fast path.)
        """
        W = layer.weight.detach()  # (out, in)
        if alpha is None:
            alpha = 1.0 if init == "seed" else rank  # seed: the original project's alpha = 1
        alpha = float(alpha)
        A, B = init_factors(init, W, rank, alpha / rank, generator=generator, svd_method=svd_method)
        return cls(A.to(W), B.to(W), alpha=alpha, init=init, dropout=dropout, residual=init in RESIDUAL_INITS)

    def extra_repr(self):
        return (f"rank={self.rank}, alpha={self.alpha:g}, init={self.init!r}, "
                f"freeze_a={self.freeze_a}, residual={self.residual}, enabled={self.enabled}")


class LoRAFAParametrization(LoRAParametrization):
    """LoRA-FA: the same parametrization with A frozen (requires_grad=False); only B trains."""

    freeze_a = True


class LowRankAddFA(torch.autograd.Function):
    """y = out + s·(x Aᵀ) Dᵀ for a frozen A, as one addmm; backward by hand.

    Shapes: x (..., in), out (..., n_out), A (r, in), D (n_out, r); N = the product of the
    leading dims. Saved for backward: h = x Aᵀ (N, r), A and D; never x. With g = dL/dy (N, n_out):
        dL/dout = g,    dL/dD = s·gᵀ h  (n_out, r),    dL/dx = s·(g D) A  (N, in).
    Computed in out's dtype (bf16 under autocast), autocast off inside, so forward and
    backward see the same dtypes; gradients are returned in the inputs' dtypes.
    """

    @staticmethod
    def forward(ctx, out, x, A, D, s):
        dt = out.dtype
        with torch.autocast(out.device.type, enabled=False):
            A_, D_ = A.to(dt), D.to(dt)  # (r, in), (n_out, r)
            h = x.reshape(-1, x.shape[-1]).to(dt) @ A_.T  # (N, r)
            y = torch.addmm(out.reshape(-1, out.shape[-1]), h, D_.T, alpha=s)  # (N, n_out)
        ctx.save_for_backward(h, A_, D_)
        ctx.s, ctx.x_shape, ctx.x_dtype, ctx.D_dtype = s, x.shape, x.dtype, D.dtype
        return y.view(out.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        h, A, D = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1]).to(h.dtype)  # (N, n_out)
        gx = gD = None
        if ctx.needs_input_grad[1]:
            gx = ((g2 @ D) @ A).mul_(ctx.s).to(ctx.x_dtype).view(ctx.x_shape)  # (..., in)
        if ctx.needs_input_grad[3]:
            gD = (g2.T @ h).mul_(ctx.s).to(ctx.D_dtype)  # (n_out, r)
        return (g if ctx.needs_input_grad[0] else None), gx, None, gD, None


# -- fast path: forward hooks on the parametrized Linear ----------------------------------------
def _adapter(module):
    return module.parametrizations.weight[0]


def fast_path_pre_hook(module, args):
    """Before Linear.forward: hand F.linear the base weight when the fast path applies."""
    p = _adapter(module)
    p._bypass = p.fast and (p.enabled or p.residual)


def fast_path_hook(module, args, output):
    """After Linear.forward: add the low-rank term if the pre-hook bypassed the weight."""
    p = _adapter(module)
    if not p._bypass:
        return output
    p._bypass = False
    if output is None:  # the forward raised; this hook runs anyway (always_call) to reset
        return None
    return p.add_lowrank(output, args[0])

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
and with A frozen autograd keeps only x Aᵀ (N × r) for the adapter, not x (N × in).
This is what makes LoRA-FA save memory. `lora.set_fast_path(model, False)` switches
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
    return output + p.lowrank(args[0])

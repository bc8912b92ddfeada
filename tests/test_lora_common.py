"""Shared helpers for the tests/test_lora_*.py files (plus checks of the helpers themselves).

Everything here is built locally (no hub access): tiny random BERT/RoBERTa configs, linear
layers with a prescribed spectrum, and float64 references for the rank-r SVD truncations.
"""
import copy

import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoModelForSequenceClassification

import lora
from tests.tiny import VOCAB, tiny_config

# every square 32x32 Linear of a tiny BERT/RoBERTa layer
ATTN = ["query", "key", "value", "attention.output.dense"]
# every nn.Linear in the encoder layers (6 per layer; "output.dense" matches both output denses;
# the 37x32 / 32x37 MLP weights are non-square)
ENCODER = ["query", "key", "value", "output.dense", "intermediate.dense"]
INITS = ("random", "svd", "pissa", "milora", "seed")


def tiny_model(arch="bert", head=True, seed=0, dropout=0.0, dtype=None):
    """A tiny random BertForSequenceClassification / RobertaForSequenceClassification (or bare encoder)."""
    torch.manual_seed(seed)
    cls = AutoModelForSequenceClassification if head else AutoModel
    model = cls.from_config(tiny_config(arch, num_labels=3, dropout=dropout))
    if dtype is not None:
        model = model.to(dtype)
    return model


def clone_model(model):
    return copy.deepcopy(model)


def token_ids(batch=3, seq=9, seed=1, low=3):
    return torch.randint(low, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def hidden(model, ids):
    """Last hidden state (order-1 values, more sensitive than a tiny random head's logits)."""
    return model(input_ids=ids, output_hidden_states=True).hidden_states[-1]


def orthogonal(n, k, generator, dtype=torch.float64):
    """n x k matrix with orthonormal columns (QR of a Gaussian)."""
    Q, R = torch.linalg.qr(torch.randn(n, k, generator=generator, dtype=dtype))
    return Q * torch.sign(torch.diagonal(R))


def spectral_matrix(out_f, in_f, seed=0, decay=0.75, top=3.0):
    """float64 W = U diag(s) Vᵀ with random orthogonal factors and s_i = top·decay^i (distinct, gapped)."""
    g = torch.Generator().manual_seed(seed)
    k = min(out_f, in_f)
    s = top * decay ** torch.arange(k, dtype=torch.float64)
    return orthogonal(out_f, k, g) @ torch.diag(s) @ orthogonal(in_f, k, g).T, s


def linear_with(W, bias_seed=0, dtype=torch.float64):
    """nn.Linear whose weight is W (cast to dtype) and a random bias."""
    out_f, in_f = W.shape
    lin = nn.Linear(in_f, out_f, dtype=dtype)
    g = torch.Generator().manual_seed(bias_seed)
    with torch.no_grad():
        lin.weight.copy_(W.to(dtype))
        lin.bias.copy_(torch.randn(out_f, generator=g, dtype=torch.float64).to(dtype))
    return lin


def svd64(W):
    """float64 full SVD of W (any dtype)."""
    return torch.linalg.svd(W.detach().to(torch.float64), full_matrices=False)


def truncation(W, r, largest=True):
    """float64 best rank-r (largest) or bottom-r (smallest) approximation of W."""
    U, S, Vh = svd64(W)
    k = S.numel()
    idx = slice(0, r) if largest else slice(k - r, k)
    return U[:, idx] @ torch.diag(S[idx]) @ Vh[idx]


def rel(a, b):
    """Relative Frobenius error ‖a − b‖ / ‖b‖ in float64."""
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm()).item()


def adapter(module):
    return module.parametrizations.weight[0]


def base_weight(module):
    return module.parametrizations.weight.original


def product(p):
    """s·B·A of an adapter in float64 (B: current lora_B)."""
    return p.scaling * (p.lora_B.detach().double() @ p.lora_A.detach().double())


def init_product(p):
    """s·B0·A in float64."""
    return p.scaling * (p.lora_B0.double() @ p.lora_A.detach().double())


def perturb_B(model, seed=5, scale=0.05):
    """Move every lora_B away from its init (as training would), reproducibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, _, p in lora.adapted_modules(model):
            p.lora_B.add_(scale * torch.randn(p.lora_B.shape, generator=g, dtype=torch.float64).to(p.lora_B))


def trained_tiny_model(r, targets, init="pissa"):
    """A tiny BERT with adapters on `targets`, its B moved off init as training would (`perturb_B`), and
    token ids to run it on: (model, ids)."""
    model = tiny_model()
    lora.add_lora(model, r=r, init=init, targets=targets)
    perturb_B(model)
    return model, token_ids()


def square_or_not(init):
    return (6, 6) if init == "seed" else (5, 7)  # seed only handles square weights


def adapted_linear(init, freeze_a=True, alpha=3.0, r=2, seed=0):
    """A float64 Linear with a prescribed spectrum, adapted with `init`, its bias trainable: (lin, W)."""
    out_f, in_f = square_or_not(init)
    W, _ = spectral_matrix(out_f, in_f, seed=seed)
    lin = linear_with(W)
    lora.add_lora(lin, r=r, lora_alpha=alpha, init=init, freeze_a=freeze_a,
                  generator=torch.Generator().manual_seed(seed))
    assert not lin.bias.requires_grad  # add_lora froze it (the base)
    lin.bias.requires_grad_(True)  # trained, to check its gradient too
    return lin, W


# -- checks of the helpers -------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (6, 6)])
def test_spectral_matrix_has_the_prescribed_singular_values(shape):
    W, s = spectral_matrix(*shape, seed=3)
    assert W.shape == shape
    torch.testing.assert_close(torch.linalg.svdvals(W), s, atol=1e-12, rtol=0)
    # truncation is the Eckart–Young optimum: error² = tail energy
    r = 2
    assert abs((W - truncation(W, r)).norm() ** 2 - (s[r:] ** 2).sum()) < 1e-12
    assert abs((W - truncation(W, r, largest=False)).norm() ** 2 - (s[:-r] ** 2).sum()) < 1e-12


def test_tiny_configs_have_the_requested_shapes():
    for arch in ("bert", "roberta"):
        m = tiny_model(arch)
        q = m.get_submodule(f"{arch}.encoder.layer.0.attention.self.query")
        inter = m.get_submodule(f"{arch}.encoder.layer.1.intermediate.dense")
        assert q.weight.shape == (32, 32) and inter.weight.shape == (37, 32)
        assert m.config.num_labels == 3

"""GPT-2: transformers Conv1D layers (weight stored in × out), its tied output head, rsLoRA.

The reference for every Conv1D result is the same model with each Conv1D replaced by the
nn.Linear it computes (weight Wᵀ), whose adapters the other test files check by hand: the
two must give the same factors, outputs, gradients and merged weights. PEFT (`fan_in_fan_out`)
is the reference for the export.
"""
import copy
import math

import pytest
import torch
from peft import PeftModel
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

import lora
from tests.test_lora_common import adapter, perturb_B, token_ids
from tests.tiny import VOCAB

pytestmark = pytest.mark.usefixtures("single_thread")

# n_inner 40: the MLP's Conv1D weights are 32 x 40 and 40 x 32; c_attn is 32 x 96 (in x out)
CONFIG = dict(n_embd=32, n_layer=2, n_head=4, n_inner=40, vocab_size=VOCAB, n_positions=32, bos_token_id=0,
              eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
CONV1D = [f"transformer.h.{i}.{s}" for i in range(2) for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**CONFIG)).double().eval()


def as_linear(model):
    """A copy of `model` with every Conv1D replaced by the nn.Linear it computes (weight Wᵀ, same bias)."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, Conv1D):
            lin = nn.Linear(*m.weight.shape, dtype=m.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(m.weight.T)
                lin.bias.copy_(m.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, lin)
    return model


def logits(model, ids=None):
    with torch.no_grad():
        return model(token_ids(seed=7) if ids is None else ids).logits


def test_targets_none_is_every_conv1d_but_the_tied_head():
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert lora.find_targets(model) == CONV1D
    assert lora.find_targets(model, ["c_attn"]) == CONV1D[::4]


@pytest.mark.parametrize("init", ["random", "svd", "pissa", "milora", "eva", "grad"])
def test_conv1d_adapter_is_the_nn_linear_adapter(init):
    conv = tiny_gpt2()
    lin = as_linear(conv)
    torch.testing.assert_close(logits(lin), logits(conv), atol=1e-12, rtol=0)
    batches = [{"input_ids": token_ids(seed=s), "labels": token_ids(seed=s)} for s in (1, 2)]
    data = {"data": batches} if init in lora.DATA_INITS else {}
    for m in (conv, lin):
        assert lora.add_lora(m, r=3, lora_alpha=6, init=init, generator=torch.Generator().manual_seed(0),
                             **data) == CONV1D
        perturb_B(m)
    for n in CONV1D:
        pc, pl = adapter(conv.get_submodule(n)), adapter(lin.get_submodule(n))
        assert pc.fan_in_fan_out and not pl.fan_in_fan_out
        for k in ("lora_A", "lora_B", "lora_B0"):
            torch.testing.assert_close(getattr(pc, k), getattr(pl, k), atol=1e-10, rtol=0)
        torch.testing.assert_close(conv.get_submodule(n).weight, lin.get_submodule(n).weight.T, atol=1e-12, rtol=0)
    for fast in (True, False):
        lora.set_fast_path(conv, fast)
        torch.testing.assert_close(logits(conv), logits(lin), atol=1e-10, rtol=0)
    ids = token_ids(seed=3)
    for m in (conv, lin):
        m(ids, labels=ids).loss.backward()
    for n in CONV1D:
        g_conv, g_lin = (adapter(m.get_submodule(n)).lora_B.grad for m in (conv, lin))
        assert g_conv.abs().max() > 0
        torch.testing.assert_close(g_conv, g_lin, atol=1e-10, rtol=0)

    original = {n: t.clone() for n, t in tiny_gpt2().state_dict().items()}
    removed = copy.deepcopy(conv)
    lora.remove_lora(removed)
    assert all(torch.equal(t, original[n]) for n, t in removed.state_dict().items())
    expected = logits(lin)
    lora.merge_lora(conv)
    lora.merge_lora(lin)
    for n in CONV1D:
        torch.testing.assert_close(conv.get_submodule(n).weight, lin.get_submodule(n).weight.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(logits(conv), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_export_peft_gpt2_gives_the_same_logits(tmp_path, use_rslora):
    base = tiny_gpt2()
    model = copy.deepcopy(base)
    lora.add_lora(model, r=4, lora_alpha=8, init="pissa", use_rslora=use_rslora)
    assert adapter(model.get_submodule(CONV1D[0])).scaling == (8 / math.sqrt(4) if use_rslora else 8 / 4)
    perturb_B(model)
    ours = logits(model)
    assert (ours - logits(base)).abs().max() > 1e-3
    out = lora.export_peft(model, tmp_path / "peft", "tiny-gpt2")
    pm = PeftModel.from_pretrained(copy.deepcopy(base), out).eval()
    assert pm.peft_config["default"].fan_in_fan_out and pm.peft_config["default"].use_rslora == use_rslora
    layer = pm.base_model.model.get_submodule(CONV1D[0])
    assert layer.scaling["default"] == adapter(model.get_submodule(CONV1D[0])).scaling
    torch.testing.assert_close(logits(pm), ours, atol=1e-10, rtol=0)


def test_rslora_survives_save_and_load(tmp_path):
    model = tiny_gpt2()
    lora.add_lora(model, r=4, lora_alpha=2, targets=["c_fc"], use_rslora=True)
    perturb_B(model)
    lora.save_lora(model, tmp_path / "a.safetensors")
    again = tiny_gpt2()
    lora.load_lora(again, tmp_path / "a.safetensors")
    p = adapter(again.get_submodule("transformer.h.1.mlp.c_fc"))
    assert p.use_rslora and p.scaling == 1.0 and lora.lora_config(again) == lora.lora_config(model)
    torch.testing.assert_close(logits(again), logits(model), atol=0, rtol=0)


def test_a_tied_head_is_refused_and_untying_as_told_works():
    model = tiny_gpt2()
    flags = {n: t.requires_grad for n, t in model.named_parameters()}
    with pytest.raises(ValueError, match=r"'lm_head' has its weight tied to transformer\.wte\.weight.*untie it"):
        lora.add_lora(model, targets=["c_attn", "lm_head"])
    assert not lora.adapted_modules(model) and flags == {n: t.requires_grad for n, t in model.named_parameters()}
    # what the message says to do: untie, then adapt and merge; the embedding is left as it was
    wte = model.transformer.wte.weight.detach().clone()
    model.config.tie_word_embeddings = False
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    lora.add_lora(model, targets=["lm_head"], init="svd", r=2)
    lora.merge_lora(model)
    assert torch.equal(model.transformer.wte.weight, wte) and not torch.equal(model.lm_head.weight, wte)


def test_a_tied_head_is_refused_by_load_lora(tmp_path):
    untied = tiny_gpt2()
    untied.lm_head.weight = nn.Parameter(untied.lm_head.weight.detach().clone())
    lora.add_lora(untied, targets=["lm_head"], r=2)
    lora.save_lora(untied, tmp_path / "head.safetensors")
    with pytest.raises(ValueError, match="tied to transformer.wte.weight"):
        lora.load_lora(tiny_gpt2(), tmp_path / "head.safetensors")


@pytest.mark.parametrize("target,kind", [("wte", "Embedding"), ("ln_f", "LayerNorm"), ("attn", "GPT2Attention")])
def test_other_module_types_are_refused_by_name(target, kind):
    with pytest.raises(ValueError, match=f"'{target}' matches only {kind} modules; lora adapts nn.Linear and "
                                         f"transformers Conv1D"):
        lora.add_lora(tiny_gpt2(), targets=[target])

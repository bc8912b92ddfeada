"""Model-level API: add_lora's signature, targets and errors, get_lora_params, merge and remove."""
import copy
import inspect

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import lora
from tests import test_lora_common as common
from tests.test_lora_common import (
    ATTN,
    ENCODER,
    INITS,
    adapter,
    base_weight,
    hidden,
    perturb_B,
    tiny_model,
    token_ids,
    trained_tiny_model,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # small matrices: one thread is faster


def test_add_lora_signature():
    sig = inspect.signature(lora.add_lora)
    params = list(sig.parameters.values())
    assert params[0].name == "model" and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    expected = dict(r=4, lora_alpha=None, init="random", targets=None, freeze_a=True, lora_dropout=0.0,
                    generator=None, svd_method="auto", data=None, loss_fn=None, use_rslora=False,
                    modules_to_save=None)
    assert {p.name: p.default for p in params[1:]} == expected
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:])
    with pytest.raises(TypeError):
        lora.add_lora(tiny_model(), 4)  # r is keyword-only


def test_add_lora_returns_names_and_builds_the_right_classes():
    model = tiny_model()
    names = lora.add_lora(model, r=3, targets=["query", "attention.output.dense"])
    assert names == [f"bert.encoder.layer.{i}.{s}" for i in range(2)
                     for s in ("attention.self.query", "attention.output.dense")]
    assert [n for n, _, _ in lora.adapted_modules(model)] == names
    for name in names:
        m = model.get_submodule(name)
        assert isinstance(m, nn.Linear) and parametrize.is_parametrized(m, "weight")
        p = adapter(m)
        assert type(p) is lora.LoRAFAParametrization and isinstance(p, lora.LoRAParametrization)
        assert p.lora_A.shape == (3, 32) and p.lora_B.shape == (32, 3) and p.lora_B0.shape == (32, 3)
        assert not p.lora_A.requires_grad and p.lora_B.requires_grad
        assert not base_weight(m).requires_grad
    # other modules untouched
    assert not parametrize.is_parametrized(model.get_submodule("bert.encoder.layer.0.attention.self.key"))
    # plain LoRA: A trainable too
    model2 = tiny_model()
    lora.add_lora(model2, r=3, targets=["value"], freeze_a=False)
    for _, _, p in lora.adapted_modules(model2):
        assert type(p) is lora.LoRAParametrization and p.lora_A.requires_grad


def test_targets_none_adapts_every_linear():
    seq = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    assert lora.add_lora(seq, r=2) == ["0", "2"]


def test_target_suffix_matching_is_by_whole_name_components():
    model = tiny_model()
    # "output.dense" matches attention.output.dense and output.dense (not intermediate.dense)
    names = lora.add_lora(model, r=2, targets="output.dense")
    assert names == [f"bert.encoder.layer.{i}.{s}" for i in range(2)
                     for s in ("attention.output.dense", "output.dense")]
    # "dense" alone would also match the pooler and intermediate; "ense" matches nothing
    with pytest.raises(ValueError, match="'ense' matches no nn.Linear"):
        lora.add_lora(tiny_model(), r=2, targets=["ense"])


def test_get_lora_params():
    model = tiny_model()
    lora.add_lora(model, r=2, targets=ATTN)
    params = lora.get_lora_params(model)
    Bs = [p.lora_B for _, _, p in lora.adapted_modules(model)]
    assert len(params) == 8 and all(a is b for a, b in zip(params, Bs))  # B only for LoRA-FA
    model2 = tiny_model()
    lora.add_lora(model2, r=2, targets=ATTN, freeze_a=False)
    params = lora.get_lora_params(model2)
    assert len(params) == 16
    assert {id(t) for t in params} == {id(t) for _, _, p in lora.adapted_modules(model2)
                                       for t in (p.lora_A, p.lora_B)}
    # mark_only_lora_trainable leaves exactly those trainable
    lora.mark_only_lora_trainable(model2)
    assert {id(t) for t in model2.parameters() if t.requires_grad} == {id(t) for t in params}


def test_get_lora_state_dict_keys():
    model = tiny_model()
    lora.add_lora(model, r=2, targets=["value"], init="pissa")
    sd = lora.get_lora_state_dict(model)
    assert sorted(sd) == sorted(f"bert.encoder.layer.{i}.attention.self.value.parametrizations.weight.0.{k}"
                                for i in range(2) for k in ("lora_A", "lora_B", "lora_B0"))
    assert lora.lora_config(model)["bert.encoder.layer.0.attention.self.value"] == dict(
        r=2, lora_alpha=2.0, init="pissa", freeze_a=True, residual=True, lora_dropout=0.0, use_rslora=False)


# -- errors --------------------------------------------------------------------------------------------
def test_error_already_adapted():
    model = tiny_model()
    lora.add_lora(model, r=2, targets=["query"])
    msg = r"'bert\.encoder\.layer\.0\.attention\.self\.query' already has a LoRA adapter"
    with pytest.raises(ValueError, match=msg):
        lora.add_lora(model, r=2, targets=["query", "value"])
    # nothing was added by the failed call
    assert len(lora.adapted_modules(model)) == 2


def test_error_target_matches_nothing_lists_what_exists():
    with pytest.raises(ValueError, match=r"'qkv' matches no nn.Linear or Conv1D module in BertForSequenceClassification") as e:
        lora.add_lora(tiny_model(), targets=["query", "qkv"])
    msg = str(e.value)
    for name in ("query", "key", "value", "dense", "classifier", "attention.output.dense", "intermediate.dense"):
        assert name in msg


@pytest.mark.parametrize("rank", [0, -1, 2.0])
def test_error_rank_not_positive_int(rank):
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        lora.add_lora(tiny_model(), r=rank, targets=["query"])


def test_error_rank_exceeds_min_dim():
    lin = nn.Linear(9, 5)
    with pytest.raises(ValueError, match=r"rank 6 exceeds min\(out, in\) = 5"):
        lora.add_lora(lin, r=6)
    assert lora.add_lora(lin, r=5, init="svd") == [""]  # r = min(out, in) is allowed
    assert torch.allclose(lin.weight, 2 * base_weight(lin), atol=1e-5)  # full rank: W_r = W


def test_error_unknown_init():
    with pytest.raises(ValueError, match=r"unknown init 'lora'; choose one of random, svd, pissa, milora, seed"):
        lora.add_lora(tiny_model(), init="lora")


def test_error_dropout_out_of_range():
    with pytest.raises(ValueError, match="dropout must be in"):
        lora.add_lora(tiny_model(), targets=["query"], lora_dropout=1.0)


def test_error_seed_on_non_square_layer():
    with pytest.raises(ValueError, match=r"only works for square weights; got shape \(37, 32\)"):
        lora.add_lora(tiny_model(), r=2, init="seed", targets=["intermediate.dense"])


def test_failed_add_lora_leaves_the_model_untouched():
    """The square q/k/v/attention.output.dense come first in module order, then intermediate.dense
    (37x32) fails for init='seed': no layer may keep an adapter from the failed call."""
    model = tiny_model()
    with pytest.raises(ValueError, match="square"):
        lora.add_lora(model, r=2, init="seed", targets=ENCODER)
    assert lora.adapted_modules(model) == []
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert all(t.requires_grad for t in model.parameters())


# -- merge / remove ----------------------------------------------------------------------------------
@pytest.mark.parametrize("init", INITS)
def test_merge_equals_adapted_and_leaves_plain_linears(init):
    model = tiny_model()
    targets = ATTN if init == "seed" else ENCODER
    names = lora.add_lora(model, r=4, init=init, targets=targets, freeze_a=False)
    perturb_B(model)
    ids = token_ids()
    W_eff = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    with torch.no_grad():
        adapted = hidden(model, ids)
    lora.merge_lora(model)
    assert lora.adapted_modules(model) == []
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert not any("parametrizations" in k or "lora_" in k for k in model.state_dict())
    for n in names:
        m = model.get_submodule(n)
        assert type(m) is nn.Linear and "forward" not in vars(m) and not m._forward_hooks
        torch.testing.assert_close(m.weight, W_eff[n], atol=1e-6, rtol=0)
    with torch.no_grad():
        merged = hidden(model, ids)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=0)


def test_merged_layer_weight_formula():
    W, _ = common.spectral_matrix(5, 7)
    lin = common.linear_with(W)
    lora.add_lora(lin, r=2, lora_alpha=3.0, init="pissa")
    perturb_B(lin, scale=0.5)
    p = adapter(lin)
    expected = W + 1.5 * (p.lora_B - p.lora_B0).detach() @ p.lora_A
    lora.merge_lora(lin)
    torch.testing.assert_close(lin.weight, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("init", INITS)
def test_remove_restores_the_original_bitwise(init):
    ref = tiny_model()
    model = tiny_model()
    targets = ATTN if init == "seed" else ENCODER
    names = lora.add_lora(model, r=4, init=init, targets=targets)
    perturb_B(model, scale=0.5)
    ids = token_ids()
    with torch.no_grad():
        adapted = hidden(model, ids)
        base_out = hidden(ref, ids)
    assert (adapted - base_out).abs().max() > 1e-2
    lora.remove_lora(model)
    assert lora.adapted_modules(model) == []
    assert set(model.state_dict()) == set(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    for n in names:
        m = model.get_submodule(n)
        assert type(m) is nn.Linear and "forward" not in vars(m) and not m._forward_hooks
    with torch.no_grad():
        assert torch.equal(hidden(model, ids), base_out)
    # and the layer can be adapted again
    assert lora.add_lora(model, r=2, targets=targets) == names


def test_merge_then_add_again():
    model = tiny_model()
    lora.add_lora(model, r=2, targets=["query"], init="svd")
    lora.merge_lora(model)
    assert len(lora.add_lora(model, r=2, targets=["query"])) == 2


def test_bf16_tiny_bert_add_forward_merge():
    ref32 = tiny_model()
    model = tiny_model(dtype=torch.bfloat16)
    names = lora.add_lora(model, r=4, init="svd", targets=ATTN)
    lora.add_lora(ref32, r=4, init="svd", targets=ATTN)
    for n in names:
        p16, p32 = adapter(model.get_submodule(n)), adapter(ref32.get_submodule(n))
        assert p16.lora_A.dtype == p16.lora_B.dtype == torch.bfloat16
        assert base_weight(model.get_submodule(n)).dtype == torch.bfloat16
        # s·B·A from the bf16 factors ≈ the fp32 model's W_r (SVD done in float64, then cast)
        prod16 = p16.scaling * p16.lora_B.double() @ p16.lora_A.double()
        prod32 = p32.scaling * p32.lora_B.double() @ p32.lora_A.double()
        assert ((prod16 - prod32).norm() / prod32.norm()).item() < 2e-2
    ids = token_ids()
    with torch.no_grad():
        out16 = hidden(model, ids)
        out32 = hidden(ref32, ids)
        assert out16.dtype == torch.bfloat16
        assert (out16.float() - out32).abs().max() < 0.1
        assert ((out16.float() - out32).norm() / out32.norm()).item() < 2e-2
        lora.merge_lora(model)
        merged = hidden(model, ids)
    for n in names:
        m = model.get_submodule(n)
        assert type(m) is nn.Linear and m.weight.dtype == torch.bfloat16
    assert ((merged.float() - out32).norm() / out32.norm()).item() < 2e-2


def test_bf16_pissa_keeps_the_output():
    model = tiny_model(dtype=torch.bfloat16)
    ids = token_ids()
    with torch.no_grad():
        before = hidden(model, ids)
        lora.add_lora(model, r=4, init="pissa", targets=ENCODER)
        after = hidden(model, ids)
    torch.testing.assert_close(after, before, atol=0, rtol=0)  # B − B0 = 0 exactly at init


# -- copies ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("finish", [lora.merge_lora, lora.remove_lora])
def test_a_deep_copy_is_independent_of_the_original(finish):
    model, ids = trained_tiny_model(2, ATTN)
    with torch.no_grad():
        before = hidden(model, ids)
        twin = copy.deepcopy(model)
        torch.testing.assert_close(hidden(twin, ids), before, atol=0, rtol=0)
        finish(twin)  # merge or remove on the copy ...
        assert not lora.adapted_modules(twin)
        # ... leaves the original's adapters, weights and outputs as they were
        assert len(lora.adapted_modules(model)) == 8
        torch.testing.assert_close(hidden(model, ids), before, atol=0, rtol=0)
        adapter(model.get_submodule(lora.find_targets(model, ATTN)[0])).lora_B.add_(1.0)
        assert (hidden(twin, ids) - hidden(model, ids)).abs().max() > 1e-3  # no shared tensor either
    lora.merge_lora(model)  # and the original still merges
    assert not lora.adapted_modules(model)

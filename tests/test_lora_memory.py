"""What autograd saves for LoRA-FA: no input-sized tensor per adapted layer, on layers and on a tiny BERT."""
from collections import Counter

import pytest
import torch
from torch import nn

import lora
from bench.common import saved_storages
from tests.test_lora_common import ATTN, perturb_B, tiny_model, token_ids

pytestmark = pytest.mark.usefixtures("single_thread")  # small matrices: one thread is faster


def _extra(storages, base):
    """Bytes saved on top of the base model, and a Counter of the sizes of those extra storages."""
    extra = Counter(storages.values())
    extra.subtract(Counter(base.values()))
    return sum(storages.values()) - sum(base.values()), +extra


DIMS = [24, 40, 16, 56]  # Linear(24, 40) -> Linear(40, 16) -> Linear(16, 56)
N, R = 3 * 5, 2  # tokens (batch * seq), rank


def _sequential(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(a, b) for a, b in zip(DIMS[:-1], DIMS[1:])])


def _bound(layers, n, r):
    """(N·r + r·in + out·r) float32 values per adapted layer: x Aᵀ, A and D."""
    return sum(n * r + r * i + o * r for i, o in layers) * 4


@pytest.mark.parametrize("init", ["random", "svd", "pissa", "milora"])
def test_lora_fa_fast_path_saves_no_input_sized_tensor(init):
    x = torch.randn(3, 5, DIMS[0], generator=torch.Generator().manual_seed(0)).requires_grad_()
    base = _sequential()
    for t in base.parameters():
        t.requires_grad_(False)
    _, st_base = saved_storages(lambda: base(x))
    input_bytes = {N * i * 4 for i in DIMS[:-1]}  # sizes of the adapted layers' inputs (all distinct)
    assert not input_bytes & set(st_base.values())  # frozen Linear layers save only their weights

    results = {}
    for fast, freeze_a in ((True, True), (False, True), (True, False)):
        model = _sequential()
        lora.add_lora(model, r=R, init=init, freeze_a=freeze_a)
        lora.mark_only_lora_trainable(model)
        perturb_B(model)
        lora.set_fast_path(model, fast)
        out, st = saved_storages(lambda model=model: model(x))
        out.square().sum().backward()  # the saved tensors suffice for the backward
        assert all(t.grad is not None for t in lora.get_lora_params(model))
        results[fast, freeze_a] = _extra(st, st_base)

    layers = list(zip(DIMS[:-1], DIMS[1:]))
    extra, sizes = results[True, True]
    # LoRA-FA fast path: at most x·Aᵀ (N×r), A (r×in) and D (out×r) per layer, and at least the x·Aᵀ
    assert len(layers) * N * R * 4 <= extra <= _bound(layers, N, R)
    assert not input_bytes & set(sizes), "an input-sized tensor was saved"
    # the plain parametrization saves every layer's input (for dW_eff) on top of that
    extra_plain, sizes_plain = results[False, True]
    assert input_bytes <= set(sizes_plain)
    assert extra_plain >= sum(input_bytes) > _bound(layers, N, R)
    # and so does plain LoRA even on the fast path (dA needs x): the test can see inputs
    assert input_bytes <= set(results[True, False][1])


def test_lora_fa_memory_on_tiny_bert():
    """The same bound on a transformer: inputs_embeds require grad, everything but B frozen."""
    batch, seq, r, width = 4, 32, 2, 32
    n = batch * seq
    ids = token_ids(batch, seq)

    def run(model):
        lora.mark_only_lora_trainable(model)  # (on the base model: freezes everything)
        emb = model.embeddings.word_embeddings(ids).detach().requires_grad_()
        return saved_storages(lambda: model(inputs_embeds=emb).last_hidden_state)[1]

    base = run(tiny_model(head=False))
    res = {}
    for fast in (True, False):
        model = tiny_model(head=False)
        names = lora.add_lora(model, r=r, init="pissa", targets=ATTN)
        lora.set_fast_path(model, fast)
        res[fast] = _extra(run(model), base)
    bound = _bound([(width, width)] * len(names), n, r)
    extra, sizes = res[True]
    assert len(names) * n * r * 4 <= extra <= bound
    assert sizes[n * width * 4] == 0  # no input-sized storage beyond the base model's
    # plain: the LayerNorm output feeding q, k and v of each layer is saved (once, shared) for dW_eff
    # (the attention context feeding attention.output.dense is already saved by the base model)
    extra_plain, sizes_plain = res[False]
    assert sizes_plain[n * width * 4] == 2
    assert extra_plain >= 2 * n * width * 4 > 2 * bound



"""torch.compile(fullgraph=True) of adapted layers: no graph break, the eager outputs and gradients.

backend="aot_eager" traces forward and backward (the LoRA-FA autograd.Function included) as
inductor would, without compiling C++, so the test stays fast; bench/step.py times inductor.
"""
import copy

import pytest
import torch
from torch import nn

import lora

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.slow  # over ~5 s on 2 cores
@pytest.mark.parametrize("freeze_a", [True, False])
def test_fullgraph_compile_matches_eager(freeze_a):
    for lora_dropout in (0.0, 0.3):
        torch.manual_seed(0)
        eager = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).double()
        lora.add_lora(eager, r=2, lora_dropout=lora_dropout, freeze_a=freeze_a,
                      generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            for _, _, p in lora.adapted_modules(eager):
                p.lora_B.normal_()
        twin = copy.deepcopy(eager)
        torch._dynamo.reset()
        compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")  # a graph break raises
        x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
        outs = []
        for m in (eager, compiled):
            torch.manual_seed(1)  # the same dropout mask in both
            y = m(x)
            (y ** 2).sum().backward()
            outs.append((y.detach(), x.grad.clone()))
            x.grad = None
        torch.testing.assert_close(outs[1], outs[0], atol=1e-12, rtol=0)
        if lora_dropout:  # the masks are in play: another seed gives another output
            torch.manual_seed(2)
            assert (eager(x) - outs[0][0]).abs().max() > 1e-3
        for (_, _, p), (_, _, q) in zip(lora.adapted_modules(eager), lora.adapted_modules(twin)):
            torch.testing.assert_close(q.lora_B.grad, p.lora_B.grad, atol=1e-12, rtol=0)
            assert p.lora_B.grad.abs().max() > 0

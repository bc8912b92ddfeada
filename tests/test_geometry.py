"""utils.geometry: input Gram matrices and the captured-energy shares against float64 numpy
references on a tiny BERT (padding excluded, random A as add_lora draws it), plus properties."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lora
from tests.tiny import CORPUS
from utils import geometry
from utils.models import load_model_and_tokenizer

TARGETS = ["query", "attention.output.dense"]


def test_grams_and_shares_match_numpy(tiny_models):
    model, tok = load_model_and_tokenizer(str(tiny_models["bert"]), 2)
    batch = dict(tok(CORPUS[:3], CORPUS[3:6], padding=True, return_tensors="pt"))
    assert (batch["attention_mask"] == 0).any()  # the batch has padding, which must not count
    names = lora.find_targets(model, TARGETS)
    seen = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: seen.__setitem__(n, a[0].detach().numpy().astype(np.float64))) for n in names]
    grams = lora.input_grams(model, names, [batch])
    for h in hooks:
        h.remove()
    keep = batch["attention_mask"].numpy().astype(bool)
    df = geometry.init_geometry(model, grams, rank=3, seed=7).set_index("module")

    reference = copy.deepcopy(model)  # the random A that a run with --seed 7 trains with
    lora.add_lora(reference, r=3, init="random", targets=TARGETS, generator=torch.Generator().manual_seed(7))
    random_A = {n: p.lora_A.detach().double().numpy() for n, _, p in lora.adapted_modules(reference)}
    assert list(random_A) == names

    for n in names:
        X = seen[n][keep]  # (tokens, in), padding dropped
        C = X.T @ X
        np.testing.assert_allclose(grams[n].numpy(), C, rtol=1e-10, atol=1e-10)
        W = model.get_submodule(n).weight.detach().double().numpy()  # (out, in)
        U, S, Vt = np.linalg.svd(W)
        A_svd, W_r = Vt[:3], (U[:, :3] * S[:3]) @ Vt[:3]
        row = df.loc[n]
        assert row["svd"] == pytest.approx(np.trace(A_svd @ C @ A_svd.T) / np.trace(C), rel=1e-6)
        assert row["random"] == pytest.approx(np.trace(random_A[n] @ C @ random_A[n].T) / np.trace(C), rel=1e-5)
        assert row["best"] == pytest.approx(np.linalg.eigvalsh(C)[-3:].sum() / np.trace(C), rel=1e-8)
        assert row["uniform"] == pytest.approx(3 / W.shape[1])
        shift = np.linalg.norm(X @ W_r.T) / np.linalg.norm(X @ W.T)
        assert row["start_shift"] == pytest.approx(shift, rel=1e-6)
        assert row["svd_over_random"] == pytest.approx(row["svd"] / row["random"])


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 9), st.integers(3, 9), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_shares_lie_between_zero_and_the_top_eigenvalues(out_f, in_f, r, seed):
    g = torch.Generator().manual_seed(seed)
    r = min(r, out_f, in_f)
    model = nn.Sequential(nn.Linear(in_f, out_f))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(out_f, in_f, generator=g))
    X = torch.randn(20, in_f, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, in_f, dtype=torch.float64)
    row = geometry.init_geometry(model, {"0": X.T @ X}, rank=r, seed=seed).iloc[0]
    for init in ("random", "svd"):  # Ky Fan: no r orthonormal directions capture more than the top r eigenvalues
        assert -1e-12 <= row[init] <= row["best"] + 1e-9
    assert row["best"] <= 1 + 1e-12 and row["start_shift"] >= 0


def test_summary_means_per_kind():
    df = pd.DataFrame([{"kind": k, "uniform": 0.1, "random": 0.1, "svd": s, "best": 0.9, "svd_over_random": q,
                        "start_shift": 0.0} for k, s, q in [("a", 0.1, 1.0), ("a", 0.3, 3.0), ("b", 0.5, 5.0)]])
    out = geometry.summarize_geometry(df)
    assert out.loc["a", "svd"] == pytest.approx(0.2) and out.loc["a", "layers"] == 2
    assert out.loc["all", "svd_over_random"] == pytest.approx(3.0) and out.loc["all", "layers"] == 3


def test_cli_prints_the_table(tiny_models, glue_dir, capsys, tmp_path):
    from run_glue import main

    csv = tmp_path / "geo.csv"
    assert main(["geometry", "--task", "mrpc", "--model", str(tiny_models["bert"]), "--data-dir", str(glue_dir),
                 "--rank", "2", "--examples", "4", "--init-batches", "2", "--batch-size", "8", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert ("| kind | uniform | random | svd | eva | grad | best | g_random | g_svd | g_eva | g_grad | g_best |"
            in out and "| all |" in out)
    df = pd.read_csv(csv)
    assert len(df) == 8  # 2 layers x (query, key, value, attention.output.dense)
    assert (df["eva"] <= df["best"] + 1e-9).all() and (df["g_grad"] <= df["g_best"] + 1e-9).all()


def labelled_batches(tok, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [dict(tok(CORPUS[i:i + 3], CORPUS[i + 3:i + 6], padding=True, return_tensors="pt"),
                 labels=torch.randint(0, 2, (3,), generator=g)) for i in (0, 6)]


def test_eva_and_grad_are_optimal_on_their_calibration_batches(tiny_models):
    """By construction: on the batches an init was computed from, eva's A captures the most input
    energy (Ky Fan) and grad's A the most gradient energy (Eckart–Young), more than random and svd."""
    model, tok = load_model_and_tokenizer(str(tiny_models["bert"]), 2)
    batches = labelled_batches(tok)
    names = lora.find_targets(model, TARGETS)
    C, G = lora.input_grams(model, names, batches), lora.weight_grads(model, names, batches)
    df = geometry.init_geometry(model, C, rank=3, seed=1, grads=G, cal_grams=C, cal_grads=G).set_index("module")
    for n in names:
        row = df.loc[n]
        assert row["eva"] == pytest.approx(row["best"], rel=1e-9)
        assert row["g_grad"] == pytest.approx(row["g_best"], rel=1e-9)
        assert row["eva"] > max(row["random"], row["svd"], row["grad"])
        assert row["g_grad"] > max(row["g_random"], row["g_svd"], row["g_eva"])
    # and each share is that of the A add_lora trains with, against a numpy reference
    for init in ("eva", "grad"):
        adapted = copy.deepcopy(model)
        lora.add_lora(adapted, r=3, init=init, targets=TARGETS, data=batches)
        for n, _, p in lora.adapted_modules(adapted):
            A, Cn, Gn = (t.detach().double().numpy() for t in (p.lora_A, C[n], G[n]))
            assert df.loc[n, init] == pytest.approx(np.trace(A @ Cn @ A.T) / np.trace(Cn), rel=1e-5)
            assert df.loc[n, f"g_{init}"] == pytest.approx(np.square(Gn @ A.T).sum() / np.square(Gn).sum(), rel=1e-5)


def test_shares_are_measured_on_other_batches(tiny_models):
    """Held-out batches: eva / grad are no longer optimal by construction, and the columns change."""
    model, tok = load_model_and_tokenizer(str(tiny_models["bert"]), 2)
    cal, held = labelled_batches(tok)[:1], labelled_batches(tok)[1:]
    names = lora.find_targets(model, TARGETS)
    C_cal, G_cal = lora.input_grams(model, names, cal), lora.weight_grads(model, names, cal)
    C, G = lora.input_grams(model, names, held), lora.weight_grads(model, names, held)
    df = geometry.init_geometry(model, C, rank=3, grads=G, cal_grams=C_cal, cal_grads=G_cal)
    assert (df["eva"] < df["best"] - 1e-6).any() and (df["g_grad"] < df["g_best"] - 1e-6).any()
    bounds = df[["best", "best", "g_best", "g_best"]].to_numpy() + 1e-9
    assert (df[["eva", "grad", "g_eva", "g_grad"]].to_numpy() <= bounds).all()

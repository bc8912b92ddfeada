"""Smoke tests of the benchmark scripts: each runs on a tiny model for a step or two in a
subprocess and must write a markdown table with the expected rows and columns.
Nothing here checks a timing.

The subprocesses start together (module fixture) so their imports overlap.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the benchmarks' subprocesses on a tiny model: minutes on a shared CPU

ROOT = Path(__file__).resolve().parents[1]
STEP_ROWS = ["floor", "head", "full", "peft-lora", "peft-lora-frozen-a", "peft-lorafa-opt", "ours-lora",
             "ours-lora-fa-plain", "ours-lora-fa"]
EPOCH_COLUMNS = ["runner", "dtype", "grouped", "seed", "steps", "trainable params", "train+eval s", "x Trainer",
                 "process s", "peak RSS MiB", "padding eff.", "dev accuracy", "dev F1", "dev loss", "optimizer"]
LLM_ROWS = ["full", "peft-lora", "peft-lora-frozen-a", "peft-lorafa-opt", "ours-lora-fa", "ours-lora-fa+ckpt", "floor"]
LLM_COLUMNS = ["row", "trains", "trainable params", "weights MiB", "optimizer MiB", "grads MiB", "saved act. MiB @128",
               "peak MiB @128", "saved B/token", "peak B/token", "step s @128", "step x ours-lora-fa"]
INIT_ROWS = ["ours random", "ours svd (auto)", "ours svd (krylov)", "ours svd (lanczos)", "ours svd (full)",
             "ours svd (randomized)", "ours pissa (auto)", "ours milora (full)", "PEFT default", "PEFT pissa",
             "PEFT pissa_niter_4"]


def table_rows(text: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the first markdown table whose header begins with `header_start`."""
    lines = text.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("| " + header_start))
    columns = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for ln in lines[i + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return columns, rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start every script at once; {name: (CompletedProcess-like, out folder)} once all finished."""
    from tests.tiny import tiny_model_dir, write_glue

    out = tmp_path_factory.mktemp("bench")
    model_dir, glue_dir = tiny_model_dir(out / "tiny-bert", "bert"), write_glue(out / "glue")
    py = sys.executable
    commands = {
        "step": [py, "bench/step.py", "--model", "tiny", "--all", "--steps", "2", "--warmup", "1",
                 "--batch", "4", "--seq", "16", "--no-rss", "--threads", "1", "--out", str(out / "step")],
        "step-compiled": [py, "bench/step.py", "--model", "tiny", "--variants", "floor,ours-lora-fa,ours-lora-fa-compiled",
                          "--compile-backend", "aot_eager", "--steps", "2", "--warmup", "1", "--batch", "4", "--seq", "16",
                          "--no-rss", "--threads", "1", "--out", str(out / "step-compiled")],
        "step-rss": [py, "bench/step.py", "--model", "tiny", "--only", "ours-lora-fa", "--rss",
                     "--batch", "4", "--seq", "16", "--threads", "1"],
        "epoch": [py, "bench/epoch.py", "--model", str(model_dir), "--data-dir", str(glue_dir), "--max-steps", "2",
                  "--batch", "4", "--max-length", "32", "--dtypes", "bf16", "--ours-methods", "lora-fa,lora",
                  "--grouping", "on,off", "--threads", "1", "--out", str(out / "epoch")],
        "epoch-opt": [py, "bench/epoch.py", "--model", str(model_dir), "--data-dir", str(glue_dir), "--max-steps", "2",
                      "--batch", "4", "--max-length", "32", "--dtypes", "fp32", "--peft-methods", "lora-fa,lorafa-opt",
                      "--threads", "1", "--out", str(out / "epoch-opt")],
        "init": [py, "bench/init.py", "--model", "tiny", "--repeats", "1", "--threads", "1,2",
                 "--out", str(out / "init"), "--data-model", str(model_dir), "--data-dir", str(glue_dir),
                 "--init-batches", "2", "--batch", "4", "--max-length", "32"],
    }
    env = {**os.environ, "LORA_FA_CACHE": str(out / "cache")}  # tokenised data stays in the tmp folder
    procs = {k: subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, c in commands.items()}
    results = {}
    for k, p in procs.items():
        stdout, stderr = p.communicate(timeout=600)
        results[k] = (p.returncode, stdout, stderr)
    return results, out


def check_ok(result):
    rc, stdout, stderr = result
    assert rc == 0, stderr[-3000:]
    return stdout


def test_step_table(runs):
    results, out = runs
    stdout = check_ok(results["step"])
    text = (out / "step" / "step_tiny_fp32_bf16.md").read_text()
    assert text.strip() == stdout.strip()
    assert "- command: `python" in text and "bench/step.py --model tiny" in text
    assert "- machine: " in text and "torch 2" in text
    sections = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert len(sections) == 4  # fp32/bf16 x attention/all-linear
    assert {s.split(", ")[1] for s in sections} == {"fp32", "bf16"}
    columns, rows = table_rows(text, "variant")
    assert columns == ["variant", "trains", "trainable params", "step ms (median)", "IQR ms", "x peft-lora-frozen-a",
                       "x floor", "CPU ms (median)", "CPU x peft-lora-frozen-a", "CPU x floor", "saved MiB (all)",
                       "saved MiB (activations)", "peak RSS MiB", "RSS rise in steps MiB"]
    assert [r[0] for r in rows] == STEP_ROWS
    by = {r[0]: r for r in rows}
    assert by["floor"][2] == "0" and by["peft-lora-frozen-a"][5] == "1"
    assert by["ours-lora-fa"][2] == by["peft-lora-frozen-a"][2]  # same trainable parameters
    assert by["ours-lora"][2] == by["peft-lora"][2]
    assert float(by["ours-lora-fa"][11]) < float(by["ours-lora-fa-plain"][11])  # the fast path saves less
    assert text.count("(target <= 1.0)") == 4 and text.count("(target <= 1.1)") == 4 and "LoRA-FA / LoRA saved bytes" in text


def test_step_compiled_row(runs):
    """ours-lora-fa in torch.compile(fullgraph=True) (aot_eager here: no C++ build): a row like the eager one's,
    and the line with its first (compiling) step and its ratio to the eager row."""
    results, out = runs
    stdout = check_ok(results["step-compiled"])
    text = (out / "step-compiled" / "step_tiny_fp32.md").read_text()
    assert text.strip() == stdout.strip() and "--variants floor,ours-lora-fa,ours-lora-fa-compiled" in text
    _, rows = table_rows(text, "variant")
    assert [r[0] for r in rows] == ["floor", "ours-lora-fa", "ours-lora-fa-compiled"]
    by = {r[0]: r for r in rows}
    assert by["ours-lora-fa-compiled"][2] == by["ours-lora-fa"][2] != "0"  # the same trainable parameters
    assert all(float(by["ours-lora-fa-compiled"][k]) > 0 for k in (3, 7, 10, 11))
    line = next(ln for ln in text.splitlines() if ln.startswith("- ours-lora-fa-compiled"))
    assert "fullgraph=True, backend aot_eager, no graph break): first step" in line and "x ours-lora-fa wall" in line
    assert "ours-lora-fa-compiled: that model in torch.compile(fullgraph=True)" in text  # the legend


def test_step_default_rows_leave_compiling_out():
    from bench.step import parse_args

    assert parse_args([]).variants == STEP_ROWS
    assert parse_args(["--variants", "ours-lora-fa-compiled"]).variants == ["ours-lora-fa-compiled"]


def test_step_rss_child(runs):
    results, _ = runs
    stdout = check_ok(results["step-rss"])
    report = json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])
    assert report["variant"] == "ours-lora-fa"
    assert report["peak_rss_mib"] > 50 and report["step_peak_above_start_mib"] >= 0 and report["ru_maxrss_mib"] > 0


def test_init_table(runs):
    results, out = runs
    check_ok(results["init"])
    text = (out / "init" / "init.md").read_text()
    sections = [ln for ln in text.splitlines() if ln.startswith("## ")]
    assert [s.split(" (")[0] for s in sections] == ["## 1 thread", "## 2 threads"]
    assert all("load average at start" in s for s in sections)
    for section in text.split("\n## ")[1:]:
        columns, rows = table_rows(section, "model | init | layers")
        assert columns == ["model", "init", "layers", "seconds (median)", "x PEFT pissa", "max rel. error"]
        assert [r[1] for r in rows] == INIT_ROWS
        by = {r[1]: r for r in rows}
        assert by["ours random"][5] == "n/a" and by["PEFT pissa"][4] == "1"
        assert float(by["ours svd (full)"][5]) < 1e-5 and float(by["PEFT pissa"][5]) < 1e-4
        assert float(by["ours svd (auto)"][5]) < 1e-6
        columns, rows = table_rows(section, "model | init | batches")
        assert columns == ["model", "init", "batches", "seconds (median)", "plain passes", "seconds (median)",
                           "x plain passes"]
        assert [(r[1], r[2], r[4]) for r in rows] == [("eva", "2 x 4", "2 forward"),
                                                      ("grad", "2 x 4", "2 forward+backward")]
    assert text.count("(target <= 0.3 x at <= 1e-06)") == 2


def test_epoch_table(runs):
    results, out = runs
    check_ok(results["epoch"])
    text = (out / "epoch" / "epoch_bf16.md").read_text()
    columns, rows = table_rows(text, "runner")
    assert columns == EPOCH_COLUMNS
    assert [r[0] for r in rows[::2]] == ["ours (run_experiment, LoRA-FA)", "ours (run_experiment, LoRA)",
                                         "Trainer + PEFT LoRA, A frozen", "Trainer + PEFT LoRA"]
    assert {r[14] for r in rows} == {"AdamW"} and all(float(r[13]) > 0 for r in rows)
    assert [r[2] for r in rows] == ["yes", "no"] * 4 and all(r[1] == "bf16" and r[4] == "2" for r in rows)
    trainable = [int(r[5].replace(",", "")) for r in rows[::2]]
    # A frozen vs trained: ours and PEFT train as many parameters, method for method; LoRA trains rank*in more
    assert trainable[0] == trainable[2] < trainable[1] == trainable[3]
    assert float(rows[4][7]) == float(rows[5][7]) == 1.0  # x Trainer: against PEFT LoRA with A frozen, same grouping
    assert 0 < float(rows[0][10]) <= 1 and rows[4][10] == "n/a"  # padding efficiency: ours only
    assert all(0 <= float(r[11]) <= 1 for r in rows)
    assert text.count("(target <= 1.0 x at equal or better F1)") == 4 and "failed" not in text
    assert "ours (run_experiment, LoRA) takes" in text and "of Trainer + PEFT LoRA (median" in text
    assert text.count("grouped / plain batches") == 4 and "(target <= 0.6 x at an F1 not lower" in text


def test_epoch_lorafa_optimizer_row(runs):
    """--peft-methods lorafa-opt: the Trainer runs with PEFT's create_lorafa_optimizer (it freezes lora_A: as many
    trainable parameters as PEFT LoRA with A frozen), labelled apart from that row, timed against it."""
    results, out = runs
    check_ok(results["epoch-opt"])
    text = (out / "epoch-opt" / "epoch_fp32.md").read_text()
    columns, rows = table_rows(text, "runner")
    assert columns == EPOCH_COLUMNS
    assert [r[0] for r in rows] == ["ours (run_experiment, LoRA-FA)", "Trainer + PEFT LoRA, A frozen",
                                    "Trainer + PEFT create_lorafa_optimizer"]
    assert [r[14] for r in rows] == ["AdamW", "AdamW", "LoraFAOptimizer"]
    assert rows[0][5] == rows[1][5] == rows[2][5] and all(r[4] == "2" for r in rows)
    assert float(rows[1][7]) == 1.0 and float(rows[2][7]) > 0  # x Trainer: against PEFT LoRA with A frozen
    assert "PEFT LoRA-FA" not in text and "failed" not in text


def test_epoch_peft_methods_are_checked():
    from bench.epoch import parse_args

    assert parse_args(["--peft-methods", "lorafa-opt,lora"]).peft_methods == ["lorafa-opt", "lora"]
    with pytest.raises(SystemExit):
        parse_args(["--peft-methods", "lorafa"])
    with pytest.raises(SystemExit):
        parse_args(["--ours-methods", "lorafa-opt"])  # PEFT's optimizer is not a method of ours


def llm_memory(out: Path, *extra: str) -> subprocess.CompletedProcess:
    """bench/llm_memory.py on the tiny decoder (2 layers, 64 wide), all-linear targets, r 8, 2 x 16..64 tokens."""
    return subprocess.run([sys.executable, "bench/llm_memory.py", "--size", "tiny", "--large-sizes", "none",
                           "--targets", "all-linear", "--ranks", "8", "--seq-lens", "16", "32", "48", "64", "--batch",
                           "2", "--threads", "1", "--out", str(out), "--figure", str(out / "llm_memory.png"), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def check_llm_table(out: Path, proc) -> dict[str, list[str]]:
    """The llm_memory.md rows by name, after the checks every device shares (memory split, slopes, figure)."""
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "llm_memory.md").read_text()
    assert text.strip() == proc.stdout.strip() and "bench/llm_memory.py --size tiny" in text
    assert "load average at start" in text and "(1 threads)" in text
    columns, rows = table_rows(text, "row | trains")
    assert columns == LLM_COLUMNS and [r[0] for r in rows] == LLM_ROWS
    by = {r[0]: r for r in rows}
    num = lambda row, col: float(by[row][col].replace(",", ""))
    saved, slope = {r: num(r, 6) for r in LLM_ROWS}, {r: num(r, 8) for r in LLM_ROWS}
    # frozen A: ours keeps less than PEFT LoRA with A trained, as much as PEFT with A frozen; only
    # checkpointing keeps less than the floor
    assert saved["ours-lora-fa"] < saved["peft-lora"] < saved["full"]
    assert saved["ours-lora-fa"] <= saved["peft-lora-frozen-a"] and saved["ours-lora-fa+ckpt"] < saved["floor"]
    assert min(v for r, v in saved.items() if r != "ours-lora-fa+ckpt") == saved["floor"]
    assert all(v > 0 for v in slope.values()) and all(num(r, 7) > 0 for r in LLM_ROWS)
    # over the floor, ours keeps x A^T alone: N x r fp32 per adapted layer (2 layers x 7 projections)
    assert slope["ours-lora-fa"] - slope["floor"] == 2 * 7 * 8 * 4
    assert num("floor", 2) == num("floor", 4) == num("floor", 5) == 0
    assert num("ours-lora-fa", 2) == num("peft-lora-frozen-a", 2) == num("peft-lorafa-opt", 2) < num("peft-lora", 2)
    assert num("ours-lora-fa", 4) > 2 * num("ours-lora-fa", 5) > 0  # AdamW: two moments per trained value
    _, per_len = table_rows(text, "row | saved MiB @32")
    assert all([float(c) for c in r[1:5]] == sorted(float(c) for c in r[1:5]) for r in per_len)
    assert "peft-lora / ours-lora-fa at 128 tokens: peak" in text and "(LoRA-FA paper: up to 1.4x)" in text
    assert "step s: median wall time of 3 plain steps (no hooks) at the longest length" in text
    assert all(num(r, 10) > 0 for r in LLM_ROWS) and num("ours-lora-fa", 11) == 1
    png = out / "llm_memory.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size < 300_000
    return text


def test_llm_memory_table(tmp_path):
    text = check_llm_table(tmp_path, llm_memory(tmp_path))
    assert "GPU numbers pending" in text and ", cpu\n" in text


@pytest.mark.cuda
def test_llm_memory_table_cuda(tmp_path):
    text = check_llm_table(tmp_path, llm_memory(tmp_path, "--device", "cuda"))
    assert "GPU numbers pending" not in text and "max_memory_allocated" in text


def test_results_files_name_paths_as_given(monkeypatch):
    """The command line and the data folder of a results file hold no absolute path of this machine (paths in
    the repository relative, $GLUE_DIR's as "$GLUE_DIR"), while one outside both stays as typed."""
    from bench import common

    monkeypatch.setenv("GLUE_DIR", "/data/glue")
    monkeypatch.setattr(sys, "argv", ["bench/epoch.py", "--data-dir", "/data/glue/", "--x", "/data/glue/MRPC",
                                      "--out", str(ROOT / "bench" / "results"), "--tmp", "/tmp/a b"])
    assert common.command_line() == (f"{Path(sys.executable).name} bench/epoch.py --data-dir $GLUE_DIR "
                                     "--x $GLUE_DIR/MRPC --out bench/results --tmp '/tmp/a b'")
    assert common.data_dir_as_given(None) == "$GLUE_DIR"
    assert common.data_dir_as_given("../shared/glue") == "../shared/glue"
    assert common.data_dir_as_given(str(ROOT / "glue")) == "glue"
    monkeypatch.delenv("GLUE_DIR")
    monkeypatch.setattr("utils.glue.SHARED_GLUE", ROOT / "no_shared_glue")
    assert common.data_dir_as_given(None) == "hub:nyu-mll/glue"


def test_fused_layer_table(tmp_path):
    """bench/fused_layer.py on two tiny shapes: every (shape, N) row, N* by hand, and `auto` taking the
    route the rule names (N* = 2·64·96 / (64 + 192) = 48; 96x32: 2·96·32 / 160 = 38.4 -> 38)."""
    proc = subprocess.run([sys.executable, "bench/fused_layer.py", "--shapes", "64x96", "96x32", "--rows", "8", "300",
                           "--repeats", "1", "--threads", "1", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "fused_layer.md").read_text()
    columns, rows = table_rows(text, "layer in->out")
    assert columns == ["layer in->out", "N rows", "N*", "merged ms", "split ms", "merged / split", "auto takes",
                       "auto / best"]
    assert [(r[0], r[1], r[2], r[6]) for r in rows] == [
        ("64->96", "8", "48", "split"), ("64->96", "300", "48", "merged"),
        ("96->32", "8", "38", "split"), ("96->32", "300", "38", "merged")]
    assert all(float(r[7]) >= 1.0 for r in rows) and "Load average" in text
    bad = subprocess.run([sys.executable, "bench/fused_layer.py", "--shapes", "64by96"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--shapes takes IN x OUT pairs" in bad.stderr

"""One MRPC epoch + dev evaluation: our runner (LoRA-FA) against transformers' Trainer + PEFT.

    python bench/epoch.py                                   # minilm, fp32 and bf16, PEFT LoRA and LoRA-FA
    python bench/epoch.py --max-steps 5 --dtypes fp32       # smoke run
    python bench/epoch.py --model path/to/folder --data-dir path/to/glue --max-steps 2

Both sides get the same model (seeded, so the new head is identical), the same token ids
(utils.glue.load_glue + utils.data.tokenize_glue: pairs truncated longest-first to
--max-length, no padding), dynamic padding (DataCollatorWithPadding), batch --batch,
dev batch 2 x --batch, AdamW (torch) at --lr with weight decay 0.01 except biases and
LayerNorm weights, gradient clipping at 1.0, a linear schedule with 6% warm-up, rank-4
adapters (alpha 4, no dropout) on Q, K, V, O, the classification head (and BERT's pooler)
trained, and the same seed (the data order differs: each side has its own sampler).

* ours:    utils.run_experiment(RunConfig(method="lora-fa", init="random", ...)); --ours-methods
           lora-fa,lora adds our LoRA (A trained), the like-for-like row for PEFT LoRA
* trainer: peft.get_peft_model(LoraConfig(...)) (A trained for PEFT method `lora`, frozen
           for `lora-fa`; --peft-methods runs each) + transformers.Trainer(use_cpu=True,
           bf16=...), save_strategy "no", then trainer.evaluate().

Every run is a fresh subprocess of this script (`--worker ours|trainer --dtype ...`), so its
peak RSS (VmHWM) is its own; each round runs ours (each --ours-methods) then the Trainer (each --peft-methods), --repeats rounds. Time = training + dev
evaluation (the timers of our runner, the calls to train() and evaluate() for the Trainer);
the process wall time (imports, model load, our checkpoint writes) is listed too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402
from utils.config import ADAPTER_METHODS  # noqa: E402

RANK = 4
WARMUP = 0.06
LABELS = {"lora-fa": "LoRA-FA", "lora": "LoRA"}  # ADAPTER_METHODS: A frozen or trained, for ours and for PEFT
WEIGHT_DECAY = 0.01


def default_data_dir() -> str:
    return os.environ.get("GLUE_DIR") or str(common.ROOT.parent / "shared" / "glue")


def worker_ours(args, tmp: Path) -> dict:
    """Our runner (LoRA-FA, or LoRA for --method lora); returns times, metrics and memory of one run."""
    from utils import run_experiment  # noqa: PLC0415
    from utils.config import RunConfig  # noqa: PLC0415

    cfg = RunConfig(task="mrpc", model=args.model, method=args.method, init="random", rank=RANK, lr=args.lr,
                    weight_decay=WEIGHT_DECAY, warmup_ratio=WARMUP, epochs=1, max_steps=args.max_steps,
                    batch_size=args.batch, max_length=args.max_length, clip_norm=1.0,
                    bf16=args.dtype == "bf16", seed=args.seed, data_dir=args.data_dir,
                    log_dir=str(tmp / "logs"), ckpt_dir=str(tmp / "ckpt"), overwrite=True)
    log = run_experiment(cfg, progress=False)
    s = log["summary"]
    return {"train_eval_s": s["train_time_s"] + s["eval_time_s"], "steps": s["steps"],
            "metrics": {k: v for k, v in s["final"].items() if k != "dev_loss"},
            "trainable": log["config"]["trainable_params"]}


def worker_trainer(args, tmp: Path) -> dict:
    """transformers.Trainer + PEFT LoRA on the same model, data and schedule."""
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed  # noqa: PLC0415

    from utils.data import tokenize_glue  # noqa: PLC0415
    from utils.glue import compute_metrics, get_task, load_glue  # noqa: PLC0415
    from utils.models import default_targets, load_model_and_tokenizer, set_trainable  # noqa: PLC0415

    task = get_task("mrpc")
    set_seed(args.seed)  # the new head, as in our runner (seed, then load)
    model, tokenizer = load_model_and_tokenizer(args.model, task.num_labels)
    peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=RANK, target_modules=default_targets(model),
                                                  lora_dropout=0.0))
    set_trainable(model, "lora")  # + head (and BERT pooler), exactly what our runner trains
    if args.method == "lora-fa":
        for n, p in model.named_parameters():
            if "lora_A" in n:
                p.requires_grad_(False)
    tokens = tokenize_glue(load_glue(task, args.data_dir), tokenizer, min(args.max_length, tokenizer.model_max_length))

    def metrics(pred):
        return compute_metrics(task, pred.predictions.argmax(-1), pred.label_ids)

    targs = TrainingArguments(
        output_dir=str(tmp / "trainer"), per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=2 * args.batch, learning_rate=args.lr, weight_decay=WEIGHT_DECAY,
        lr_scheduler_type="linear", warmup_steps=WARMUP, num_train_epochs=1, max_steps=args.max_steps or -1,
        max_grad_norm=1.0, optim="adamw_torch", bf16=args.dtype == "bf16", use_cpu=True, seed=args.seed,
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        dataloader_pin_memory=False, label_names=["labels"])
    trainer = Trainer(model=peft_model, args=targs, train_dataset=tokens["train"], eval_dataset=tokens["dev"],
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=metrics)
    t0 = time.perf_counter()
    out = trainer.train()
    result = trainer.evaluate()
    elapsed = time.perf_counter() - t0
    return {"train_eval_s": elapsed, "steps": out.global_step,
            "metrics": {k.removeprefix("eval_"): v for k, v in result.items() if k[5:] in task.metrics},
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def warm_token_cache(args) -> None:
    """Tokenise MRPC once in the parent (utils.data caches it on disk), so that neither timed
    process pays for tokenising; both then read the same cached token ids."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    from utils.data import tokenize_glue  # noqa: PLC0415
    from utils.glue import load_glue  # noqa: PLC0415
    from utils.model_files import resolve_model  # noqa: PLC0415

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    tokenize_glue(load_glue("mrpc", args.data_dir), tokenizer, min(args.max_length, tokenizer.model_max_length))


def run_worker(args) -> dict:
    """The `--worker` mode: one run in a temporary folder; its report with ru_maxrss added."""
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        fn = worker_ours if args.worker == "ours" else worker_trainer
        out = fn(args, Path(tmp))
    # VmHWM: this process's own peak (ru_maxrss would also count the parent's, inherited at exec)
    out.update(runner=args.worker, dtype=args.dtype, peak_rss_mib=common.peak_rss_mib(since_reset=True))
    return out


def spawn(args, worker: str, dtype: str, method: str) -> dict:
    """Run one worker subprocess; its JSON report (or {"error": ...}), labelled with its runner name."""
    name = f"{worker}-{method}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--dtype", dtype, "--model", args.model,
           "--data-dir", args.data_dir, "--batch", str(args.batch), "--max-length", str(args.max_length),
           "--lr", str(args.lr), "--seed", str(args.seed), "--method", method,
           "--threads", str(args.threads)]
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"{name}/{dtype} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return {"runner": name, "dtype": dtype, "error": proc.stderr.strip().splitlines()[-1:]}
    report = json.loads(lines[-1]) | {"runner": name}
    report["process_s"] = time.time() - t0  # includes interpreter start and imports
    return report


def table(args, reports: list[dict]) -> str:
    """One row per run; `x Trainer` is against the median Trainer + PEFT LoRA-FA run of the same dtype
    (the like-for-like reference; PEFT LoRA if that was not run), and one target line per (ours, PEFT) pair."""
    names = ({f"ours-{m}": f"ours (run_experiment, {LABELS[m]})" for m in ADAPTER_METHODS}
             | {f"trainer-{m}": f"Trainer + PEFT ({m})" for m in ADAPTER_METHODS})
    rows, lines = [], []
    for dtype in args.dtypes:
        runs = {k: [r for r in reports if r["dtype"] == dtype and r["runner"] == k and "error" not in r] for k in names}
        t = {k: common.median([r["train_eval_s"] for r in g]) for k, g in runs.items() if g}
        ref_t = t.get("trainer-lora-fa") or t.get("trainer-lora")
        for k, group in runs.items():
            for r in group:
                m = r["metrics"]
                rows.append([names[k], dtype, r["steps"], r["trainable"], r["train_eval_s"],
                             r["train_eval_s"] / ref_t if ref_t else None, r["process_s"], r["peak_rss_mib"],
                             m.get("accuracy"), m.get("f1")])
        f1 = {k: common.median([r["metrics"]["f1"] for r in g]) for k, g in runs.items() if g}
        for o, k in [(o, k) for o in t if o.startswith("ours") for k in t if k.startswith("trainer")]:
            ratio, ok = t[o] / t[k], t[o] <= t[k] and f1[o] >= f1[k]
            lines.append(f"- {dtype}: {names[o]} takes {ratio:.3f} x the time of {names[k]}, dev F1 {f1[o]:.4f} vs "
                         f"{f1[k]:.4f} (target <= 1.0 x at equal or better F1): {common.verdict(ok)}")
    for r in reports:
        if "error" in r:
            lines.append(f"- {r['runner']}/{r['dtype']} failed: {r['error']}")
    columns = ["runner", "dtype", "steps", "trainable params", "train+eval s", "x Trainer", "process s",
               "peak RSS MiB", "dev accuracy", "dev F1"]
    return "\n".join([common.markdown_table(columns, rows), "", *lines, ""])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm")
    p.add_argument("--data-dir", default=default_data_dir(), help="GLUE folder (default $GLUE_DIR or ../shared/glue)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after N steps (smoke runs)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--repeats", type=int, default=1, help="runs per (runner, dtype), alternating")
    p.add_argument("--peft-methods", default="lora,lora-fa", help="comma-separated PEFT references: lora, lora-fa")
    p.add_argument("--ours-methods", default="lora-fa", help="comma-separated runs of ours: lora-fa, lora")
    p.add_argument("--method", choices=ADAPTER_METHODS, default="lora-fa", help=argparse.SUPPRESS)  # worker mode
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in the workers (0: default)")
    p.add_argument("--out", default=str(common.RESULTS), help="folder for epoch_<dtypes>.md")
    p.add_argument("--worker", choices=["ours", "trainer"], help=argparse.SUPPRESS)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if set(args.dtypes) - {"fp32", "bf16"}:
        p.error(f"--dtypes takes fp32 and/or bf16, got {args.dtypes}")
    for flag in ("peft_methods", "ours_methods"):
        methods = [m.strip() for m in getattr(args, flag).split(",") if m.strip()]
        if not methods or set(methods) - set(ADAPTER_METHODS):
            p.error(f"--{flag.replace('_', '-')} takes {' and/or '.join(ADAPTER_METHODS)}, got {methods}")
        setattr(args, flag, methods)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        import torch  # noqa: PLC0415
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_worker(args)))
        return
    header = common.machine_header("One MRPC epoch: our runner vs Trainer + PEFT")
    warm_token_cache(args)
    reports = []
    for _ in range(args.repeats):
        for dtype in args.dtypes:
            for worker, method in [("ours", m) for m in args.ours_methods] + [("trainer", m) for m in args.peft_methods]:
                reports.append(spawn(args, worker, dtype, method))
                print(f"  {reports[-1]['runner']}/{dtype} done", file=sys.stderr, flush=True)
    settings = (f"MRPC, model {args.model}, rank {RANK}, batch {args.batch}, max length {args.max_length}, "
                f"lr {args.lr:g}, linear schedule with {WARMUP:.0%} warm-up, seed {args.seed}, "
                + (f"{args.max_steps} steps" if args.max_steps else "one epoch") + ", data " + args.data_dir)
    text = "\n".join([header, settings, "", table(args, reports)])
    path = common.write_results(Path(args.out) / f"epoch_{'_'.join(args.dtypes)}.md", text)
    print(text)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

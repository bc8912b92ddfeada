"""What each timed process of `bench/epoch.py` runs (its `--worker ours|trainer` mode): one MRPC run of
our runner, or of transformers' Trainer + PEFT on the same model, token ids and schedule; and the
parent's one tokenisation that both then read from the cache.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from utils import record

RANK = 4
WARMUP = 0.06
WEIGHT_DECAY = 0.01


def worker_ours(args, tmp: Path) -> dict:
    """Our runner (LoRA-FA, or LoRA for --method lora); returns times, metrics and memory of one run."""
    from utils import run_experiment  # noqa: PLC0415
    from utils.config import RunConfig  # noqa: PLC0415

    cfg = RunConfig(task="mrpc", model=args.model, method=args.method, init="random", rank=RANK, lr=args.lr,
                    weight_decay=WEIGHT_DECAY, warmup_ratio=WARMUP, epochs=args.epochs, max_steps=args.max_steps,
                    group_by_length=args.group, threads=args.threads or None,
                    batch_size=args.batch, max_length=args.max_length, clip_norm=1.0,
                    bf16=args.dtype == "bf16", seed=args.seed, data_dir=args.data_dir,
                    log_dir=str(tmp / "logs"), ckpt_dir=str(tmp / "ckpt"), overwrite=True)
    log = run_experiment(cfg, progress=False)
    s = log["summary"]
    return {"train_eval_s": s["train_time_s"] + s["eval_time_s"], "steps": s["steps"],
            "metrics": {k: v for k, v in s["final"].items() if k != "dev_loss"}, "dev_loss": s["final"].get("dev_loss"),
            "optimizer": "AdamW",  # utils.adapters.make_optimizer: torch.optim.AdamW
            "trainable": log["config"]["trainable_params"], "padding": s["padding_efficiency"]}


def worker_trainer(args, tmp: Path) -> dict:
    """transformers.Trainer + PEFT LoRA on the same model, data and schedule: A trained (--method lora), A frozen
    (lora-fa) or PEFT's LoRA-FA optimizer (lorafa-opt: create_lorafa_optimizer at the same lr and weight decay;
    it freezes lora_A itself; the Trainer puts its linear warm-up schedule on it)."""
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed  # noqa: PLC0415

    from utils.adapters import default_targets  # noqa: PLC0415
    from utils.data import tokenize_glue  # noqa: PLC0415
    from utils.glue import get_task, load_glue  # noqa: PLC0415
    from utils.metrics import compute_metrics  # noqa: PLC0415
    from utils.models import head_modules, load_model_and_tokenizer  # noqa: PLC0415

    task = get_task("mrpc")
    set_seed(args.seed)  # the new head, as in our runner (seed, then load)
    model, tokenizer = load_model_and_tokenizer(args.model, task.num_labels)
    peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=RANK, target_modules=default_targets(model),
                                                  lora_dropout=0.0))
    for module in head_modules(model).values():  # PEFT trains lora_A/B; + the head (and BERT pooler), as ours
        module.requires_grad_(True)
    if args.method == "lora-fa":
        for n, p in model.named_parameters():
            if "lora_A" in n:
                p.requires_grad_(False)
    optimizer = None
    if args.method == "lorafa-opt":
        from peft.optimizers import create_lorafa_optimizer  # noqa: PLC0415
        optimizer = create_lorafa_optimizer(peft_model, r=RANK, lora_alpha=RANK, lr=args.lr, weight_decay=WEIGHT_DECAY)
    tokens = tokenize_glue(load_glue(task, args.data_dir), tokenizer, min(args.max_length, tokenizer.model_max_length))

    def metrics(pred):
        return compute_metrics(task, pred.predictions.argmax(-1), pred.label_ids)

    targs = TrainingArguments(
        output_dir=str(tmp / "trainer"), per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=2 * args.batch, learning_rate=args.lr, weight_decay=WEIGHT_DECAY,
        lr_scheduler_type="linear", warmup_steps=WARMUP, num_train_epochs=args.epochs, max_steps=args.max_steps or -1,
        max_grad_norm=1.0, optim="adamw_torch", bf16=args.dtype == "bf16", use_cpu=True, seed=args.seed,
        save_strategy="no", eval_strategy="no" if args.max_steps else "epoch", logging_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_pin_memory=False, label_names=["labels"],
        train_sampling_strategy="group_by_length" if args.group else "random")
    trainer = Trainer(model=peft_model, args=targs, train_dataset=tokens["train"], eval_dataset=tokens["dev"],
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=metrics,
                      optimizers=(optimizer, None))
    t0 = time.perf_counter()
    out = trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    result = evals[-1] if evals else trainer.evaluate()  # the last epoch end's evaluation
    elapsed = time.perf_counter() - t0
    return {"train_eval_s": elapsed, "steps": out.global_step,
            "metrics": {k.removeprefix("eval_"): v for k, v in result.items() if k[5:] in task.metrics},
            "dev_loss": result.get("eval_loss"),
            "optimizer": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,  # unwrapped
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "padding": None}


def warm_token_cache(args) -> None:
    """Tokenise MRPC once in the parent (utils.data caches it on disk), so that neither timed
    process pays for tokenising; both then read the same cached token ids."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    from utils.data import tokenize_glue  # noqa: PLC0415
    from utils.glue import load_glue  # noqa: PLC0415
    from utils.models import resolve_model  # noqa: PLC0415

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    tokenize_glue(load_glue("mrpc", args.data_dir), tokenizer, min(args.max_length, tokenizer.model_max_length))


def run_worker(args) -> dict:
    """The `--worker` mode: one run in a temporary folder; its report with ru_maxrss added."""
    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:
        fn = worker_ours if args.worker == "ours" else worker_trainer
        out = fn(args, Path(tmp))
    # VmHWM: this process's own peak (ru_maxrss would also count the parent's, inherited at exec)
    out.update(runner=args.worker, dtype=args.dtype, seed=args.seed, grouped=args.group,
               peak_rss_mib=record.peak_rss_mib(since_reset=True))
    return out

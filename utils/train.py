"""`run_experiment`: one GLUE fine-tuning run, from a RunConfig to a finished JSON log.

Read top to bottom: the model is built (seeded first, so the new classification head is
reproducible), adapters are added, data is tokenised (cached), then `_train` runs AdamW
with linear warm-up/decay, gradient clipping, gradient accumulation and optional bf16
autocast. After every evaluation the log is rewritten (status "running") and a checkpoint saved
(also every `checkpoint_minutes` in between), so a killed run resumes (`resume=True`) to the same
final numbers. HF Accelerate runs the same code on a CPU, a GPU, or several processes (`torchrun` /
`accelerate launch`).
"""
from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

import lora
from utils import checkpoint as ckpt
from utils import record
from utils.adapters import adapt, linear_schedule, make_optimizer, params_hash
from utils.config import DATA_INITS, RunConfig
from utils.data import calibration_batches, eval_loader, holdout_split, tokenize_glue, train_loader
from utils.evaluate import evaluate, example_losses
from utils.glue import get_task, load_glue
from utils.logs import predictions_path, read_log, write_json_atomic
from utils.models import load_seeded
from utils.processes import from_main, holding_lock, new_accelerator, process_state


class TrainingDiverged(RuntimeError):
    """The training loss or gradient norm became NaN or infinite."""


# ---------------------------------------------------------------- one run

@dataclass
class Position:
    """Where training stands; saved with every checkpoint, so a resumed run continues exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch to continue in
    batch: int = 0  # micro-batches of that epoch already consumed (per process)
    elapsed: float = 0.0  # wall seconds spent before this attempt started
    window: list = field(default_factory=lambda: [0.0, 0.0, 0])  # loss, reg, steps since the last train_loss entry
    since_eval: list = field(default_factory=lambda: [0.0, 0.0, 0])  # the same since the last evaluation
    timers: dict = field(default_factory=lambda: {"train": 0.0, "eval": 0.0, "setup": 0.0})  # seconds
    tokens: list = field(default_factory=lambda: [0, 0])  # real and padded tokens of the training batches so far


@dataclass
class Run:
    """Everything `_train` works with (built by `_setup`)."""

    cfg: RunConfig  # canonical config
    acc: Accelerator  # devices, processes, autocast
    log: dict  # the run log, rewritten after every evaluation
    task: object = None  # utils.glue.GlueTask
    model: nn.Module = None  # prepared (wrapped for DDP under several processes)
    optimizer: object = None  # prepared AdamW
    scheduler: LambdaLR = None  # stepped once per optimizer step
    train_dl: object = None  # prepared training loader (this process's shard)
    sampler: object = None  # utils.data.EpochSampler of train_dl
    dev: dict = None  # {dev split: prepared loader}
    dev_orders: dict = None  # {dev split: row of each evaluation position} (batches sorted by length)
    holdout: dict = None  # {"holdout": prepared loader} when cfg.holdout > 0, else {}
    adapters: list = None  # LoRA parametrizations (for the B-drift regularizer)
    steps_per_epoch: int = 0  # optimizer steps per epoch
    total: int = 0  # optimizer steps of the whole run
    t0: float = field(default_factory=time.time)  # start of this attempt
    last_save: float = field(default_factory=time.time)  # when the last checkpoint was written (or t0)

    def write_log(self):
        if self.acc.is_main_process:
            write_json_atomic(self.log, self.cfg.log_path)

    def elapsed(self, pos: Position) -> float:
        return pos.elapsed + time.time() - self.t0


def run_experiment(config: RunConfig, progress: bool = True, on_eval=None) -> dict:
    """Train and evaluate one run; returns its log (see utils.logs for the schema).

    A run whose log says "finished" is skipped (its log returned) unless config.overwrite.
    With config.resume, training continues from the run's last checkpoint if there is one.
    `on_eval(log)` is called on every process after each evaluation and checkpoint (tests
    use it to interrupt a run). On failure the log is written with status "failed" and the
    error, the last checkpoint is kept, and the exception propagates (TrainingDiverged for
    a NaN/inf loss). Only one worker runs a run at a time: RunLocked (nothing run or written)
    if another live process holds its lock file (utils.locks.run_lock).
    """
    cfg = config.canonical()
    cfg.check_files()
    with holding_lock(cfg):
        return _run(cfg, progress, on_eval)


def _run(cfg: RunConfig, progress: bool, on_eval) -> dict:
    """`run_experiment` of the canonical `cfg`, under its lock."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    is_main = process_state().is_main_process
    old = from_main(read_log(cfg.log_path) if is_main and cfg.log_path.is_file() else None)
    if old is not None and old["status"] == "finished" and not cfg.overwrite:
        if progress and is_main:
            print(f"skip {cfg.run_id}: finished (log {cfg.log_path})")
        return old
    acc = new_accelerator(cfg)
    run = Run(cfg, acc, record.new_log(cfg, {}, record.environment(acc, cfg.data_dir)))
    pos = Position()
    try:
        run.write_log()
        _setup(run, progress)
        last = ckpt.latest_checkpoint(cfg.ckpt_path) if cfg.resume else None
        if last is not None:
            state = ckpt.load_checkpoint(last, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                                         accelerator=acc)
            run.log["history"], run.log["train_loss"] = state.pop("history"), state.pop("train_loss")
            run.log["resumed_from_step"] = state["step"]
            pos = Position(**{k: state[k] for k in (f.name for f in dataclasses.fields(Position)) if k in state})
        elif acc.is_main_process:
            ckpt.delete_checkpoints(cfg.ckpt_path)  # stale ones of an earlier attempt
        pos.timers["setup"] += time.time() - run.t0
        run.write_log()
        _train(run, pos, progress, on_eval)
        _finish(run, pos, progress)
        return run.log
    except BaseException as e:
        run.log["status"], run.log["error"] = "failed", f"{type(e).__name__}: {e}"
        run.log["summary"] = record.summary(run.log["history"], steps=pos.step, wall_time_s=run.elapsed(pos),
                                            peak_rss_mb=record.peak_rss_mib())
        run.write_log()
        raise


def _setup(run: Run, progress: bool) -> None:
    """Model with adapters, tokenised data, loaders, optimizer, schedule; all prepared by Accelerate."""
    cfg, acc = run.cfg, run.acc
    run.task = task = get_task(cfg.task)
    model, tokenizer = load_seeded(cfg, task.num_labels)
    max_len = min(cfg.max_length, tokenizer.model_max_length)
    with acc.main_process_first():  # the main process tokenises and caches, the others then read
        glue = load_glue(task, cfg.data_dir)
        tokens = tokenize_glue(glue, tokenizer, max_len, progress=progress and acc.is_main_process)
    keep, held = holdout_split(glue.train["label"], cfg.holdout, regression=task.is_regression)
    train = tokens["train"].select(keep) if held else tokens["train"]
    t_init = time.time()
    data = (calibration_batches(train, tokenizer, cfg.batch_size, seed=cfg.seed, n_batches=cfg.init_batches)
            if cfg.init in DATA_INITS else None)
    info = adapt(model.to(acc.device), cfg, data and [{k: v.to(acc.device) for k, v in b.items()} for b in data],
                 loss_fn=lambda m, b: example_losses(m(**{k: v for k, v in b.items() if k != "labels"}).logits,
                                                     b["labels"], task).mean())
    info["init_time_s"] = time.time() - t_init
    train_dl, run.sampler = train_loader(train, tokenizer, cfg.batch_size, cfg.seed,
                                         group_by_length=cfg.group_by_length)
    evals = {s: eval_loader(tokens[s], tokenizer, cfg.eval_bs, sort=cfg.group_by_length) for s in task.dev_splits}
    if held:
        evals["holdout"] = eval_loader(tokens["train"].select(held), tokenizer, cfg.eval_bs, sort=cfg.group_by_length)
    run.dev_orders = {s: dl.order for s, dl in evals.items()}
    prepared = acc.prepare(model, make_optimizer(model, cfg), train_dl, *evals.values())
    run.model, run.optimizer, run.train_dl = prepared[:3]
    loaders = dict(zip(evals, prepared[3:]))
    run.holdout = {"holdout": loaders.pop("holdout")} if held else {}
    run.dev = loaders
    run.steps_per_epoch = math.ceil(len(run.train_dl) / cfg.grad_accum)
    run.total = cfg.max_steps or cfg.epochs * run.steps_per_epoch
    run.scheduler = linear_schedule(run.optimizer, math.ceil(cfg.warmup_ratio * run.total), run.total)
    run.adapters = [p for _, _, p in lora.adapted_modules(acc.unwrap_model(run.model))]
    run.log["config"].update(
        **record.data_fields(glue), main_metric=task.main_metric,
        num_rows={**glue.num_rows, "train": len(keep), **({"holdout": len(held)} if held else {})},
        max_length_used=max_len, **info, processes=acc.num_processes,
        total_batch_size=cfg.batch_size * cfg.grad_accum * acc.num_processes,
        steps_per_epoch=run.steps_per_epoch, total_steps=run.total)


def _train(run: Run, pos: Position, progress: bool, on_eval) -> None:
    """The loop: micro-batches, optimizer steps, train-loss logging, evaluations + checkpoints."""
    cfg, acc, model = run.cfg, run.acc, run.model
    n_batches, ga = len(run.train_dl), cfg.grad_accum
    bar = tqdm(total=run.total, initial=pos.step, desc=cfg.run_id, dynamic_ncols=True,
               disable=not (progress and acc.is_main_process))
    for epoch in range(pos.epoch, math.ceil(run.total / run.steps_per_epoch)):
        run.sampler.set_epoch(epoch)
        run.train_dl.set_epoch(epoch)
        skip = pos.batch if epoch == pos.epoch else 0  # batches seen before the checkpoint
        batches = acc.skip_first_batches(run.train_dl, skip) if skip else run.train_dl
        model.train()
        t_train, step_loss = time.time(), torch.zeros(2)
        for b, batch in enumerate(batches, start=skip):
            group_end = min((b // ga + 1) * ga, n_batches)  # the last micro-batch of this step
            group_size = group_end - (b // ga) * ga
            with nullcontext() if b + 1 == group_end else acc.no_sync(model):
                labels = batch.pop("labels")
                mask = batch["attention_mask"]
                pos.tokens[0], pos.tokens[1] = pos.tokens[0] + int(mask.sum()), pos.tokens[1] + mask.numel()
                loss = example_losses(model(**batch).logits, labels, run.task).mean()
                reg = (cfg.reg_lambda * sum(((p.lora_B - p.lora_B0) ** 2).sum() for p in run.adapters)
                       if cfg.reg_lambda else torch.zeros((), device=loss.device))
                acc.backward((loss + reg) / group_size)  # the training objective includes reg
            step_loss += torch.stack([loss.detach().float().cpu(), reg.detach().float().cpu()]) / group_size
            if b + 1 < group_end:
                continue
            task_loss, reg_loss = acc.reduce(step_loss.to(acc.device), "mean").tolist()  # over processes
            grad_norm = float(acc.clip_grad_norm_(model.parameters(), cfg.clip_norm)) if cfg.clip_norm else 0.0
            if not all(map(math.isfinite, (task_loss, reg_loss, grad_norm))):
                raise TrainingDiverged(
                    f"training diverged at step {pos.step + 1} (epoch {epoch}): loss {task_loss}, regularizer "
                    f"{reg_loss}, gradient norm {grad_norm}; lr={cfg.lr:g}. Use a lower learning rate"
                    + (" or turn bf16 off." if cfg.bf16 else "."))
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            pos.step += 1
            step_loss = torch.zeros(2)
            for sums in (pos.window, pos.since_eval):
                sums[0], sums[1], sums[2] = sums[0] + task_loss + reg_loss, sums[1] + reg_loss, sums[2] + 1
            bar.update(1)
            if pos.step % cfg.log_every == 0 or pos.step == run.total:
                loss_mean, reg_mean = pos.window[0] / pos.window[2], pos.window[1] / pos.window[2]
                run.log["train_loss"].append({"step": pos.step, "loss": loss_mean, "reg_loss": reg_mean,
                                              "lr": run.scheduler.get_last_lr()[0]})
                bar.set_postfix(loss=f"{loss_mean:.4f}")
                pos.window = [0.0, 0.0, 0]
            epoch_end = b + 1 == n_batches
            if epoch_end or pos.step == run.total or (cfg.eval_every and pos.step % cfg.eval_every == 0):
                pos.timers["train"] += time.time() - t_train
                pos.epoch, pos.batch = (epoch + 1, 0) if epoch_end else (epoch, b + 1)
                _evaluate_and_save(run, pos)
                if progress and acc.is_main_process:  # one line per evaluation, above the bar
                    bar.write(eval_line(run.log["history"][-1], run.task.main_metric))
                if on_eval is not None:
                    on_eval(run.log)
                model.train()
                t_train = time.time()
            elif _checkpoint_due(run, pos):
                pos.timers["train"] += time.time() - t_train
                t_train = time.time()
                pos.epoch, pos.batch = epoch, b + 1
                _save(run, pos)
            if pos.step >= run.total:
                bar.close()
                return
        pos.timers["train"] += time.time() - t_train
    bar.close()


def _evaluate_and_save(run: Run, pos: Position) -> None:
    """Evaluate on the whole dev set, append to the history, rewrite the log, save a checkpoint."""
    t_eval = time.time()
    metrics, dev_loss, preds = evaluate(run.model, run.dev, run.task, run.acc, run.dev_orders)
    held = {}
    if run.holdout:
        held_metrics, held_loss, _ = evaluate(run.model, run.holdout, run.task, run.acc)
        held = {"holdout": {**held_metrics, "loss": held_loss}}
    pos.timers["eval"] += time.time() - t_eval
    loss, reg, n = pos.since_eval
    run.log["history"].append({
        "step": pos.step, "epoch": round(pos.step / run.steps_per_epoch, 6), "train_loss": loss / n,
        "reg_loss": reg / n, "lr": run.scheduler.get_last_lr()[0], "dev_loss": dev_loss, "metrics": metrics,
        **held, "time_s": run.elapsed(pos)})
    pos.since_eval = [0.0, 0.0, 0]
    run.log["summary"] = record.summary(run.log["history"], steps=pos.step, wall_time_s=run.elapsed(pos))
    run.write_log()
    if run.acc.is_main_process:
        record.save_predictions(predictions_path(run.cfg.log_path), pos.step, preds)
    _save(run, pos)


def _checkpoint_due(run: Run, pos: Position) -> bool:
    """Whether `cfg.checkpoint_minutes` have passed since the last save. Under several processes the flag
    is all-reduced (max: one process due makes all due), so every process saves at the same step."""
    if run.cfg.checkpoint_minutes is None:
        return False
    due = torch.tensor(float(time.time() - run.last_save >= 60 * run.cfg.checkpoint_minutes), device=run.acc.device)
    return bool(run.acc.reduce(due, "max")) if run.acc.num_processes > 1 else bool(due)


def _save(run: Run, pos: Position) -> None:
    """Checkpoint the run where `pos` stands (parameters, optimizer, schedule, RNG, history so far)."""
    state = {**dataclasses.asdict(pos), "elapsed": run.elapsed(pos), "run_id": run.cfg.run_id,
             "processes": run.acc.num_processes, "history": run.log["history"],
             "train_loss": run.log["train_loss"]}
    ckpt.save_checkpoint(run.cfg.ckpt_path, pos.step, model=run.model, optimizer=run.optimizer,
                         scheduler=run.scheduler, state=state, accelerator=run.acc)
    run.last_save = time.time()


def _finish(run: Run, pos: Position, progress: bool) -> None:
    """Final summary, status "finished", checkpoint removal (unless keep_checkpoint)."""
    cfg, acc = run.cfg, run.acc
    hashes = gather_object([params_hash(acc.unwrap_model(run.model))])
    run.log["summary"] = record.summary(
        run.log["history"], steps=pos.step, epochs=round(pos.step / run.steps_per_epoch, 6),
        wall_time_s=run.elapsed(pos), train_time_s=pos.timers["train"], eval_time_s=pos.timers["eval"],
        setup_time_s=pos.timers["setup"], peak_rss_mb=record.peak_rss_mib(),
        padding_efficiency=pos.tokens[0] / max(1, pos.tokens[1]),
        tokens_per_second=pos.tokens[0] * acc.num_processes / max(1e-9, pos.timers["train"]),
        peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        trainable_params=run.log["config"]["trainable_params"], param_hashes=hashes)
    run.log["status"] = "finished"
    run.write_log()
    if acc.is_main_process and not cfg.keep_checkpoint:
        ckpt.delete_checkpoints(cfg.ckpt_path)
    if progress and acc.is_main_process:
        final, metric = run.log["summary"]["final"], run.task.main_metric
        print(f"{cfg.run_id}: {metric}={final.get(metric, float('nan')):.4f} "
              f"dev_loss={final.get('dev_loss', float('nan')):.4f} ({run.log['summary']['wall_time_s']:.0f}s), "
              f"log {cfg.log_path}")


def eval_line(entry: dict, metric: str) -> str:
    """One history entry as the line printed after each evaluation (step, dev loss, main metric)."""
    return (f"step {entry['step']} (epoch {entry['epoch']:.2f}): dev_loss={entry['dev_loss']:.4f} "
            f"{metric}={entry['metrics'].get(metric, float('nan')):.4f}")

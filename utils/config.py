"""`RunConfig`: every setting of one GLUE fine-tuning run, and the run id derived from it.

The CLI (`run_glue.py`) has one flag per field, named after it (`max_steps` -> `--max-steps`),
with the comment after the field as its help text. `run_id` names the log file
`<log_dir>/<task>/<run_id>.json` and the checkpoint folder `<ckpt_dir>/<task>/<run_id>/`:

    mrpc_minilm_lora-fa_svd_r4_lr0.0005_s0_3f2a9c1d

task, model short name, method, init, rank, lr and seed are spelled out; the last part is a
hash of every other setting that changes results (paths and run-control fields do not).
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from lora import DATA_INITS, INITS, SVD_METHODS
from utils.glue import DataNotFoundError, get_task

METHODS = ("lora-fa", "lora", "head", "full")  # lora-fa: A frozen; head: classifier only
ADAPTER_METHODS = ("lora-fa", "lora")
# A run names its SVD solver; "auto" is the library's choice alone (krylov, or full for small matrices).
# Every committed log ran ARPACK Lanczos and wrote it as "auto": readers take a logged "auto" as
# "lanczos" (`with_legacy_defaults`) and the run id hashes "lanczos" under that old spelling, so the
# ids of committed logs are unchanged and they resume.
RUN_SVD_METHODS = tuple(m for m in SVD_METHODS if m != "auto")
LOGGED_SVD_AUTO = "lanczos"
NAME_FIELDS = ("task", "model", "method", "init", "rank", "lr", "seed")  # spelled out in run_id
PATH_FIELDS = ("data_dir", "log_dir", "ckpt_dir")  # where files are; logs record them as given (utils.record)
RUN_CONTROL = PATH_FIELDS + ("resume", "overwrite", "keep_checkpoint", "checkpoint_minutes", "threads")  # how and where, not what
UNHASHED_FIELDS = PATH_FIELDS + ("resume", "overwrite", "keep_checkpoint", "checkpoint_minutes",
                                 "eval_batch_size", "log_every", "threads")  # never change what a run computes
# Fields added after the first logs were written, with the value every older run used. A field
# at its legacy value is left out of the run id's hash, so the ids of committed logs stay valid,
# and readers fill a log that lacks the field with this value (`with_legacy_defaults`).
LEGACY_DEFAULTS = {"group_by_length": False, "holdout": 0.0, "init_batches": None, "threads": None}
FLOAT_FIELDS = ("alpha", "lora_dropout", "lr", "weight_decay", "warmup_ratio", "clip_norm", "reg_lambda",
                "holdout")


@dataclass
class RunConfig:
    """One run: what to train, how to optimise, when to evaluate, where files go."""

    # -- what to train
    task: str = "mrpc"  # GLUE task: cola sst2 mrpc qqp stsb mnli qnli rte wnli
    model: str = "minilm"  # hub id, local folder, or alias minilm / mpnet
    method: str = "lora-fa"  # lora-fa (A frozen, B trained), lora (A and B), head (head only), full
    init: str = "random"  # adapter init: random svd pissa milora seed eva grad ("none" for head/full)
    rank: int = 4  # adapter rank r (0 for head/full)
    alpha: float | None = None  # scaling s = alpha/rank; none: lora's default (alpha=rank; 1 for seed)
    targets: list[str] | None = None  # module-name suffixes to adapt; none: Q, K, V, O of every layer
    lora_dropout: float = 0.0  # dropout on the adapter input
    svd_method: str = "lanczos"  # SVD solver for the SVD inits: lanczos (every logged run) krylov full randomized
    train_head: bool = True  # lora/lora-fa: also train the classification head (and BERT's pooler)
    train_biases: bool = False  # also train every bias (BitFit-style)
    # -- optimisation
    lr: float = 1e-3  # peak learning rate (AdamW)
    weight_decay: float = 0.01  # AdamW weight decay (biases, LayerNorm weights and adapter factors get none)
    warmup_ratio: float = 0.06  # fraction of the steps with linear warm-up; then linear decay to 0
    epochs: int = 3  # passes over the training set
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    batch_size: int = 32  # training batch per process (x grad_accum x processes per step)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_length: int = 128  # truncate inputs to this many tokens; padding is per batch
    clip_norm: float | None = 1.0  # clip the gradient norm to this; none or 0: no clipping
    bf16: bool = False  # bf16 autocast (weights and optimizer state stay float32)
    reg_lambda: float = 0.0  # lambda of lambda*sum ||B - B0||_F^2, added to the training loss only
    seed: int = 0  # seeds python/numpy/torch, the new head, random A, and the data order
    group_by_length: bool = True  # batches of similar length (seeded, random batch order); off: plain shuffle
    init_batches: int | None = 8  # eva/grad inits: training batches drawn with the seed to compute A from
    # -- evaluation and logging
    eval_every: int | None = None  # also evaluate every N optimizer steps; none: at epoch ends only
    holdout: float = 0.0  # fraction of train held out (seeded by task only, label-stratified), evaluated next to dev
    eval_batch_size: int | None = None  # dev batch size; none: 2 x batch_size
    log_every: int = 10  # log the mean training loss every N optimizer steps
    # -- files
    data_dir: str | None = None  # GLUE folder (glue_data layout); none: $GLUE_DIR, else the HF hub
    log_dir: str = "logs"  # the log goes to <log_dir>/<task>/<run_id>.json
    ckpt_dir: str = "checkpoints"  # checkpoints go to <ckpt_dir>/<task>/<run_id>/ (gitignored)
    # -- run control (not part of run_id)
    resume: bool = False  # continue from the run's last checkpoint, if there is one
    overwrite: bool = False  # rerun a run whose log says finished (default: skip it)
    keep_checkpoint: bool = False  # keep the last checkpoint when the run finishes
    checkpoint_minutes: float | None = None  # also checkpoint (no evaluation) once this long after the last save
    threads: int | None = None  # torch intra-op threads; none: torch's default

    # ------------------------------------------------------------------ derived
    def canonical(self) -> RunConfig:
        """Validated copy with the task name normalised, float fields as floats (alpha=8 and
        alpha=8.0 are one run) and, for head/full, init "none", rank 0."""
        self.validate()
        floats = {k: float(getattr(self, k)) for k in FLOAT_FIELDS if getattr(self, k) is not None}
        cfg = dataclasses.replace(self, task=get_task(self.task).name, **floats)
        if cfg.method not in ADAPTER_METHODS:
            cfg = dataclasses.replace(cfg, init="none", rank=0, alpha=None, targets=None,
                                      lora_dropout=0.0, svd_method=LOGGED_SVD_AUTO)
        if cfg.init not in DATA_INITS:
            cfg = dataclasses.replace(cfg, init_batches=None)
        if cfg.targets is not None:
            cfg.targets = list(cfg.targets)
        return cfg

    @property
    def run_id(self) -> str:
        """`<task>_<model>_<method>_<init>_r<rank>_lr<lr>_s<seed>_<hash of the rest>`."""
        cfg = self.canonical()
        rest = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k not in NAME_FIELDS + UNHASHED_FIELDS and not (k in LEGACY_DEFAULTS and v == LEGACY_DEFAULTS[k])}
        rest["model"] = cfg.model  # the short name alone could collide (two folders named "model")
        if rest["svd_method"] == LOGGED_SVD_AUTO:  # hashed as the committed logs wrote it
            rest["svd_method"] = "auto"
        digest = hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]
        return (f"{cfg.task}_{model_short_name(cfg.model)}_{cfg.method}_{cfg.init}_r{cfg.rank}"
                f"_lr{cfg.lr:g}_s{cfg.seed}_{digest}")

    @property
    def log_path(self) -> Path:
        return Path(self.log_dir) / get_task(self.task).name / f"{self.run_id}.json"

    @property
    def ckpt_path(self) -> Path:
        return Path(self.ckpt_dir) / get_task(self.task).name / self.run_id

    @property
    def eval_bs(self) -> int:
        return self.eval_batch_size or 2 * self.batch_size

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the bad setting and the valid choices."""
        get_task(self.task)  # ValueError listing the valid task names

        def need(ok, msg):
            if not ok:
                raise ValueError(msg)

        need(self.method in METHODS, f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method in ADAPTER_METHODS:
            need(self.init in INITS, f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
            need(isinstance(self.rank, int) and self.rank >= 1, f"rank must be an integer >= 1, got {self.rank!r}")
            need(self.svd_method in RUN_SVD_METHODS, f"unknown svd_method {self.svd_method!r}; "
                                                     f"choose one of {', '.join(RUN_SVD_METHODS)}")
            need(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
            need(self.alpha is None or self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        else:
            need(self.init in INITS + ("none",), f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
            need(self.reg_lambda == 0, f"reg_lambda needs adapters; method {self.method!r} has none")
        need(math.isfinite(self.lr) and self.lr > 0, f"lr must be a finite number > 0, got {self.lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        need(self.max_steps is not None or self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        for name in ("batch_size", "grad_accum", "log_every"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.eval_every is None or self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        need(self.checkpoint_minutes is None or self.checkpoint_minutes >= 0,
             f"checkpoint_minutes must be >= 0 (0: after every optimizer step), got {self.checkpoint_minutes}")
        need(self.eval_batch_size is None or self.eval_batch_size >= 1,
             f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        need(self.max_length >= 8, f"max_length must be >= 8, got {self.max_length}")
        need(self.clip_norm is None or self.clip_norm >= 0, f"clip_norm must be >= 0, got {self.clip_norm}")
        need(self.reg_lambda >= 0, f"reg_lambda must be >= 0, got {self.reg_lambda}")
        need(0 <= self.holdout < 1, f"holdout must be in [0, 1), got {self.holdout}")
        need(self.threads is None or self.threads >= 1, f"threads must be >= 1, got {self.threads}")
        if self.method in ADAPTER_METHODS and self.init in DATA_INITS:
            need(self.init_batches is not None and self.init_batches >= 1,
                 f"init {self.init!r} needs init_batches >= 1, got {self.init_batches}")

    def check_files(self) -> None:
        """Raise DataNotFoundError if data_dir is given but is not a folder (before any run starts)."""
        if self.data_dir is not None and not Path(self.data_dir).expanduser().is_dir():
            raise DataNotFoundError(f"data_dir {self.data_dir!r} does not exist; it must be a GLUE folder "
                                    f"in the glue_data layout (<dir>/MRPC/train.tsv, ...), e.g. ../shared/glue")


def with_legacy_defaults(config: dict) -> dict:
    """A logged config with every field it lacks filled in as older runs ran it (LEGACY_DEFAULTS), and a
    logged svd_method "auto" read as the solver it ran (`LOGGED_SVD_AUTO`)."""
    out = {**LEGACY_DEFAULTS, **config}
    if out.get("svd_method") == "auto":
        out["svd_method"] = LOGGED_SVD_AUTO
    return out


def model_short_name(model: str) -> str:
    """A file-name-safe short model name: the alias, folder name, or the part after the hub org."""
    name = Path(str(model).rstrip("/")).name or str(model)
    return re.sub(r"[^A-Za-z0-9.-]+", "-", name).strip("-").lower() or "model"


def field_help() -> dict[str, str]:
    """{field: the comment after it in RunConfig's source}, used as the CLI help text."""
    out = {}
    for line in inspect.getsource(RunConfig).splitlines():
        m = re.match(r"\s+(\w+): [^#]+#\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def cli_args(cfg: RunConfig) -> list[str]:
    """`run_glue.py` flags that rebuild `cfg`: one per field that differs from RunConfig's default,
    except the run-control and path fields (`RUN_CONTROL`, which a caller sets itself); booleans as
    `--x` / `--no-x`, None as `none`, lists as several values."""
    out = []
    for f in dataclasses.fields(RunConfig):
        value = getattr(cfg, f.name)
        if f.name in RUN_CONTROL or value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            out += [flag, *map(str, value)]
        else:
            out += [flag, "none" if value is None else repr(value) if isinstance(value, float) else str(value)]
    return out

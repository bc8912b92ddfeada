"""Helpers shared by the benchmark scripts in bench/.

* `machine_header` / `write_results`: every results file starts with the machine
  (CPU model, cores, torch version and threads, load, date) and the exact command; paths in them
  are relative or "$GLUE_DIR" (`command_line`, `data_dir_as_given`), never this machine's.
* `markdown_table`, `fmt`: plain markdown tables.
* `load_model`: a sequence-classification encoder by alias (`minilm`, `mpnet`), or
  `tiny`, a random 2-layer BERT built in-process for smoke runs.
* `saved_storages`, `saved_tensor_bytes`: what autograd keeps for backward, counted per storage.
* `median`, `paired_ratio`: robust summaries of interleaved timings.
The memory of the running process and the git commit come from `utils.record`.

Run the scripts from the repository root (`python bench/step.py ...`); they put the
root on sys.path themselves so `lora` and `utils` import.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


# --- results files ---------------------------------------------------------------------------
def cpu_model() -> str:
    """The 'model name' line of /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line() -> str:
    """The command that started this process, shell-quoted, as it could be re-run; paths as a run log
    records them (`utils.record.portable_argv`: inside the repository relative, $GLUE_DIR's as "$GLUE_DIR/...")."""
    from utils.glue import local_data_dir  # noqa: PLC0415
    from utils.record import portable_argv  # noqa: PLC0415

    argv = portable_argv(sys.argv, local_data_dir())
    unquoted = [a for a in argv if a.startswith("$GLUE_DIR") and shlex.quote(a[1:]) == a[1:]]  # expands on re-run
    return " ".join(a if a in unquoted else shlex.quote(a) for a in [Path(sys.executable).name, *argv])


def data_dir_as_given(data_dir) -> str:
    """The GLUE data that `utils.glue.load_glue(task, data_dir)` reads, as a results file names it:
    "$GLUE_DIR", the folder as given (`utils.record.portable_path`), or the HF hub."""
    from utils.glue import HUB_NAME, local_data_dir  # noqa: PLC0415
    from utils.record import portable_path  # noqa: PLC0415

    local = local_data_dir(data_dir)
    return portable_path(local[1]) if local else f"hub:{HUB_NAME}"


def machine_header(title: str) -> str:
    """Markdown header: title, machine, software, load, date and the exact command line."""
    load = load_average()
    import transformers  # noqa: PLC0415 (heavy; only the scripts need it)

    from utils.record import git_commit  # noqa: PLC0415
    try:
        import peft  # noqa: PLC0415
        peft_version = peft.__version__
    except ImportError:
        peft_version = "not installed"
    return "\n".join([
        f"# {title}",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        f"- software: Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, peft {peft_version}",
        f"- thread settings: {thread_env()}",
        f"- load average at start (1, 5, 15 min): {load}",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}, commit {git_commit()}",
        f"- command: `{command_line()}`",
        "",
    ])


def thread_env() -> str:
    """The thread-count environment variables that are set (they also bind numpy/scipy's BLAS)."""
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    return ", ".join(f"{n}={os.environ[n]}" for n in names if n in os.environ) or "none set"


def write_results(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    return path


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """A markdown table of `rows` (`utils.report.to_markdown`): cells by `fmt`, numbers right-aligned."""
    import pandas as pd

    from utils.report import to_markdown
    return to_markdown(pd.DataFrame(rows, columns=columns, dtype=object), fmt=fmt, align_numbers=True).rstrip("\n")


def fmt(x, digits: int = 3) -> str:
    """Numbers with `digits` significant digits (ints with thousands separators)."""
    if isinstance(x, bool) or x is None:
        return "n/a" if x is None else str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if x != x:
            return "n/a"
        if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e6):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"
    return str(x)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


# --- models ------------------------------------------------------------------------------------
def tiny_bert(seq: int = 128, num_labels: int = 2, seed: int = 0):
    """A random 2-layer BERT classifier (hidden 32, 4 heads, MLP 37, vocab 200), built in-process."""
    from transformers import BertConfig, BertForSequenceClassification  # noqa: PLC0415

    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=max(64, seq + 2),
                        num_labels=num_labels)
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


def load_model(name: str, *, seq: int = 128, seed: int = 0):
    """`tiny` (in-process random BERT) or a name for utils.models.load_model_and_tokenizer.

    The head of the sentence-transformers checkpoints is new: it is seeded with `seed`.
    """
    if name == "tiny":
        return tiny_bert(seq=seq, seed=seed)
    from transformers import set_seed  # noqa: PLC0415

    from utils.models import load_model_and_tokenizer  # noqa: PLC0415
    set_seed(seed)
    model, _ = load_model_and_tokenizer(name, num_labels=2)
    return model


def embeddings_module(model):
    """The encoder's embeddings module (BERT `bert.embeddings`, MPNet `mpnet.embeddings`, ...)."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), None) or model
    emb = getattr(base, "embeddings", None)
    if emb is None:
        raise ValueError(f"{type(model).__name__} has no <prefix>.embeddings module")
    return emb


def _require_grad_hook(module, args, output):
    if not output.requires_grad:
        output.requires_grad_(True)
    return output


def make_embeddings_output_require_grad(model):
    """Forward hook on the embeddings: their output requires grad, so backward runs through every
    encoder layer (input gradients) even when no encoder weight trains. With trainable embeddings
    (full fine-tuning) the output already requires grad and the hook changes nothing."""
    return embeddings_module(model).register_forward_hook(_require_grad_hook)


# --- measurements ------------------------------------------------------------------------------
def storage_key(t: torch.Tensor):
    """(data_ptr, nbytes) of the storage behind `t`, or None (no storage, e.g. a tensor subclass)."""
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return (s.data_ptr(), s.nbytes()) if s.data_ptr() else None


def model_storages(model) -> set[int]:
    """data_ptrs of the storages of every parameter and buffer of `model`."""
    keys = (storage_key(t) for t in [*model.parameters(), *model.buffers()])
    return {k[0] for k in keys if k is not None}


def saved_storages(fn):
    """Run `fn()` (a forward) and record what autograd saves for backward: (result of fn,
    {storage data_ptr: nbytes}).

    Every tensor that autograd packs goes through a `saved_tensors_hooks` pack hook; each
    storage is recorded once (key: untyped_storage().data_ptr(), bytes: its nbytes()), so
    views and tensors saved by several nodes cost what they really hold.
    """
    seen: dict[int, int] = {}

    def pack(t):
        k = storage_key(t)
        if k is not None:
            seen[k[0]] = max(seen.get(k[0], 0), k[1])
        # detach(): a saved *output* handed back as is would hold its own grad_fn, a reference
        # cycle between the graph and the tensor that Python's GC cannot see (the whole graph
        # and its activations leak). The detached tensor shares the storage, so backward still works.
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, seen


def saved_tensor_bytes(fn, exclude: set[int] = frozenset()):
    """`saved_storages` of `fn()` summed: (result of fn, total bytes, bytes of storages whose data_ptr
    is not in `exclude`); pass `model_storages(model)` as `exclude` to get the activations only."""
    result, seen = saved_storages(fn)
    total = sum(seen.values())
    activations = sum(n for p, n in seen.items() if p not in exclude)
    return result, total, activations


def median(xs) -> float:
    return float(statistics.median(xs))


def iqr(xs) -> float:
    """Interquartile range (0 for fewer than 2 values)."""
    if len(xs) < 2:
        return 0.0
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return float(q[2] - q[0])


def paired_ratio(xs, refs) -> float:
    """Median of the per-round ratios x_i / ref_i: drift that hits a round hits both."""
    return median([x / r for x, r in zip(xs, refs)])


def add_run_args(parser, variants=None, out_help="folder for the results table", thread_list=None):
    """The flags every bench script shares: --seed, --threads, --variants (if `variants`), --out.

    thread_list: a default such as "1,2" makes --threads a comma-separated list of thread counts
    that the script measures in turn (`thread_counts` parses it)."""
    parser.add_argument("--seed", type=int, default=0)
    if thread_list is None:
        parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    else:
        parser.add_argument("--threads", default=thread_list, help="comma-separated torch.set_num_threads "
                            f"values, measured in turn (default {thread_list})")
    if variants is not None:
        parser.add_argument("--variants", default=",".join(variants), help="comma-separated subset of the rows")
    parser.add_argument("--out", default=str(RESULTS), help=out_help)


def set_threads(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def thread_counts(parser, text) -> list[int]:
    """The comma-separated `--threads` list as positive ints; anything else is a parser error."""
    try:
        counts = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        parser.error(f"--threads takes a comma-separated list of positive thread counts, got {text!r}")
    return counts


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. '0.05, 0.10, 0.20'."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def split_variants(parser, text, choices):
    """The comma-separated `--variants` value as a list; an unknown name is a parser error."""
    variants = [v.strip() for v in text.split(",") if v.strip()]
    unknown = set(variants) - set(choices)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(choices)}")
    return variants

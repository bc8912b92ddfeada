"""GLUE tasks: the task table and strict loading of the classic glue_data TSV files (their metrics:
`utils.metrics`).

Data comes from, in this order: an explicit `data_dir`, the `GLUE_DIR` environment
variable (absolute, or relative to the working directory), the folder `../shared/glue` next to
this repository (`SHARED_GLUE`), or the Hugging Face hub (`nyu-mll/glue`). A local folder must use the layout
of the classic `download_glue_data.py` script (`<dir>/CoLA/train.tsv`, `<dir>/STS-B/dev.tsv`,
...). Only train and dev files are read: test files have no labels, and model selection
is done on dev.

Every split becomes a `datasets.Dataset` with the columns `sentence1`, (`sentence2` for
sentence-pair tasks) and `label` (int64 class ids as in HF `nyu-mll/glue`; float64 for
STS-B). Parsing is strict: any malformed row raises `GlueFormatError` naming file and line.
"""
from __future__ import annotations

import math
import os
import socket
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import datasets

HUB_NAME = "nyu-mll/glue"
# The shared GLUE folder next to a checkout (`<dir>/<repo>` beside `<dir>/shared/glue`): found without
# any setting. Tests monkeypatch it to test the hub path.
SHARED_GLUE = Path(__file__).resolve().parents[2] / "shared" / "glue"


class GlueFormatError(ValueError):
    """A GLUE file does not have the expected format (message: `<path>:<line>: <problem>`)."""


class DataNotFoundError(RuntimeError):
    """No GLUE data could be found locally or on the hub; the message says how to get it."""


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: where its files are, how to read them, how to score it."""

    name: str  # lowercase key in TASKS, e.g. "stsb"
    folder: str  # task folder in the glue_data layout, e.g. "STS-B"
    text_columns: tuple[str | int, ...]  # 1-2 text columns: header names, or indices if no header
    label_column: str | int  # label column, same convention as text_columns
    label_map: Mapping[str, int] | None = field(hash=False)  # raw label -> HF class id; None = regression
    label_names: tuple[str, ...]  # class names by id (HF ClassLabel names); () for regression
    num_labels: int  # number of classes; 1 for regression (STS-B)
    metrics: tuple[str, ...]  # metric names that compute_metrics returns (METRICS)
    main_metric: str  # the metric used for model selection (one of `metrics`)
    hub_config: str  # config name in nyu-mll/glue
    hub_text_columns: tuple[str, ...]  # hub text columns, renamed to sentence1/sentence2
    has_header: bool = True  # False only for CoLA train/dev
    num_columns: int | None = None  # column count of headerless files; else the header's length
    dev_files: tuple[str, ...] = ("dev.tsv",)  # dev file(s); MNLI: matched and mismatched
    train_file: str = "train.tsv"  # training file name

    @property
    def title(self) -> str:
        """The task's name as GLUE spells it (its folder's name), for tables and titles: "CoLA", "SST-2"."""
        return self.folder

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def dev_splits(self) -> tuple[str, ...]:
        """Keys of GlueData.dev: the dev file stems, e.g. ("dev",) or ("dev_matched", "dev_mismatched")."""
        return tuple(f.removesuffix(".tsv") for f in self.dev_files)


def _labels(*names: str, raw: Sequence[str] | None = None) -> dict:
    """label_map/label_names kwargs: class i is names[i]; raw[i] is its spelling in the TSV."""
    raw = names if raw is None else raw
    return dict(label_map=MappingProxyType({r: i for i, r in enumerate(raw)}),
                label_names=tuple(names), num_labels=len(names))


_BIN = ("0", "1")
_NLI2 = _labels("entailment", "not_entailment")
# Main metrics follow the GLUE paper's first-listed metric per task: CoLA Matthews corr.,
# MRPC/QQP F1, STS-B Pearson, accuracy elsewhere (MNLI: per dev set). compute_metrics also
# returns the secondary ones (accuracy for MRPC/QQP, Spearman for STS-B).
TASKS: dict[str, GlueTask] = {t.name: t for t in [
    GlueTask("cola", "CoLA", (3,), 1, **_labels("unacceptable", "acceptable", raw=_BIN),
             metrics=("mcc",), main_metric="mcc", hub_config="cola",
             hub_text_columns=("sentence",), has_header=False, num_columns=4),
    GlueTask("sst2", "SST-2", ("sentence",), "label", **_labels("negative", "positive", raw=_BIN),
             metrics=("accuracy",), main_metric="accuracy", hub_config="sst2",
             hub_text_columns=("sentence",)),
    GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality",
             **_labels("not_equivalent", "equivalent", raw=_BIN),
             metrics=("accuracy", "f1"), main_metric="f1", hub_config="mrpc",
             hub_text_columns=("sentence1", "sentence2")),
    GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate",
             **_labels("not_duplicate", "duplicate", raw=_BIN),
             metrics=("accuracy", "f1"), main_metric="f1", hub_config="qqp",
             hub_text_columns=("question1", "question2")),
    GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", label_map=None,
             label_names=(), num_labels=1, metrics=("pearson", "spearman"),
             main_metric="pearson", hub_config="stsb", hub_text_columns=("sentence1", "sentence2")),
    GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label",
             **_labels("entailment", "neutral", "contradiction"),
             metrics=("accuracy",), main_metric="accuracy", hub_config="mnli",
             hub_text_columns=("premise", "hypothesis"),
             dev_files=("dev_matched.tsv", "dev_mismatched.tsv")),
    GlueTask("qnli", "QNLI", ("question", "sentence"), "label", **_NLI2,
             metrics=("accuracy",), main_metric="accuracy", hub_config="qnli",
             hub_text_columns=("question", "sentence")),
    GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", **_NLI2,
             metrics=("accuracy",), main_metric="accuracy", hub_config="rte",
             hub_text_columns=("sentence1", "sentence2")),
    GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label",
             **_labels("not_entailment", "entailment", raw=_BIN),
             metrics=("accuracy",), main_metric="accuracy", hub_config="wnli",
             hub_text_columns=("sentence1", "sentence2")),
]}


def get_task(name: str | GlueTask) -> GlueTask:
    """Look a task up by (case-insensitive) name; a GlueTask is returned unchanged."""
    if isinstance(name, GlueTask):
        return name
    key = str(name).lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; valid names: {', '.join(TASKS)}")
    return TASKS[key]


# ---------------------------------------------------------------- reading TSV files

def _features(task: GlueTask) -> datasets.Features:
    cols = {f"sentence{i + 1}": datasets.Value("string") for i in range(len(task.text_columns))}
    cols["label"] = datasets.Value("float64" if task.is_regression else "int64")
    return datasets.Features(cols)


def _parse_label(task: GlueTask, raw: str, where: str) -> int | float:
    if task.label_map is None:
        try:
            value = float(raw)
        except ValueError:
            raise GlueFormatError(f"{where}: score {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise GlueFormatError(f"{where}: score {raw!r} is not finite")
        return value
    if raw not in task.label_map:
        raise GlueFormatError(f"{where}: unknown label {raw!r}, expected one of {list(task.label_map)}")
    return task.label_map[raw]


def read_tsv(path: str | Path, task: str | GlueTask) -> dict[str, list]:
    """Read one labelled GLUE TSV file strictly into {"sentence1": [...], ..., "label": [...]}.

    Fields are split on tab only (no CSV quoting: sentences contain bare `"`), a UTF-8 BOM
    is ignored, the final newline is optional, text is kept verbatim (SST-2 has trailing
    spaces). Empty lines are skipped; every other line must be a complete row.
    """
    task, path = get_task(task), Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise GlueFormatError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
    lines = [ln.removesuffix("\r") for ln in text.split("\n")]  # not splitlines(): \u2028 is text
    columns = list(task.text_columns) + [task.label_column]
    start, n_cols = 0, task.num_columns
    if task.has_header:
        header, start = lines[0].split("\t"), 1
        n_cols = len(header)
        missing = [c for c in columns if c not in header]
        if missing:
            raise GlueFormatError(f"{path}:1: header {header} lacks column(s) {missing}")
        columns = [header.index(c) for c in columns]
    out: dict[str, list] = {name: [] for name in _features(task)}
    for lineno, line in enumerate(lines[start:], start=start + 1):
        if not line:
            continue
        where = f"{path}:{lineno}"
        fields = line.split("\t")
        if len(fields) != n_cols:
            raise GlueFormatError(f"{where}: expected {n_cols} tab-separated columns, got {len(fields)}")
        *texts, label = (fields[c] for c in columns)
        for i, t in enumerate(texts):
            if not t.strip():
                raise GlueFormatError(f"{where}: empty text in column {task.text_columns[i]!r}")
            out[f"sentence{i + 1}"].append(t)
        out["label"].append(_parse_label(task, label, where))
    # Independent count on the raw bytes: every non-empty data line must have become a row.
    expected = sum(1 for b in raw.split(b"\n") if b.strip(b"\r")) - task.has_header
    if len(out["label"]) != expected:
        raise GlueFormatError(f"{path}: read {len(out['label'])} rows but the file has {expected} data lines")
    return out


# ---------------------------------------------------------------- loading a task

@dataclass
class GlueData:
    """The train and dev splits of one task, plus where they came from."""

    task: GlueTask
    train: datasets.Dataset
    dev: dict[str, datasets.Dataset]  # keyed by task.dev_splits: {"dev": ...} or MNLI's two
    source: str  # "local:<abs dir>" or "hub:nyu-mll/glue"
    files: dict[str, str]  # split -> absolute file path (local) or "nyu-mll/glue/<config>:<split>"
    num_rows: dict[str, int]  # split -> rows read
    given_dir: str | None = None  # the local folder as the user gave it (`local_data_dir`); None: the hub


def local_data_dir(data_dir: str | Path | None = None) -> tuple[Path, str] | None:
    """The local GLUE folder `load_glue(task, data_dir)` reads: (absolute path, the folder as the user
    gave it: `data_dir` as typed, "$GLUE_DIR" when it comes from that variable, or `SHARED_GLUE`
    relative to the working directory, e.g. "../shared/glue"). None: the hub.
    The one lookup of the runner, the notebooks (`utils.notebooks`) and the tests."""
    if data_dir is None:
        data_dir = os.environ.get("GLUE_DIR") or None
        given = "$GLUE_DIR"
        if data_dir is None and SHARED_GLUE.is_dir():
            return SHARED_GLUE, os.path.relpath(SHARED_GLUE)  # recorded relative: no machine path in a log
    else:
        given = str(data_dir)
    return None if data_dir is None else (Path(data_dir).expanduser().resolve(), given)


def load_glue(task: str | GlueTask, data_dir: str | Path | None = None) -> GlueData:
    """Load train + dev of `task` from `data_dir`, else $GLUE_DIR, else the HF hub."""
    task = get_task(task)
    local = local_data_dir(data_dir)
    return _load_hub(task) if local is None else _load_local(task, *local)


def _load_local(task: GlueTask, data_dir: Path, given_dir: str) -> GlueData:
    if not data_dir.is_dir():
        raise DataNotFoundError(
            f"GLUE data dir {data_dir} does not exist (from --data-dir or GLUE_DIR); it must hold "
            f"the classic glue_data layout, e.g. {data_dir / task.folder / task.train_file}")
    splits = {"train": task.train_file, **dict(zip(task.dev_splits, task.dev_files))}
    paths = {split: data_dir / task.folder / name for split, name in splits.items()}
    for path in paths.values():
        if not path.is_file():
            raise DataNotFoundError(
                f"GLUE task {task.name!r}: expected file {path} is missing in data dir {data_dir}")
    feats = _features(task)
    data = {s: datasets.Dataset.from_dict(read_tsv(p, task), features=feats) for s, p in paths.items()}
    return _glue_data(task, data, f"local:{data_dir}", {s: str(p) for s, p in paths.items()}, given_dir)


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached, found within `timeout` seconds (None: it accepts a connection):
    offline mode is set, or its endpoint refuses a TCP connection. `datasets` itself retries for about
    a minute before it gives up."""
    from huggingface_hub import constants  # noqa: PLC0415 (a dependency of datasets)

    if constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return "offline mode is set (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)"
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
    except OSError as e:
        return f"no connection to {url.hostname}: {type(e).__name__}: {e}"
    return None


def _no_data(task: GlueTask, why: str) -> DataNotFoundError:
    """The one error for GLUE data that is neither local nor on the hub, saying how to get it."""
    return DataNotFoundError(
        f"could not load GLUE task {task.name!r} from the Hugging Face hub ({HUB_NAME}, config "
        f"{task.hub_config!r}): {why}\nNo local data was found: pass --data-dir or set GLUE_DIR to a folder "
        f"in the classic glue_data layout (<dir>/{task.folder}/{task.train_file}, ...), e.g. ../shared/glue "
        "(a shared/glue folder beside this repository's folder is found without either)")


def _load_hub(task: GlueTask) -> GlueData:
    splits = ["train", *task.dev_splits]
    hub_splits = [s.replace("dev", "validation") for s in splits]
    why = hub_unreachable()
    if why is not None:  # fail at once, not after the hub client's retries
        raise _no_data(task, why)
    try:
        loaded = datasets.load_dataset(HUB_NAME, task.hub_config, split=hub_splits)
    except Exception as e:  # hub reachable but the load failed (auth, a server error, ...): one actionable message
        raise _no_data(task, f"{type(e).__name__}: {e}") from e
    renames = {c: f"sentence{i + 1}" for i, c in enumerate(task.hub_text_columns)}
    data = {s: ds.select_columns([*renames, "label"]).rename_columns(renames).cast(_features(task))
            for s, ds in zip(splits, loaded)}
    return _glue_data(task, data, f"hub:{HUB_NAME}",
                      {s: f"{HUB_NAME}/{task.hub_config}:{h}" for s, h in zip(splits, hub_splits)})


def _glue_data(task: GlueTask, data: dict[str, datasets.Dataset], source: str,
               files: dict[str, str], given_dir: str | None = None) -> GlueData:
    num_rows = {s: len(d) for s, d in data.items()}
    return GlueData(task, data.pop("train"), data, source, files, num_rows, given_dir)

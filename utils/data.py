"""Tokenised GLUE splits (cached on disk) and the data loaders of a run.

`tokenize_glue` turns the `GlueData` of `utils.glue.load_glue` into token ids, truncated
at `max_length` but NOT padded: `DataCollatorWithPadding` pads each batch to its own
longest row. The result is saved with `datasets.save_to_disk` under
`<cache>/tokenized/<task>-<key>/` (`<cache>`: $LORA_FA_CACHE, else ~/.cache/lora-fa), so
a second run with the same tokenizer, task, max_length and data files skips tokenising.

The training order is drawn from (seed, epoch) alone, so the batches of any epoch can be
recomputed: a resumed run skips the batches it has already seen and continues with exactly
the ones an uninterrupted run would have used. Two orders exist:

* `LengthGroupedBatches` (default, `group_by_length`): the seeded permutation is cut into
  mega-batches of `MEGA` batches, each sorted by length and split into batches, and the batch
  order is shuffled with the same seed: every batch holds rows of similar length (little
  padding), the data order stays random, and every row is seen once per epoch.
* `EpochSampler` + a plain batch split: the permutation cut into consecutive batches.

Evaluation batches are sorted by length too (`eval_loader(sort=True)`); `evaluate` returns
predictions in file order either way.

`holdout_split` carves a label-stratified slice out of train, drawn with a fixed seed so
that every run of a task holds out the same rows.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import datasets
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithPadding

from utils.glue import GlueData
from utils.models import cache_root

FORMAT = 1  # bump when the tokenised layout changes, so old cache entries are not reused
MEGA = 50  # batches per mega-batch of LengthGroupedBatches
HOLDOUT_SEED = 0  # the holdout slice depends on the task's data and the fraction only


def tokenized_cache_dir() -> Path:
    """Where tokenised datasets are cached: `<cache>/tokenized` (see utils.models.cache_root)."""
    return cache_root() / "tokenized"


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's full definition (vocab, normaliser, templates), or of its vocab.

    The backend's truncation/padding settings are left out: every call with truncation=True
    changes them, and the cache key must not."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        text = json.dumps(spec, sort_keys=True)
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def _source_fingerprint(glue: GlueData) -> dict:
    """Data files with size and mtime (local data), or the row counts (hub data)."""
    if glue.source.startswith("local:"):
        stats = {s: os.stat(p) for s, p in glue.files.items()}
        return {s: [glue.files[s], st.st_size, st.st_mtime_ns] for s, st in stats.items()}
    return {"source": glue.source, "files": glue.files, "rows": glue.num_rows}


def cache_key(glue: GlueData, tokenizer, max_length: int) -> str:
    """`<task>-<hash>` of everything the token ids depend on."""
    parts = {"format": FORMAT, "task": glue.task.name, "max_length": max_length,
             "tokenizer": [str(tokenizer.name_or_path), tokenizer_fingerprint(tokenizer)],
             "input_names": list(tokenizer.model_input_names), "data": _source_fingerprint(glue)}
    return f"{glue.task.name}-{hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]}"


@contextlib.contextmanager
def _quiet(enabled: bool):
    """Hide the datasets library's own progress bars unless `enabled`."""
    was = datasets.is_progress_bar_enabled()
    if not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def tokenize_glue(glue: GlueData, tokenizer, max_length: int, *, cache: bool = True,
                  progress: bool = False) -> datasets.DatasetDict:
    """{"train": ..., <dev splits>: ...} with input_ids, attention_mask, (token_type_ids), labels.

    Sentence-pair tasks are encoded as pairs; both are truncated longest-first to max_length.
    """
    folder = tokenized_cache_dir() / cache_key(glue, tokenizer, max_length)
    with _quiet(progress):
        if cache and (folder / "dataset_dict.json").is_file():
            return datasets.load_from_disk(str(folder))
        keep = [n for n in tokenizer.model_input_names if n in ("input_ids", "token_type_ids", "attention_mask")]

        def encode(batch):
            texts = [batch["sentence1"]] + ([batch["sentence2"]] if glue.task.is_pair else [])
            enc = tokenizer(*texts, truncation=True, max_length=max_length)
            return {**{k: enc[k] for k in keep}, "labels": batch["label"]}

        splits = {"train": glue.train, **glue.dev}
        out = datasets.DatasetDict({s: d.map(encode, batched=True, remove_columns=d.column_names,
                                             desc=f"tokenising {glue.task.name} {s}")
                                    for s, d in splits.items()})
        if cache:  # write next to the target, then rename: readers never see half an entry
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
            try:
                out.save_to_disk(str(tmp / "d"))
                os.rename(tmp / "d", folder)
            except OSError:
                if not (folder / "dataset_dict.json").is_file():  # not another process's copy
                    raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return datasets.load_from_disk(str(folder))  # memory-mapped, like a cache hit
    return out


def token_lengths(dataset) -> list[int]:
    """Tokens per row (the length of its input_ids)."""
    return [len(ids) for ids in dataset["input_ids"]]


def holdout_split(labels, fraction: float, *, regression: bool = False) -> tuple[list[int], list[int]]:
    """(train rows, holdout rows) as sorted index lists: `fraction` of the rows, stratified by
    label (not for regression), drawn with HOLDOUT_SEED. fraction 0: (all rows, [])."""
    n = len(labels)
    if fraction == 0:
        return list(range(n)), []
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    try:
        keep, held = train_test_split(np.arange(n), test_size=fraction, random_state=HOLDOUT_SEED,
                                      stratify=None if regression else np.asarray(labels))
    except ValueError as e:  # e.g. a class with a single row, or fewer held-out rows than classes
        raise ValueError(f"cannot hold out {fraction:g} of {n} training rows stratified by label: {e}") from None
    return sorted(keep.tolist()), sorted(held.tolist())


def _seeded_permutation(n: int, *key: int) -> list[int]:
    """A permutation of range(n) that depends only on `key`: (seed, epoch) for the rows of an
    epoch, (seed, epoch, 1) for its order of grouped batches, (seed, 0, 2) for calibration."""
    state = int(np.random.SeedSequence(list(key)).generate_state(1, np.uint64)[0] >> 1)
    return torch.randperm(n, generator=torch.Generator().manual_seed(state)).tolist()


class EpochSampler(Sampler):
    """A random permutation of range(n) that depends only on (seed, epoch); set the epoch first."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n = n  # dataset length
        self.seed = seed  # run seed
        self.shuffle = shuffle  # False: 0, 1, ..., n-1
        self.epoch = 0  # set by set_epoch before each pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        return iter(_seeded_permutation(self.n, self.seed, self.epoch))


class LengthGroupedBatches(Sampler):
    """Batches of rows of similar length, in a random order that depends only on (seed, epoch).

    The epoch's permutation (the one `EpochSampler` draws) is cut into mega-batches of
    `mega` × batch_size rows; each is sorted by length (longest first, ties in permutation
    order) and split into batches; then the order of all batches is shuffled with a second
    draw from (seed, epoch). Yields lists of row indices (a batch sampler): ceil(n /
    batch_size) batches per epoch, every row once, at most one short batch (the tail of the
    last mega-batch).
    """

    def __init__(self, lengths, batch_size: int, seed: int, mega: int = MEGA):
        self.lengths = list(lengths)  # tokens per row
        self.batch_size = batch_size
        self.seed = seed
        self.mega = mega
        self.epoch = 0  # set by set_epoch before each pass

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        perm, size = _seeded_permutation(len(self.lengths), self.seed, self.epoch), self.mega * self.batch_size
        batches = []
        for start in range(0, len(perm), size):
            group = sorted(perm[start:start + size], key=lambda i: -self.lengths[i])  # stable: ties keep order
            batches += [group[k:k + self.batch_size] for k in range(0, len(group), self.batch_size)]
        order = _seeded_permutation(len(batches), self.seed, self.epoch, 1)
        return iter([batches[i] for i in order])


def _loader(dataset, tokenizer, **batching) -> DataLoader:
    """`batching`: sampler= and batch_size=, or batch_sampler=."""
    # A private generator: creating an iterator then never draws from torch's global RNG
    # (which drives dropout), so evaluation and resuming leave the training randomness alone.
    return DataLoader(dataset, collate_fn=DataCollatorWithPadding(tokenizer),
                      generator=torch.Generator().manual_seed(0), **batching)


def train_loader(dataset, tokenizer, batch_size: int, seed: int, *, group_by_length: bool = True):
    """(loader, sampler): shuffled training batches and the object whose epoch must be set
    before each pass (`LengthGroupedBatches`, or the `EpochSampler` of plain batches)."""
    if group_by_length:
        sampler = LengthGroupedBatches(token_lengths(dataset), batch_size, seed)
        return _loader(dataset, tokenizer, batch_sampler=sampler), sampler
    sampler = EpochSampler(len(dataset), seed)
    return _loader(dataset, tokenizer, sampler=sampler, batch_size=batch_size), sampler


def calibration_batches(dataset, tokenizer, batch_size: int, seed: int, n_batches: int) -> list[dict]:
    """`n_batches` padded batches (with labels) of rows drawn with `seed`, for data-aware inits:
    the first n_batches × batch_size rows of a permutation that no epoch's order uses."""
    rows = _seeded_permutation(len(dataset), seed, 0, 2)[:n_batches * batch_size]
    collate = DataCollatorWithPadding(tokenizer)
    return [dict(collate([dataset[i] for i in rows[k:k + batch_size]])) for k in range(0, len(rows), batch_size)]


class FixedOrder(Sampler):
    """The rows in a given order (for evaluation)."""

    def __init__(self, order):
        self.order = list(order)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        return iter(self.order)


def eval_order(dataset, sort: bool) -> list[int]:
    """Row order of evaluation: longest first (stable) when `sort`, else file order."""
    rows = range(len(dataset))
    if not sort:
        return list(rows)
    lengths = token_lengths(dataset)
    return sorted(rows, key=lambda i: -lengths[i])


def eval_loader(dataset, tokenizer, batch_size: int, *, sort: bool = False) -> DataLoader:
    """Evaluation batches in `eval_order` (`loader.order`: row of each position, to undo the sort)."""
    order = eval_order(dataset, sort)
    loader = _loader(dataset, tokenizer, sampler=FixedOrder(order), batch_size=batch_size)
    loader.order = order
    return loader

"""Tokenised GLUE splits (cached on disk) and the data loaders of a run.

`tokenize_glue` turns the `GlueData` of `utils.glue.load_glue` into token ids, truncated
at `max_length` but NOT padded: `DataCollatorWithPadding` pads each batch to its own
longest row. The result is saved with `datasets.save_to_disk` under
`<cache>/tokenized/<task>-<key>/` (`<cache>`: $LORA_FA_CACHE, else ~/.cache/lora-fa), so
a second run with the same tokenizer, task, max_length and data files skips tokenising.

The training order is a permutation drawn from (seed, epoch) alone (`EpochSampler`), so
the batches of any epoch can be recomputed: a resumed run skips the batches it has
already seen and continues with exactly the ones an uninterrupted run would have used.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from transformers import DataCollatorWithPadding

from utils.glue import GlueData
from utils.model_files import cache_root

FORMAT = 1  # bump when the tokenised layout changes, so old cache entries are not reused


def tokenized_cache_dir() -> Path:
    """Where tokenised datasets are cached: `<cache>/tokenized` (see utils.model_files.cache_root)."""
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
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0] >> 1)
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).tolist())


def _loader(dataset, tokenizer, batch_size: int, sampler) -> DataLoader:
    # A private generator: creating an iterator then never draws from torch's global RNG
    # (which drives dropout), so evaluation and resuming leave the training randomness alone.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                      collate_fn=DataCollatorWithPadding(tokenizer), generator=torch.Generator().manual_seed(0))


def train_loader(dataset, tokenizer, batch_size: int, seed: int) -> tuple[DataLoader, EpochSampler]:
    """Shuffled training batches (last one may be short) and the sampler, to set its epoch."""
    sampler = EpochSampler(len(dataset), seed)
    return _loader(dataset, tokenizer, batch_size, sampler), sampler


def eval_loader(dataset, tokenizer, batch_size: int) -> DataLoader:
    """Dev batches in file order."""
    return _loader(dataset, tokenizer, batch_size, EpochSampler(len(dataset), 0, shuffle=False))

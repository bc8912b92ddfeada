"""`pip install .` installs the `lora` library alone, importable from anywhere (no network needed)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pip_install_gives_the_lora_library_only(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, text=True,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert (target / "lora" / "__init__.py").is_file()
    assert not (target / "utils").exists() and not (target / "bench").exists() and not (target / "tests").exists()
    code = ("import lora, torch; from torch import nn; m = nn.Sequential(nn.Linear(8, 6)); "
            "lora.add_lora(m, r=2, init='svd'); print(lora.__file__, lora.__version__, len(lora.get_lora_params(m)))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True,
                         text=True).stdout.split()
    assert Path(out[0]).is_relative_to(target)  # the installed copy, not the repository's
    assert out[1] == __import__("lora").__version__ and out[2] == "1"

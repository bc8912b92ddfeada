"""Carrying checkpoints to a new machine (utils.carry): a carried run resumes to the uninterrupted run's
numbers; a copy is never half a checkpoint; only what this mirror copied is ever deleted."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from tests.runner_helpers import Stop, stop_after_first_eval, tiny_run_config, without_times
from utils import carry
from utils.checkpoint import latest_checkpoint
from utils.logs import read_log
from utils.train import run_experiment


def fake_checkpoint(run_dir, step, *, complete=True, size=10):
    """A step-N folder like utils.checkpoint.save_checkpoint writes, with `size` bytes of payload."""
    folder = run_dir / f"step-{step}"
    folder.mkdir(parents=True)
    (folder / "trainable.safetensors").write_bytes(b"x" * size)
    if complete:
        (folder / "state.json").write_text(json.dumps({"step": step}))
    (run_dir / "latest.json").write_text(json.dumps({"step": step, "folder": folder.name}))
    return folder


def test_a_carried_run_resumes_to_the_same_numbers(tmp_path, tiny_models, glue_dir):
    ref = run_experiment(tiny_run_config(tmp_path / "ref", tiny_models["bert"], glue_dir), progress=False)
    cut = tiny_run_config(tmp_path / "old", tiny_models["bert"], glue_dir)
    with pytest.raises(Stop):
        run_experiment(cut, progress=False, on_eval=stop_after_first_eval)
    carried = tmp_path / "checkout" / "carried"
    assert carry.mirror(cut.ckpt_dir, carried) == {cut.ckpt_path.relative_to(cut.ckpt_dir)}
    shutil.rmtree(cut.ckpt_dir)  # the old machine is gone; the checkout (and its log) travel
    new_dir = tmp_path / "new-ckpt"
    assert carry.restore(carried, new_dir) == [f"mrpc/{cut.run_id}: restored step 4"] and not carried.exists()
    resumed = run_experiment(dataclasses.replace(cut, ckpt_dir=str(new_dir), resume=True), progress=False)
    assert resumed["resumed_from_step"] == 4 and read_log(cut.log_path)["status"] == "finished"
    assert resumed["summary"]["final"] == ref["summary"]["final"]
    assert without_times(resumed["history"]) == without_times(ref["history"])


def test_mirror_follows_the_latest_complete_checkpoint(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    run = src / "mrpc" / "run-a"
    fake_checkpoint(run, 10)
    assert carry.mirror(src, dst) == {run.relative_to(src)}
    assert json.loads((dst / "mrpc/run-a/latest.json").read_text()) == {"step": 10, "folder": "step-10"}
    shutil.rmtree(run / "step-10")
    fake_checkpoint(run, 20, complete=False)  # being written: latest.json is ahead of state.json
    carry.mirror(src, dst)
    assert latest_checkpoint(dst / "mrpc/run-a").name == "step-10"
    (run / "step-20" / "state.json").write_text(json.dumps({"step": 20}))
    carry.mirror(src, dst)
    assert sorted(p.name for p in (dst / "mrpc/run-a").iterdir()) == ["latest.json", "step-20"]


@pytest.mark.parametrize("cut_in", ["copytree", "folder_bytes"])  # while copying / while sizing the folder
def test_mirror_skips_big_checkpoints_and_a_copy_cut_short(tmp_path, monkeypatch, cut_in):
    src, dst = tmp_path / "src", tmp_path / "dst"
    fake_checkpoint(src / "rte" / "full-ft", 3, size=2 * 2**20)
    assert carry.mirror(src, dst, max_mb=1) == set() and not dst.exists()
    fake_checkpoint(src / "mrpc" / "lora-fa", 5)
    first = carry.mirror(src, dst, max_mb=1)
    shutil.rmtree(src / "mrpc/lora-fa/step-5")
    fake_checkpoint(src / "mrpc" / "lora-fa", 6)

    def vanished(*a, **k):
        raise FileNotFoundError("the runner removed the step folder meanwhile")

    monkeypatch.setattr(shutil if cut_in == "copytree" else carry, cut_in, vanished)
    assert carry.mirror(src, dst, max_mb=1, mirrored=frozenset(first)) == first  # still tracked, copied next pass
    assert latest_checkpoint(dst / "mrpc/lora-fa").name == "step-5" and not (dst / "mrpc/lora-fa/.tmp-step").exists()


def test_mirror_deletes_only_copies_it_made(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    fake_checkpoint(dst / "mrpc" / "carried-earlier", 7)  # from an earlier machine, its source elsewhere
    fake_checkpoint(src / "mrpc" / "running", 1)
    mirrored = carry.mirror(src, dst)
    shutil.rmtree(src / "mrpc" / "running")  # finished: the runner deleted its checkpoints
    assert carry.mirror(src, dst, mirrored=frozenset(mirrored)) == set()
    assert not (dst / "mrpc" / "running").exists() and latest_checkpoint(dst / "mrpc" / "carried-earlier")


def test_restore_keeps_a_later_checkpoint_and_reports_bad_input(tmp_path, capsys):
    carried, ckpt = tmp_path / "carried", tmp_path / "ckpt"
    fake_checkpoint(carried / "mrpc" / "a", 5)
    fake_checkpoint(ckpt / "mrpc" / "a", 9)  # the same machine came back, and the run went on
    fake_checkpoint(carried / "mrpc" / "b", 2, complete=False)
    carry.main(["restore", str(carried), str(ckpt)])
    assert capsys.readouterr().out.splitlines() == [
        f"mrpc/a: kept step 9 already at {ckpt} (carried: 5)", "mrpc/b: incomplete, skipped"]
    assert latest_checkpoint(ckpt / "mrpc" / "a").name == "step-9" and not carried.exists()
    with pytest.raises(SystemExit, match=f"restore: no checkpoints at {carried}"):
        carry.main(["restore", str(carried), str(ckpt)])
    with pytest.raises(SystemExit, match="mirror: no checkpoints at .*nowhere"):
        carry.main(["mirror", str(tmp_path / "nowhere"), str(ckpt), "--once"])

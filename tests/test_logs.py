"""utils.locks and utils.logs on disk: one worker per run (lock files, raced by real processes) and readers that skip
unreadable log files (all files in tmp_path)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runner_helpers import dead_pid
from tests.test_plots import fake_log
from utils import locks, logs, record
from utils.locks import RunLocked, acquire_lock, lock_path, run_lock
from utils.logs import read_logs, write_json_atomic

ROOT = Path(__file__).parents[1]

# A worker: wait for `go`, try the lock, report, hold it until `done` exists, then exit without
# releasing it (as a killed worker would).
WORKER = """
import sys, time
from pathlib import Path
from utils.locks import RunLocked, acquire_lock
lock, go, done = map(Path, sys.argv[1:4])
while not go.exists():
    time.sleep(0.01)
try:
    acquire_lock(lock)
    print("won", flush=True)
except RunLocked as e:
    print("locked", e, flush=True)
while not done.exists():
    time.sleep(0.01)
"""


def test_two_processes_race_for_one_run_and_exactly_one_wins(tmp_path, capsys):
    lock = tmp_path / "logs" / "mrpc" / "run.lock"
    go, done = tmp_path / "go", tmp_path / "done"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(lock), str(go), str(done)], env=env,
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    go.touch()  # both start trying at once
    lines = [w.stdout.readline().split() for w in workers]  # both have tried; the winner still holds it
    assert sorted(line[0] for line in lines) == ["locked", "won"]
    winner = workers[[line[0] for line in lines].index("won")]
    assert json.loads(lock.read_text())["pid"] == winner.pid
    assert f"held by pid {winner.pid} on {socket.gethostname()}" in " ".join(lines[[w is winner for w in workers].index(False)])
    with pytest.raises(RunLocked, match=f"pid {winner.pid}"):  # a third worker while it runs
        acquire_lock(lock)
    done.touch()
    for w in workers:
        assert w.wait(timeout=120) == 0
    # the winner exited without releasing: its lock is stale, the next worker takes it over
    held = acquire_lock(lock)
    assert held["pid"] == os.getpid() and json.loads(lock.read_text()) == held
    assert f"taking over the stale lock {lock} of pid {winner.pid}" in capsys.readouterr().err


READER = """
import json, sys, time
from pathlib import Path
lock, ready = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
seen = torn = 0
end = time.time() + float(sys.argv[3])
while time.time() < end:
    try:
        text = lock.read_text()
    except FileNotFoundError:
        continue
    seen += 1
    try:
        json.loads(text)
    except ValueError:
        torn += 1
print(seen, torn)
"""


def test_a_lock_is_never_seen_half_written(tmp_path):
    """A reader polling the lock while it is taken and released many times never finds it present
    but unparseable (the window in which a loser of a race would report "an unreadable lock")."""
    lock, ready = tmp_path / "run.lock", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reader = subprocess.Popen([sys.executable, "-c", READER, str(lock), str(ready), "1.5"], env=env,
                              stdout=subprocess.PIPE, text=True)
    while not ready.exists() and reader.poll() is None:
        pass
    while reader.poll() is None:
        with run_lock(lock.with_suffix(".json")):
            pass
    seen, torn = map(int, reader.stdout.read().split())
    assert seen > 100 and torn == 0


def test_stale_lock_of_dead_pid_is_taken_over_with_a_warning(tmp_path, capsys):
    log_path = tmp_path / "mrpc" / "run.json"
    lock = lock_path(log_path)
    assert lock == tmp_path / "mrpc" / "run.lock"
    lock.parent.mkdir(parents=True)
    dead = dead_pid()
    lock.write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    with run_lock(log_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"stale lock {lock} of pid {dead}" in err


@pytest.mark.parametrize("holder, why", [
    ({"pid": 1, "host": "another-host"}, "pid 1 on another-host"),  # cannot tell whether it lives
    ({"pid": os.getpid(), "host": socket.gethostname()}, f"pid {os.getpid()}"),  # alive
    (None, "unreadable lock"),  # being written, or garbage: left for a person to delete
])
def test_live_or_unknown_lock_refuses(tmp_path, holder, why):
    lock = tmp_path / "run.lock"
    lock.write_text("{" if holder is None else json.dumps(holder))
    before = lock.read_text()
    with pytest.raises(RunLocked, match=why):
        acquire_lock(lock)
    assert lock.read_text() == before  # left as it was


def test_lock_is_released_after_an_exception_and_only_by_its_holder(tmp_path):
    log_path = tmp_path / "run.json"
    with pytest.raises(RuntimeError, match="crash"), run_lock(log_path) as lock:
        assert lock.exists()
        raise RuntimeError("crash inside the run")
    assert not lock.exists()
    held = acquire_lock(lock)
    other = {**held, "token": "someone else's"}
    lock.write_text(json.dumps(other))  # taken over by another worker meanwhile
    locks.release_lock(lock, held)
    assert json.loads(lock.read_text()) == other  # not ours: left alone


def test_readers_skip_unreadable_logs_with_one_line_each(tmp_path, capsys):
    good = fake_log("mrpc", "lora-fa", "svd", 1e-4, 0)
    write_json_atomic(good, tmp_path / "mrpc" / "good.json")
    text = (tmp_path / "mrpc" / "good.json").read_text()
    (tmp_path / "mrpc" / "truncated.json").write_text(text[: len(text) // 2])  # a copy cut short by a full disk
    hand_edited = {k: v for k, v in good.items() if k != "history"}
    hand_edited["config"] = {k: v for k, v in good["config"].items() if k != "seed"}
    write_json_atomic(hand_edited, tmp_path / "mrpc" / "edited.json")
    found = read_logs(tmp_path)
    assert list(found) == [tmp_path / "mrpc" / "good.json"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    assert f"{tmp_path / 'mrpc' / 'edited.json'}: missing keys: history, config.seed" in err[0]
    assert f"{tmp_path / 'mrpc' / 'truncated.json'}: not valid JSON" in err[1]
    assert err[2] == "warning: skipped 2 of 3 log files (not readable run logs)"
    assert len(logs.load_summaries(tmp_path)) == 1 and len(logs.load_runs(found)) == len(good["history"])


def test_old_logs_read_with_legacy_defaults_and_extra_keys_tolerated(tmp_path):
    old = fake_log("mrpc", "lora-fa", "svd", 1e-4, 0)  # written before group_by_length, holdout, ...
    new = fake_log("mrpc", "lora-fa", "svd", 1e-4, 1)
    new["config"].update(group_by_length=True, holdout=0.1, some_future_field={"x": 1}, another=[1, 2])
    new["future_top_level_key"] = 1
    for log in (old, new):
        write_json_atomic(log, tmp_path / f"{log['run_id']}.json")
    df = logs.load_summaries(tmp_path).set_index("seed")
    assert df.loc[0, "group_by_length"] in (False,) and df.loc[1, "group_by_length"] in (True,)
    assert df.loc[0, "holdout"] == 0.0 and df.loc[1, "holdout"] == 0.1
    assert "some_future_field" not in df and "another" not in df  # nested values are not columns


def test_relpaths_rewrites_path_fields_only_once_and_skips_running_logs(tmp_path, capsys):
    """`python -m utils.record relpaths`: logs written with this machine's absolute paths get them as a run
    records them now; every other value stays as it was, a second pass changes nothing, and a running log
    or one with a lock file (a worker writes them) and a hub log are left as they are, byte for byte."""
    repo = tmp_path / "repo"
    env_glue = fake_log("mrpc", "lora-fa", "svd", 1e-4, 0)  # data from $GLUE_DIR (no data_dir)
    env_glue["config"].update(data_dir=None, log_dir=f"{repo}/logs", ckpt_dir="checkpoints",
                              data_source="local:/data/glue",
                              data_files={"train": "/data/glue/MRPC/train.tsv", "dev": "/data/glue/MRPC/dev.tsv"})
    env_glue["env"] = {"host": "vm", "argv": ["run_glue.py", "--log-dir", f"{repo}/logs", "--lr", "1e-4",
                                              "--x=/data/glue/MRPC", f"{repo}/run_glue.py", "/elsewhere"]}
    typed = fake_log("mrpc", "lora-fa", "svd", 1e-4, 1)  # --data-dir <repo>/glue typed
    typed["config"].update(data_dir=f"{repo}/glue", log_dir="logs", ckpt_dir=f"{repo}/ckpt",
                           data_source=f"local:{repo}/glue", data_files={"train": f"{repo}/glue/MRPC/train.tsv"})
    typed["env"] = {"argv": ["run_glue.py", "--data-dir", f"{repo}/glue"]}
    hub = fake_log("mrpc", "lora-fa", "svd", 1e-4, 2)
    hub["config"].update(data_dir=None, log_dir="logs", data_source="hub:nyu-mll/glue",
                         data_files={"train": "nyu-mll/glue/mrpc:train"})
    running = {**env_glue, "status": "running", "run_id": "running"}
    logs_dir = repo / "logs" / "mrpc"
    for name, log in {"env": env_glue, "typed": typed, "hub": hub, "running": running, "locked": env_glue}.items():
        write_json_atomic(log, logs_dir / f"{name}.json")
    lock_path(logs_dir / "locked.json").write_text("{}")
    before = {p.name: p.read_bytes() for p in logs_dir.iterdir()}

    assert record.main(["relpaths", str(repo / "logs"), "--repo-root", str(repo)]) == 0
    assert capsys.readouterr().out.strip() == "2 rewritten, 1 unchanged, 2 running"
    after = {p.name: json.loads(p.read_text()) for p in logs_dir.iterdir()}
    assert {k: after["env.json"]["config"][k] for k in ("data_dir", "log_dir", "ckpt_dir", "data_source", "data_files")} \
        == {"data_dir": None, "log_dir": "logs", "ckpt_dir": "checkpoints", "data_source": "local:$GLUE_DIR",
            "data_files": {"train": "MRPC/train.tsv", "dev": "MRPC/dev.tsv"}}
    assert after["env.json"]["env"]["argv"] == ["run_glue.py", "--log-dir", "logs", "--lr", "1e-4",
                                                "--x=$GLUE_DIR/MRPC", "run_glue.py", "/elsewhere"]
    assert {k: after["typed.json"]["config"][k] for k in ("data_dir", "ckpt_dir", "data_source", "data_files")} \
        == {"data_dir": "glue", "ckpt_dir": "ckpt", "data_source": "local:glue", "data_files": {"train": "MRPC/train.tsv"}}
    assert after["typed.json"]["env"]["argv"] == ["run_glue.py", "--data-dir", "glue"]

    def without_paths(log):  # the log with its path fields taken out: must not change
        log = json.loads(json.dumps(log))
        for k in ("data_dir", "log_dir", "ckpt_dir", "data_source", "data_files"):
            log["config"].pop(k, None)
        log["env"].pop("argv", None)
        return log
    for name, log in {"env.json": env_glue, "typed.json": typed}.items():
        assert without_paths(after[name]) == without_paths(log)
    assert (logs_dir / "hub.json").read_bytes() == before["hub.json"]
    assert all((logs_dir / f).read_bytes() == before[f] for f in ("running.json", "locked.json"))

    rewritten = {p.name: p.read_bytes() for p in logs_dir.iterdir()}
    assert record.main(["relpaths", str(repo / "logs"), "--repo-root", str(repo)]) == 0
    assert capsys.readouterr().out.strip() == "0 rewritten, 3 unchanged, 2 running"
    assert {p.name: p.read_bytes() for p in logs_dir.iterdir()} == rewritten


def test_committed_logs_keep_their_run_ids_and_read_auto_as_lanczos():
    """Every committed log (rounds 1-2 wrote svd_method "auto", which ran ARPACK Lanczos; later ones name
    "lanczos") rebuilds to a RunConfig whose run id is the log's own, so reruns find and resume them; a
    run's "auto" is no longer accepted (it would mean the library's krylov choice, a different computation)."""
    import dataclasses
    import json

    from utils.config import RunConfig, with_legacy_defaults

    root = Path(__file__).resolve().parents[1] / "logs"
    paths = sorted(p for p in root.rglob("*.json") if not p.name.endswith(".preds.json"))
    spelled = []
    for path in paths:
        logged = json.loads(path.read_text())
        config = with_legacy_defaults(logged["config"])
        spelled.append(logged["config"]["svd_method"])
        assert config["svd_method"] == "lanczos", path
        cfg = RunConfig(**{f.name: config[f.name] for f in dataclasses.fields(RunConfig) if f.name in config})
        assert cfg.run_id == logged["run_id"] == path.stem, path
    assert spelled.count("auto") > 250 and set(spelled) <= {"auto", "lanczos"}
    with pytest.raises(ValueError, match="unknown svd_method 'auto'"):
        RunConfig(svd_method="auto").validate()

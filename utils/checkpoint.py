"""Checkpoints of a running experiment, without pickles: safetensors for tensors, JSON for the rest.

A run's folder `<ckpt_dir>/<task>/<run_id>/` holds one `step-<N>/` folder per checkpoint and
a `latest.json` pointer, replaced atomically once a checkpoint is complete:

    step-<N>/trainable.safetensors   trainable parameters (lora.save_lora format if the model
                                     has adapters: A, B, B0 and the trained head; else plain)
    step-<N>/optimizer.safetensors   optimizer state tensors ("state/<param idx>/<name>")
    step-<N>/optimizer.json          the rest of the optimizer state, and the scheduler state
    step-<N>/rng-<rank>.safetensors  torch (and CUDA) RNG states of process <rank>
    step-<N>/rng-<rank>.json         python and numpy RNG states of process <rank>
    step-<N>/state.json              training position (step, epoch, batch), history so far, ...

Only the main process writes the shared files; every process writes its own RNG state.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import lora
from utils.logs import write_json_atomic

# ---------------------------------------------------------------- parts

def save_trainable(model, path: Path) -> None:
    """Trainable parameters: lora.save_lora when the model has adapters, else a plain safetensors file."""
    if lora.adapted_modules(model):
        lora.save_lora(model, path)
    else:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.named_parameters() if v.requires_grad},
                  str(path))


def load_trainable(model, path: Path) -> None:
    """Copy the tensors saved by `save_trainable` into the (already adapted) model."""
    tensors = lora.read_lora(path)[1] if lora.adapted_modules(model) else load_file(str(path))
    lora.copy_state(model, tensors, f"checkpoint {path}")


def _split_optimizer(sd: dict) -> tuple[dict, dict]:
    """Optimizer state_dict -> (tensors, JSON-able rest)."""
    tensors, rest = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        rest["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state/{idx}/{k}"] = v.detach().contiguous().cpu()
            else:
                rest["state"][str(idx)][k] = v
    return tensors, rest


def _join_optimizer(tensors: dict, rest: dict) -> dict:
    state = {int(i): dict(v) for i, v in rest["state"].items()}
    for key, v in tensors.items():
        _, idx, name = key.split("/", 2)
        state[int(idx)][name] = v
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_state() -> tuple[dict, dict]:
    """(tensors, JSON) of the python, numpy, torch and CUDA generators of this process."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    return tensors, {"python": random.getstate(), "numpy": np_state}


def set_rng_state(tensors: dict, rest: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda/")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = rest["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = rest["numpy"]
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)


# ---------------------------------------------------------------- whole checkpoints

def save_checkpoint(run_dir, step: int, *, model, optimizer, scheduler, state: dict, accelerator) -> Path:
    """Write checkpoint `step-<step>` of every process, then point latest.json at it."""
    run_dir, main = Path(run_dir), accelerator.is_main_process
    folder = run_dir / f"step-{step}"
    if main:
        shutil.rmtree(folder, ignore_errors=True)  # a half-written one from a crash
        folder.mkdir(parents=True)
    accelerator.wait_for_everyone()
    tensors, rest = rng_state()
    save_file(tensors, str(folder / f"rng-{accelerator.process_index}.safetensors"))
    write_json_atomic(rest, folder / f"rng-{accelerator.process_index}.json")
    if main:
        save_trainable(accelerator.unwrap_model(model), folder / "trainable.safetensors")
        tensors, rest = _split_optimizer(optimizer.state_dict())
        save_file(tensors, str(folder / "optimizer.safetensors"))
        write_json_atomic({"optimizer": rest, "scheduler": scheduler.state_dict()}, folder / "optimizer.json")
        write_json_atomic(state, folder / "state.json")
    accelerator.wait_for_everyone()
    if main:
        make_latest(run_dir, folder, step)
    accelerator.wait_for_everyone()
    return folder


def make_latest(run_dir, folder: Path, step: int) -> None:
    """Point latest.json at the complete checkpoint `folder`, then remove the run's older ones."""
    write_json_atomic({"step": step, "folder": folder.name}, Path(run_dir) / "latest.json")
    for old in Path(run_dir).glob("step-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir) -> Path | None:
    """The folder latest.json points at, or None if the run has no complete checkpoint."""
    pointer = Path(run_dir) / "latest.json"
    if not pointer.is_file():
        return None
    folder = Path(run_dir) / json.loads(pointer.read_text())["folder"]
    return folder if (folder / "state.json").is_file() else None


def load_checkpoint(folder, *, model, optimizer, scheduler, accelerator) -> dict:
    """Restore parameters, optimizer, scheduler and this process's RNG; returns state.json.

    The batch position is per process, so the number of processes must be the one the
    checkpoint was written with."""
    folder = Path(folder)
    state = json.loads((folder / "state.json").read_text())
    if state.get("processes", 1) != accelerator.num_processes:
        raise ValueError(f"checkpoint {folder} was written by {state.get('processes', 1)} process(es); "
                         f"resume it with as many (now {accelerator.num_processes}), or start afresh without resume")
    load_trainable(accelerator.unwrap_model(model), folder / "trainable.safetensors")
    opt = json.loads((folder / "optimizer.json").read_text())
    optimizer.load_state_dict(_join_optimizer(load_file(str(folder / "optimizer.safetensors")), opt["optimizer"]))
    scheduler.load_state_dict(opt["scheduler"])
    rank = accelerator.process_index
    set_rng_state(load_file(str(folder / f"rng-{rank}.safetensors")),
                  json.loads((folder / f"rng-{rank}.json").read_text()))
    return state


def delete_checkpoints(run_dir) -> None:
    """Remove the run's checkpoint folder (and its task folder, if that is left empty)."""
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    with_parent = run_dir.parent
    if with_parent.is_dir() and not any(with_parent.iterdir()):
        with_parent.rmdir()

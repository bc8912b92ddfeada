"""Which processes run a run, and how they agree: one process on a CPU or GPU, or several under
`torchrun` / `accelerate launch` (HF Accelerate). The main process decides what every process does
(`from_main`), holds the run's lock file for all of them (`holding_lock`).
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import broadcast_object_list

from utils.config import RunConfig
from utils.locks import RunLocked, run_lock


def process_state() -> PartialState:
    """The processes of this job (rank, world size). Without CUDA, cpu=True: that makes
    Accelerate use gloo when launched by torchrun / accelerate launch with several processes."""
    return PartialState(cpu=not torch.cuda.is_available())


def new_accelerator(cfg: RunConfig) -> Accelerator:
    """A fresh Accelerator per run (its shared state is reset, so runs of a grid may differ in
    bf16); the process group (PartialState) is kept for every run under torchrun."""
    process_state()
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", cpu=not torch.cuda.is_available())


def shutdown() -> None:
    """End the process group, if any, on every process together (a barrier, then destroy_process_group).

    Without it a torchrun job's processes exit with the gloo group alive: its C++ worker threads still
    hold work objects with tensors, destroyed during interpreter finalization, which takes the GIL of
    a dying interpreter and aborts (SIGABRT) now and then, depending on which rank exits first.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def from_main(value):
    """`value` as the main process sees it (identical decisions on every process)."""
    return broadcast_object_list([value])[0]


@contextmanager
def holding_lock(cfg: RunConfig):
    """The run's lock file, held by the main process for the block (released on any exit); every
    process raises RunLocked when another worker holds it (the main process decides for all)."""
    with ExitStack() as stack:
        refused = None
        if process_state().is_main_process:
            try:
                stack.enter_context(run_lock(cfg.log_path))
            except RunLocked as e:
                refused = str(e)
        refused = from_main(refused)
        if refused:
            raise RunLocked(refused)
        yield

"""transformers' Trainer with adapter-sized checkpoints: `LoRATrainer`.

    from lora.trainer import LoRATrainer
    lora.add_lora(model, r=4, targets=[...], modules_to_save=["classifier"])  # the rest is frozen
    LoRATrainer(model=model, args=TrainingArguments(...), train_dataset=...).train()

`add_lora` already freezes the base, so the plain Trainer trains the right parameters (it
optimises what `requires_grad`); what it cannot do is save only them: for a PreTrainedModel it
writes the whole model into every checkpoint. `LoRATrainer` writes `adapter.safetensors`
(`lora.save_lora`: the adapters, their config and the other trained parameters) instead, and
reads it back on `resume_from_checkpoint` and `load_best_model_at_end`. The optimizer state in a
checkpoint covers the trained parameters only, so a checkpoint is adapter-sized.
Needs transformers (imported here only).
"""
import os

import torch
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from .io import copy_state, read_lora, save_lora
from .model import adapted_modules

ADAPTER_FILE = "adapter.safetensors"


class LoRATrainer(Trainer):
    """transformers.Trainer whose checkpoints hold `lora.save_lora`'s file, not the full model."""

    def _adapted_model(self):
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        if not adapted_modules(model):
            raise ValueError("LoRATrainer: the model has no LoRA adapters (call lora.add_lora first), "
                             "use transformers.Trainer")
        return model

    def _save(self, output_dir=None, state_dict=None):
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_lora(self._adapted_model(), os.path.join(output_dir, ADAPTER_FILE))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        path = os.path.join(resume_from_checkpoint, ADAPTER_FILE)
        if not os.path.isfile(path):
            raise ValueError(f"LoRATrainer: {resume_from_checkpoint} has no {ADAPTER_FILE} (not a LoRATrainer checkpoint)")
        copy_state(self._adapted_model(), read_lora(path)[1], f"checkpoint {path}")

    def _load_best_model(self):
        self._load_from_checkpoint(self.state.best_model_checkpoint)

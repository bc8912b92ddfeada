"""LoRA and LoRA-FA adapters as `torch.nn.utils.parametrize` parametrizations.

    import lora
    names = lora.add_lora(model, rank=4, init="svd", targets=["query", "key", "value"])
    opt = torch.optim.AdamW(lora.get_lora_params(model), lr=1e-3)
    ...
    lora.save_lora(model, "adapter.safetensors")     # or lora.merge_lora(model)

See README.md for the init table and the fast path that keeps LoRA-FA's memory saving.
"""
from .inits import INITS, init_milora, init_pissa, init_random, init_seed, init_svd, top_r_svd
from .io import export_peft, load_lora, save_lora
from .layers import LoRAFAParametrization, LoRAParametrization
from .model import (
    add_lora,
    adapted_modules,
    disable_lora,
    enable_lora,
    get_lora_params,
    get_lora_state_dict,
    lora_config,
    mark_only_lora_trainable,
    merge_lora,
    remove_lora,
    set_fast_path,
)

__version__ = "0.1.0"
__all__ = [
    "INITS", "init_milora", "init_pissa", "init_random", "init_seed", "init_svd", "top_r_svd",
    "export_peft", "load_lora", "save_lora", "LoRAFAParametrization", "LoRAParametrization",
    "add_lora", "adapted_modules", "disable_lora", "enable_lora", "get_lora_params", "get_lora_state_dict",
    "lora_config", "mark_only_lora_trainable", "merge_lora", "remove_lora", "set_fast_path",
]

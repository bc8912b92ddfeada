"""LoRA and LoRA-FA adapters as `torch.nn.utils.parametrize` parametrizations.

    import lora
    names = lora.add_lora(model, r=4, init="svd", targets=["query", "key", "value"])
    opt = torch.optim.AdamW(lora.get_lora_params(model), lr=1e-3)
    ...
    lora.save_lora(model, "adapter.safetensors")     # or lora.merge_lora(model)

add_lora freezes everything else except `modules_to_save`; nn.Linear and transformers Conv1D
(GPT-2) layers are adapted. See docs/library.md for coverage and README.md for the init table.
"""
from .calibrate import calibrating, input_grams, weight_grads
from .inits import (
    DATA_INITS,
    INITS,
    SVD_METHODS,
    init_eva,
    init_grad,
    init_milora,
    init_pissa,
    init_random,
    init_seed,
    init_svd,
    top_r_svd,
    top_r_svds,
)
from .io import atomic_write, copy_state, export_peft, load_lora, read_lora, save_lora
from .layers import MERGE_MODES, LoRAFAParametrization, LoRAParametrization, merge_is_cheaper
from .model import (
    adapted_modules,
    add_lora,
    disable_lora,
    enable_lora,
    find_targets,
    get_lora_params,
    get_lora_state_dict,
    lora_config,
    mark_only_lora_trainable,
    merge_lora,
    remove_lora,
    set_fast_path,
)
from .targets import find_modules_to_save, matches_suffix, tied_parameters

__version__ = "0.1.0"
__all__ = [
    "DATA_INITS",
    "INITS",
    "MERGE_MODES",
    "SVD_METHODS",
    "LoRAFAParametrization",
    "LoRAParametrization",
    "adapted_modules",
    "add_lora",
    "atomic_write",
    "calibrating",
    "copy_state",
    "disable_lora",
    "enable_lora",
    "export_peft",
    "find_modules_to_save",
    "find_targets",
    "get_lora_params",
    "get_lora_state_dict",
    "init_eva",
    "init_grad",
    "init_milora",
    "init_pissa",
    "init_random",
    "init_seed",
    "init_svd",
    "input_grams",
    "load_lora",
    "lora_config",
    "mark_only_lora_trainable",
    "merge_is_cheaper",
    "matches_suffix",
    "merge_lora",
    "read_lora",
    "remove_lora",
    "save_lora",
    "set_fast_path",
    "tied_parameters",
    "top_r_svd",
    "top_r_svds",
    "weight_grads",
]

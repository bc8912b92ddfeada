"""Which layers of a model can carry an adapter, and which ones the caller's names select.

Adaptable layers: `nn.Linear` (weight stored out × in) and transformers' `Conv1D` (GPT-2's
projections: y = x W + b, weight stored in × out, PEFT's `fan_in_fan_out`). The adapter always
works on the (out, in) matrix, `weight_oi(module)` (a transposed view for Conv1D).

Layers are chosen by module type and an explicit list of module-name suffixes, never by position
in a name. A layer whose weight is tied to another parameter (an output head sharing the input
embedding) is not adaptable: merging an adapter into it would change the embedding too, so
`targets=None` leaves it out and naming it is a ValueError that says how to untie it.
"""
import sys

from torch import nn


def conv1d_type():
    """transformers' Conv1D class if transformers is imported (else no model can hold one), or None."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def is_fan_in_fan_out(module):
    """True for a layer whose weight is stored (in, out): transformers' Conv1D."""
    conv1d = conv1d_type()
    return conv1d is not None and isinstance(module, conv1d)


def is_adaptable_type(module):
    return isinstance(module, nn.Linear) or is_fan_in_fan_out(module)


def weight_oi(module, weight=None):
    """`weight` (default `module.weight`) as the (out, in) matrix: a transposed view for Conv1D."""
    W = module.weight if weight is None else weight
    return W.T if is_fan_in_fan_out(module) else W


def matches_suffix(name, target):
    """True when module `name` is `target` or ends with "." + target: how targets select layers."""
    return name == target or name.endswith("." + target)


def tied_parameters(model):
    """{parameter name: the other names of the same tensor} for every parameter shared by names."""
    names = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
    return {n: [o for o in group if o != n] for group in names.values() if len(group) > 1 for n in group}


def tied_error(name, others):
    return ValueError(
        f"module {name!r} has its weight tied to {', '.join(others)} (e.g. an output head sharing the input "
        f"embedding): an adapter merged into it would change {others[0]} too. Leave {name!r} out of targets "
        f"(targets=None does), or untie it first: model.config.tie_word_embeddings = False and "
        f"model.get_submodule({name!r}).weight = nn.Parameter(<its weight>.detach().clone())")


def check_untied(model, name, tied=None):
    """ValueError if module `name`'s weight is tied to another parameter of `model`."""
    tied = tied_parameters(model) if tied is None else tied
    others = tied.get(f"{name}.weight")
    if others:
        raise tied_error(name, others)


def find_targets(model, targets=None):
    """Names of the layers selected by `targets`, in module order.

    targets=None: every nn.Linear and Conv1D whose weight is not tied to another parameter.
    Else module-name suffixes (`matches_suffix`); every target must match at least one adaptable
    layer, and a matched layer must not be tied, else ValueError saying what exists / what to do.
    """
    tied = tied_parameters(model)
    modules = list(model.named_modules())
    adaptable = [n for n, m in modules if is_adaptable_type(m)]
    if targets is None:
        return [n for n in adaptable if f"{n}.weight" not in tied]
    if isinstance(targets, str):
        targets = [targets]
    for t in targets:
        if any(matches_suffix(n, t) for n in adaptable):
            continue
        other = sorted({type(m).__name__ for n, m in modules if matches_suffix(n, t) and n})
        if other:
            raise ValueError(f"target {t!r} matches only {', '.join(other)} modules; lora adapts nn.Linear and "
                             f"transformers Conv1D layers (for nn.Embedding use PEFT's LoRA)")
        suffixes = sorted({n.split(".")[-1] for n in adaptable} | {".".join(n.split(".")[-3:]) for n in adaptable})
        raise ValueError(f"target {t!r} matches no nn.Linear or Conv1D module in {type(model).__name__}; "
                         f"their names end with: {', '.join(suffixes)}")
    names = [n for n in adaptable if any(matches_suffix(n, t) for t in targets)]
    for n in names:
        check_untied(model, n, tied)
    return names


def find_modules_to_save(model, modules_to_save, adapted):
    """Names of the modules selected by the suffixes `modules_to_save` (trained in full, like PEFT's).

    Each suffix must match a module; a selected module must neither be nor contain an adapted layer
    (its weight would be both frozen under the adapter and trained)."""
    if modules_to_save is None:
        return []
    if isinstance(modules_to_save, str):
        modules_to_save = [modules_to_save]
    names = [n for n, _ in model.named_modules() if n]
    selected = []
    for t in modules_to_save:
        hit = [n for n in names if matches_suffix(n, t)]
        if not hit:
            raise ValueError(f"modules_to_save entry {t!r} matches no module of {type(model).__name__}")
        selected += [n for n in hit if n not in selected]
    for n in selected:
        inside = [a for a in adapted if a == n or a.startswith(n + ".")]
        if inside:
            raise ValueError(f"module {n!r} is in modules_to_save but {inside[0]!r} is an adapter target; "
                             f"leave it out of targets (a module is either adapted or trained in full)")
    return selected

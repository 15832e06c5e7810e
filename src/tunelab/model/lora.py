"""Adapter setup: target-module resolution (MindFormers names, regexes), the peft config of each adapter kind a
recipe can train (LoRA, IA³, VeRA, LN tuning, prompt tuning: `AdapterSpec`, `peft_config`), and parameter counts."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError
from tunelab.recipe import MINDFORMERS_MODULES, mindformers_target_to_hf
from tunelab.recipe.lora import ADAPTERS

if TYPE_CHECKING:
    import peft
    import torch

_REGEX_CHARS = set(".*+?|()[]{}^$\\")
# peft re.fullmatch()es a string target against the full module name ('model.layers.0.self_attn.q_proj');
# this prefix lets a pattern written for the last part(s) of the name ('q_proj|v_proj') match as well.
_ANY_PARENT = r"(?:.*\.)?"


def resolve_target_modules(target: str | list[str]) -> str | list[str]:
    """Turn a recipe/CLI target into peft's `target_modules`: a list of names, or one regex string.

    MindFormers names (wq, wk, wv, wo, w1, w2, w3) become HF names in every form. A string with regex characters
    is a regex that may match the full module name or its trailing part(s); otherwise it is a comma list.
    Resolving an already resolved target returns it unchanged.
    """
    if isinstance(target, (list, tuple)):
        names = [MINDFORMERS_MODULES.get(str(n).strip(), str(n).strip()) for n in target]
    elif _REGEX_CHARS & set(target):
        if target.startswith(_ANY_PARENT):
            return target
        pattern = mindformers_target_to_hf(target.strip())
        try:
            re.compile(pattern)
        except re.error as e:
            raise TunelabError(f"invalid LoRA target regex '{target}': {e}") from e
        return f"{_ANY_PARENT}(?:{pattern})"
    else:
        names = [MINDFORMERS_MODULES.get(n.strip(), n.strip()) for n in target.split(",")]
    names = [n for n in names if n]
    if not names:
        raise TunelabError(f"empty LoRA target '{target}'")
    return names


def make_lora_config(rank: int, alpha: float, dropout: float, target_modules: str | list[str],
                     trainable_tokens: dict[str, list[int]] | None = None) -> peft.LoraConfig:
    """A causal-LM peft LoraConfig; `target_modules` may be a raw recipe/CLI target. `trainable_tokens`: peft's
    `trainable_token_indices`, {module name: token ids whose rows train beside the adapter}."""
    if rank < 1:
        raise TunelabError(f"LoRA rank must be at least 1, got {rank}")
    from peft import LoraConfig, TaskType
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=resolve_target_modules(target_modules), task_type=TaskType.CAUSAL_LM,
                      trainable_token_indices=trainable_tokens or None)


# peft's `peft_type` of each adapter kind a recipe names (`lora.adapter`): its name in capitals
PEFT_TYPES = {kind: kind.upper() for kind in ADAPTERS}
# the kinds that change no weight of the base, so nothing merges into it (`model.virtual_tokens` runs them)
UNMERGEABLE = ("prompt_tuning",)


@dataclass(frozen=True)
class AdapterSpec:
    """Which adapter trains and its settings: the recipe's `lora` section (`from_recipe`), or the saved config of an
    adapter a run continues (`from_saved`). `targets` None: peft's default layers for the model type."""

    kind: str = "lora"
    rank: int = 8
    alpha: float = 16
    dropout: float = 0.0
    targets: str | list[str] | None = None
    feedforward: str | list[str] | None = None
    virtual_tokens: int = 20
    init_text: str | None = None

    @classmethod
    def from_recipe(cls, lora) -> "AdapterSpec":
        return cls(lora.adapter, lora.rank, lora.alpha, lora.dropout, lora.targets, lora.feedforward_modules,
                   lora.virtual_tokens, lora.init_text)

    @classmethod
    def from_saved(cls, config: dict[str, Any]) -> "AdapterSpec":
        """From peft's adapter_config.json; an adapter kind tunelab does not train is an error naming it."""
        kinds = {v: k for k, v in PEFT_TYPES.items()}
        peft_type = config.get("peft_type", "LORA")
        peft_type = str(getattr(peft_type, "value", peft_type))  # a live config's enum, or the saved JSON's text
        if peft_type not in kinds:
            raise TunelabError(f"a {peft_type} adapter cannot be continued (tunelab trains "
                               f"{', '.join(ADAPTERS)})", field="peft_type")
        targets = config.get("target_modules")
        return cls(kinds[peft_type], config.get("r", 8), config.get("lora_alpha", 8),
                   config.get("lora_dropout", config.get("vera_dropout", 0.0)),
                   sorted(targets) if isinstance(targets, (list, set)) else targets,
                   config.get("feedforward_modules"), config.get("num_virtual_tokens") or 20,
                   config.get("prompt_tuning_init_text"))

    def describe(self) -> str:
        """'LoRA rank 16 (alpha 32) on q_proj, v_proj': a log line's words for it."""
        if self.kind == "prompt_tuning":
            init = f"from the text {self.init_text!r}" if self.init_text else "from random vocabulary rows"
            return f"prompt tuning: {self.virtual_tokens} virtual tokens before every input, {init}"
        name = {"lora": "LoRA", "ia3": "IA³", "vera": "VeRA", "ln_tuning": "LN tuning"}[self.kind]
        size = {"lora": f" rank {self.rank} (alpha {self.alpha:g})", "vera": f" rank {self.rank}"}.get(self.kind, "")
        where = self.targets if isinstance(self.targets, str) else ", ".join(self.targets or ["peft's default layers"])
        return f"{name}{size} on {where}"


def peft_config(spec: AdapterSpec, trainable_tokens: dict[str, list[int]] | None = None,
                tokenizer_path: str | None = None):
    """The peft config of `spec` for a causal LM. `trainable_tokens` (LoRA only): peft's `trainable_token_indices`.
    `tokenizer_path`: the model's tokenizer, which prompt tuning's `init_text` is tokenised with."""
    if spec.kind == "lora":
        return make_lora_config(spec.rank, spec.alpha, spec.dropout, spec.targets, trainable_tokens)
    if trainable_tokens:
        raise TunelabError(f"trainable tokens train beside a LoRA adapter, not beside {spec.kind}",
                           field="lora.trainable_tokens")
    from peft import IA3Config, LNTuningConfig, TaskType, VeraConfig
    targets = resolve_target_modules(spec.targets) if spec.targets is not None else None
    if spec.kind == "ia3":
        feedforward = resolve_target_modules(spec.feedforward) if spec.feedforward is not None else None
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type=TaskType.CAUSAL_LM)
    if spec.kind == "vera":
        return VeraConfig(r=spec.rank, target_modules=targets, vera_dropout=spec.dropout,
                          task_type=TaskType.CAUSAL_LM)
    if spec.kind == "ln_tuning":
        return LNTuningConfig(target_modules=targets, task_type=TaskType.CAUSAL_LM)
    if spec.kind == "prompt_tuning":
        return _prompt_tuning_config(spec, tokenizer_path)
    raise TunelabError(f"unknown adapter '{spec.kind}' (choose from {', '.join(ADAPTERS)})", field="lora.adapter")


def _prompt_tuning_config(spec: AdapterSpec, tokenizer_path: str | None):
    """Prompt tuning's peft config: `virtual_tokens` embeddings started from `init_text`'s tokens (repeated or cut
    to length, as peft does), else from rows of the vocabulary drawn at random — a start inside the embeddings'
    own distribution, which peft's normal-random init is not."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType
    if not spec.init_text:
        return PromptTuningConfig(num_virtual_tokens=spec.virtual_tokens, task_type=TaskType.CAUSAL_LM,
                                  prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
    if not tokenizer_path:
        raise TunelabError("prompt tuning's init_text is tokenised with the model's tokenizer, and this model was not "
                           "loaded from a directory that holds one", field="lora.init_text")
    return PromptTuningConfig(num_virtual_tokens=spec.virtual_tokens, task_type=TaskType.CAUSAL_LM,
                              prompt_tuning_init=PromptTuningInit.TEXT, prompt_tuning_init_text=spec.init_text,
                              tokenizer_name_or_path=str(tokenizer_path))


def add_adapter(model, spec: AdapterSpec, trainable_tokens: dict[str, list[int]] | None = None):
    """`model` wrapped by peft with `spec`'s adapter (trainable); a target that matches nothing, or a model type
    peft has no default layers for, is one error naming the setting."""
    from peft import get_peft_model
    if spec.targets is not None:
        check_targets_matched(model, spec.targets)
    try:
        with quiet_peft():
            return get_peft_model(model, peft_config(spec, trainable_tokens, getattr(model, "name_or_path", None)))
    except ValueError as e:  # peft: no default targets for this model type, or a layer the adapter cannot wrap
        raise TunelabError(f"cannot add a {spec.kind} adapter to {type(model).__name__}: "
                           f"{' '.join(str(e).split())[:300]}", field="lora.target_modules") from e


@contextlib.contextmanager
def quiet_peft():
    """peft's warnings that are not the user's concern, silenced while it wraps a model: LN tuning copies any norm
    layer and peft warns of the types it has not listed (Llama's RMSNorm); transformers 5's deprecation of
    `is_gradient_checkpointing` raised from inside peft."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def adapter_prefixes() -> tuple[str, ...]:
    """The parameter-name prefixes of every peft adapter kind ('lora_', 'ia3_', 'vera_lambda_', 'ln_tuning_',
    'trainable_tokens_', …): peft's own table, so a kind added there is counted as an adapter here too."""
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
    return tuple(sorted(set(PEFT_TYPE_TO_PREFIX_MAPPING.values())))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total), where total is the *base* model's parameter count: adapters are excluded.

    That is the competition's denominator (8,030,261,248 for Llama-3-8B with any LoRA), unlike peft's
    print_trainable_parameters, which adds the adapters. Tied weights are counted once; a quantised weight
    counts its real number of weights (`parameter_count`), so a QLoRA run's total is the same as a LoRA run's.
    An adapter's parameters are those under a peft prefix (`adapter_prefixes`): LoRA's A and B, IA³'s scales, VeRA's
    vectors (its shared random matrices are buffers, not parameters), LN tuning's copies of the norms, trainable
    token rows (deltas beside the base's rows), prompt tuning's virtual token embeddings (`prompt_encoder`).
    """
    prefixes = adapter_prefixes() + ("prompt_encoder",) if hasattr(model, "peft_config") else ()
    trainable = total = 0
    for name, param in model.named_parameters():
        n = parameter_count(param)
        if param.requires_grad:
            trainable += n
        if not (prefixes and any(part.startswith(prefixes) for part in name.split("."))):
            total += n
    return trainable, total


def parameter_count(param: torch.Tensor) -> int:
    """How many weights `param` holds. A bitsandbytes 4-bit weight (`Params4bit`) packs two per uint8 element
    (more with a wider `quant_storage`), so its `numel()` is half the real count or less; its quantisation
    state keeps the original shape. An 8-bit weight holds one per element: `numel()` is right."""
    state = getattr(param, "quant_state", None)
    shape = getattr(state, "shape", None)
    if shape is not None:
        import math
        return math.prod(shape)
    return param.numel()


def check_targets_matched(model: torch.nn.Module, target: str | list[str]) -> None:
    """Fail before peft does, listing the model's linear layer names, when `target` matches no module or a container."""
    import torch
    from peft.tuners.tuners_utils import check_target_module_exists
    config = make_lora_config(1, 1, 0.0, target)
    matched = [(name, module) for name, module in model.named_modules() if check_target_module_exists(config, name)]
    # peft rejects a matched container (e.g. '.*self_attn') with the module's whole repr; name one instead
    containers = [name for name, module in matched
                  if next(module.children(), None) is not None and not isinstance(module, torch.nn.MultiheadAttention)]
    if matched and not containers:
        return
    linear = ", ".join(sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                               if isinstance(module, torch.nn.Linear)}))
    if containers:
        raise TunelabError(f"LoRA target '{_show(target)}' matches {len(containers)} container module(s) such as "
                           f"'{containers[0]}'; target layers instead: {linear}")
    resolved = config.target_modules
    shown = resolved if isinstance(resolved, str) else ",".join(sorted(resolved))
    raise TunelabError(f"LoRA target '{_show(target)}' (resolved: '{shown}') matches no module of "
                       f"{type(model).__name__}; its linear layers are: {linear}")


def _show(target: str | list[str]) -> str:
    return target if isinstance(target, str) else ",".join(target)


def skip_lora_input_casts(model: torch.nn.Module) -> None:
    """For bf16 autocast training: peft casts a LoRA layer's bf16 input up to its fp32 adapter weights, and
    autocast casts it straight back down for the matmul. Without the first cast the values are the same
    (bf16 is exact in fp32) and two copies of the activation per layer, forward and backward, are saved.
    Nothing changes when the `lora_input_cast` patch is not active (`model.patches`)."""
    from tunelab.model.patches import active
    if not active("lora_input_cast"):
        return
    from peft.tuners.tuners_utils import BaseTunerLayer
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


REFERENCE_ADAPTER = "reference"


@contextlib.contextmanager
def reference_weights(model):
    """The reference policy of preference tuning and GRPO switched on, without a second copy of the model: the
    frozen copy of the adapter a run continues (`REFERENCE_ADAPTER`, loaded beside the trained one), else the
    base with every adapter off. Which adapter trains, and which parameters take gradients, are restored."""
    if REFERENCE_ADAPTER not in getattr(model, "peft_config", {}):
        with model.disable_adapter():
            yield
        return
    active = model.active_adapter
    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    model.set_adapter(REFERENCE_ADAPTER)
    try:
        yield
    finally:
        model.set_adapter(active)
        for name, p in model.named_parameters():
            p.requires_grad_(grads[name])

"""The recipe schema: a YAML file names a run (data, model, training, evaluation), validated on load.

Unknown keys and wrong types are errors naming the key and the file. `--set a.b=value` overrides any key.
MindFormers-style sections (`runner_config`, `pet_config`) are accepted as aliases.

One module per section (`model`, `data` and its `source`s, `lora`, `train`, `eval`, `score`), the whole recipe
and its cross-section rules in `schema`, reading / overriding / aliasing / error reporting in `loader`. The
names below are what the rest of tunelab imports, from here.
"""

from tunelab.recipe.data import DataConfig, MixConfig
from tunelab.recipe.eval import EvalConfig, EvalMode, EvalTaskConfig
from tunelab.recipe.fields import MAX_VOCAB, MIN_VOCAB, Text
from tunelab.recipe.loader import (
    MINDFORMERS_MODULES,
    line_of_key,
    load_recipe,
    mindformers_target_to_hf,
    parse_overrides,
    read_recipe_raw,
    recipe_from_raw,
    recipe_to_yaml,
    schema_error,
    set_field,
    validate_eval,
    validate_recipe,
)
from tunelab.recipe.lora import LoraConfig
from tunelab.recipe.model import ModelConfig
from tunelab.recipe.schema import Recipe
from tunelab.recipe.score import ScoreConfig
from tunelab.recipe.source import (
    HF_FILE_SUFFIXES,
    HF_OPTIONS,
    CorpusBuild,
    EncyclopediaBuild,
    SourceConfig,
    TokenizerBuild,
    hf_names_local_files,
)
from tunelab.recipe.train import DivergenceConfig, GRPOConfig, PreferenceConfig, TrainConfig

__all__ = [
    "HF_FILE_SUFFIXES", "HF_OPTIONS", "MAX_VOCAB", "MINDFORMERS_MODULES", "MIN_VOCAB", "CorpusBuild", "DataConfig",
    "DivergenceConfig", "EncyclopediaBuild", "EvalConfig", "EvalMode", "EvalTaskConfig", "GRPOConfig",
    "LoraConfig", "MixConfig", "ModelConfig", "PreferenceConfig", "Recipe", "ScoreConfig", "SourceConfig", "Text",
    "TokenizerBuild", "TrainConfig", "hf_names_local_files", "line_of_key", "load_recipe",
    "mindformers_target_to_hf", "parse_overrides", "read_recipe_raw", "recipe_from_raw", "recipe_to_yaml",
    "schema_error", "set_field", "validate_eval", "validate_recipe",
]

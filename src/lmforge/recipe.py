"""A recipe: every component's section in one typed object, loaded from YAML with overrides.

Each stage reads only its own section (``recipe.model``, ``recipe.train``, ...). Usage::

    from lmforge.recipe import load_recipe
    recipe = load_recipe("recipes/demo.yaml", ["train.lr=3e-4"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lmforge.config import apply_overrides, build, load_yaml_with_marks
from lmforge.data.corpus import CorpusConfig
from lmforge.data.pipeline.config import CleanConfig
from lmforge.data.tokenize import TokenizeConfig
from lmforge.infer.sampling import SamplingConfig
from lmforge.model.config import ModelConfig
from lmforge.posttrain import PostTrainConfig
from lmforge.tokenizer.train import TokenizerConfig
from lmforge.train.config import DistillConfig, DPOConfig, LoRAConfig, SFTConfig, TrainConfig


@dataclass
class SampleConfig:
    """Continuations printed at the end of a run: prompts plus sampling settings."""

    prompts: list[str] = field(default_factory=lambda: ["def ", "The "])
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


@dataclass
class Recipe:
    name: str = "lmforge"
    out_dir: str = "runs/default"  # every stage writes under this directory
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: TokenizeConfig = field(default_factory=TokenizeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    posttrain: PostTrainConfig = field(default_factory=PostTrainConfig)  # the demo's stages after pretraining


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe file (or only defaults when ``path`` is None) and apply ``--set`` overrides."""
    raw, marks = load_yaml_with_marks(path) if path else ({}, {})
    apply_overrides(raw, overrides, marks)
    return build(Recipe, raw, marks)

"""Typed configuration: the schema engine and the run config built on it.

``schema`` checks plain data into dataclasses (run configs, sweep specs, job specs alike);
``run`` declares the run config; ``overrides`` and ``load`` build one from YAML and the
command line; ``bert`` adopts a pretrained text tower's shape; ``reference`` renders the
field docs as the configuration reference. The names below are what the rest of the project
imports, so callers need not know which module holds what.
"""

from mmpretrain.config.bert import BERT_SHAPE_FIELDS, check_text_matches_bert, read_bert_config
from mmpretrain.config.load import PRESET_DIR, config_from_dict, load_config, preset_names
from mmpretrain.config.overrides import COMMAND_LINE, dotted_tree, parse_overrides
from mmpretrain.config.run import (
    CAPTION_SOURCES,
    CROPS,
    FUSION_TYPES,
    OBJECTIVE_WEIGHTS,
    PRECISIONS,
    VISION_ARCHS,
    CheckpointConfig,
    ClusterConfig,
    DataConfig,
    EvalConfig,
    FusionConfig,
    ModelConfig,
    ObjectivesConfig,
    ObserveConfig,
    OptimConfig,
    RunConfig,
    SourceConfig,
    TextConfig,
    TrainConfig,
    VisionConfig,
    describe_fields,
)
from mmpretrain.config.schema import ConfigError, doc

__all__ = [
    "BERT_SHAPE_FIELDS",
    "CAPTION_SOURCES",
    "COMMAND_LINE",
    "CROPS",
    "FUSION_TYPES",
    "OBJECTIVE_WEIGHTS",
    "PRECISIONS",
    "PRESET_DIR",
    "VISION_ARCHS",
    "CheckpointConfig",
    "ClusterConfig",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "FusionConfig",
    "ModelConfig",
    "ObjectivesConfig",
    "ObserveConfig",
    "OptimConfig",
    "RunConfig",
    "SourceConfig",
    "TextConfig",
    "TrainConfig",
    "VisionConfig",
    "check_text_matches_bert",
    "config_from_dict",
    "describe_fields",
    "doc",
    "dotted_tree",
    "load_config",
    "parse_overrides",
    "preset_names",
    "read_bert_config",
]

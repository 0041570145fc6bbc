"""Dataset recipes: each dataset's reference training recipe as a partial run config.

A recipe is the first of the three layers a run config is built from (the reference's ``Recognition/configs/**``,
github.com/HJYao00/Side4Video @ 5d72352; the YAML
file and ``--set`` overrides follow, :mod:`s4v_orchestration.overrides`). Recipes attach to the
dataset names of :data:`s4v_data.specs.TASK_DATASETS`, where each dataset is defined; this module
checks at import that every dataset there has a recipe and that no recipe names another. A user's
own dataset (a ``dataset.yaml``, :mod:`s4v_data.dataset_file`) starts from the recipe its file
names: ``appearance`` (Kinetics') or ``motion`` (Something-Something's).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from s4v_data.dataset_file import RECIPE_BASES, DatasetFile, DatasetFileError, read_dataset_file
from s4v_data.specs import TASK_DATASETS
from s4v_orchestration.config import MODEL_REGISTRIES, ConfigError


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` merged in, section by section (neither input is changed)."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_SOMETHING_SOMETHING = {
    "data": {"num_frames": 8, "batch_size": 16, "num_sample": 2, "rand_augment": True},
    "model": {"preset": "side4video-b16", "pretrained": "openai"},
    "solver": {
        "warmup_epochs": 4,
        "lr": 1e-3,
        "weight_decay": 0.15,
        "label_smoothing": 0.1,
    },
    "eval": {"test_crops": 3, "test_clips": 2},
}

_KINETICS = {
    "data": {"num_frames": 8, "batch_size": 32, "num_sample": 1, "rand_augment": False},
    "model": {"preset": "side4video-b16", "pretrained": "openai"},
    "solver": {
        "epochs": 30,
        "warmup_epochs": 4,
        "lr": 1e-3,
        "weight_decay": 0.15,
        "label_smoothing": 0.1,
    },
    "eval": {"test_crops": 3, "test_clips": 4},
}

# The reference's retrieval scripts (``Retrieval/script_train/run_train_{msrvtt,msvd,vatex}.sh``):
# 5 epochs, lr 1e-4 with 10 % warm-up, BertAdam-like
# betas/eps/weight decay, global gradient clipping at 1.0, 12 frames, 32 words, C = 320; global
# batch 128 (16 per GPU on 8 GPUs: pass --batch-size 16 under torchrun). MSR-VTT and VATEX use
# ViT-B/16, MSVD ViT-B/32. The text tower stays frozen (the reference's 1e-7 updates are below
# its fp16 resolution); retrieval.train_text=true trains it at lr x retrieval.text_lr_scale.
_RETRIEVAL_REFERENCE = {
    "data": {"num_frames": 12, "batch_size": 128},
    "model": {"preset": "side4video-b16", "pretrained": "openai"},
    "solver": {
        "epochs": 5,
        "warmup_epochs": 0.5,
        "lr": 1e-4,
        "weight_decay": 0.2,
        "betas": (0.9, 0.98),
        "eps": 1e-6,
        "clip_grad_norm": 1.0,
    },
    "retrieval": {"max_words": 32, "similarity": "wti"},
}

DATASET_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "recognition": {
        # Self-contained run on CPU: a tiny frozen CLIP and a generated dataset whose classes
        # come in time-reversed pairs. Tuned to reach >= 80 % val top-1 within a few minutes on
        # 2 cores: one compute thread plus one decoding worker.
        "synthetic": {
            "data": {
                "num_frames": 8,
                "batch_size": 16,
                "num_sample": 1,
                "rand_augment": False,
                "num_workers": 1,
            },
            "model": {"preset": "tiny", "pretrained": None},
            "solver": {
                "epochs": 6,
                "warmup_epochs": 1,
                "lr": 3e-3,
                "weight_decay": 0.05,
                "label_smoothing": 0.1,
            },
            "eval": {"test_crops": 1, "test_clips": 1},
            "device": "cpu",
            "cpu_threads": 1,
        },
        "ssv1": deep_merge(_SOMETHING_SOMETHING, {"solver": {"epochs": 40}}),
        "ssv2": deep_merge(_SOMETHING_SOMETHING, {"solver": {"epochs": 30}}),
        "k400": _KINETICS,
        # The small public sets start from Kinetics' appearance recipe and read the videos
        # named by their official split files.
        "ucf101": deep_merge(_KINETICS, {"data": {"source": "video"}}),
        "hmdb51": deep_merge(_KINETICS, {"data": {"source": "video"}}),
    },
    "retrieval": {
        # Self-contained run on CPU: the tiny random-weight CLIP and the captioned synthetic set
        # ("a red square moves from left to right"). Random CLIP weights mean the text tower has
        # to learn too, so it trains here at the full learning rate.
        "synthetic": {
            "data": {
                "num_frames": 8,
                "batch_size": 32,
                "num_workers": 0,
                "synthetic": {"videos_per_class": 60, "num_frames": 16, "size": 32},
            },
            "model": {"preset": "tiny", "pretrained": None},
            "solver": {"epochs": 30, "warmup_epochs": 1, "lr": 2e-3, "weight_decay": 0.05},
            "retrieval": {"train_text": True, "text_lr_scale": 1.0, "captions": "random-caption"},
            "device": "cpu",
        },
        "msrvtt": _RETRIEVAL_REFERENCE,
        "msvd": deep_merge(_RETRIEVAL_REFERENCE, {"model": {"preset": "side4video-b32"}}),
        "vatex": _RETRIEVAL_REFERENCE,
    },
}


# The reference's model-specific recipes (``Recognition/configs/**``), layered over a dataset's recipe when that model
# preset is chosen: model preset -> dataset -> partial config. ViT-L/14 trains at lr 1e-4 (and
# 30 epochs on SSv1); EVA02-CLIP-bigE-14 at 8 videos per GPU (1 on K400, with RandAugment), 6
# warm-up epochs on SS and 30 / 25 / 20 epochs.
_L14 = {"solver": {"lr": 1e-4}}
_E14_SS = {"data": {"batch_size": 8}, "solver": {"warmup_epochs": 6, "lr": 1e-4}}
MODEL_RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "side4video-l14": {
        "ssv1": deep_merge(_L14, {"solver": {"epochs": 30}}),
        "ssv2": _L14,
        "k400": _L14,
    },
    "side4video-e14": {
        "ssv1": deep_merge(_E14_SS, {"solver": {"epochs": 30}}),
        "ssv2": deep_merge(_E14_SS, {"solver": {"epochs": 25}}),
        "k400": {
            "data": {"batch_size": 1, "rand_augment": True},
            "solver": {"epochs": 20, "warmup_epochs": 4, "lr": 1e-4},
        },
    },
}


def model_recipe(task: str, dataset: str, preset: str) -> dict[str, Any]:
    """What choosing model ``preset`` changes in the recipe of ``dataset``.

    A dataset recipe names a preset and the weights it starts from; another preset on a dataset
    whose recipe loads pretrained weights starts from that preset's own weights (an EVA backbone
    has no ``openai`` tag), and the reference's recipe for that model applies on top.
    """
    recipe = DATASET_PRESETS.get(task, {}).get(dataset, {})
    recipe_model = recipe.get("model", {})
    if preset == recipe_model.get("preset"):
        return {}
    change: dict[str, Any] = {}
    if recipe_model.get("pretrained") is not None:
        registry, _ = MODEL_REGISTRIES[task]
        if preset in registry:
            change = {"model": {"pretrained": registry[preset].pretrained}}
    if task == "recognition":
        change = deep_merge(change, MODEL_RECIPES.get(preset, {}).get(dataset, {}))
    return change


def preset_config(task: str, dataset: str) -> dict[str, Any]:
    """The preset for one dataset as a plain nested dict (``data.dataset`` and ``task`` included)."""
    presets = DATASET_PRESETS.get(task)
    if presets is None:
        raise ConfigError(f"unknown task {task!r}; choose one of {sorted(DATASET_PRESETS)}")
    if dataset not in presets:
        raise ConfigError(
            f"unknown {task} dataset {dataset!r}; choose one of {sorted(presets)}, give a dataset "
            "file (path/to/dataset.yaml, `s4v data prepare` writes one), or use --dataset "
            "synthetic for a self-contained run"
        )
    return deep_merge(presets[dataset], {"task": task, "data": {"dataset": dataset}})


# The recipe a retrieval dataset file starts from (the reference's retrieval recipe).
RETRIEVAL_RECIPE_BASE = "msrvtt"


def read_dataset(path: Path, task: str) -> DatasetFile:
    """A dataset file of ``task``; its problems raised as :class:`ConfigError`."""
    try:
        dataset = read_dataset_file(path)
    except DatasetFileError as err:
        raise ConfigError(str(err)) from None
    if dataset.task != task:
        raise ConfigError(
            f"{dataset.path}: task is {dataset.task}; train it with `s4v run {dataset.task}`"
        )
    return dataset


def recipe_base(task: str, dataset: DatasetFile) -> str:
    """The registered dataset whose recipe a dataset file starts from."""
    return RECIPE_BASES[dataset.recipe] if task == "recognition" else RETRIEVAL_RECIPE_BASE


def dataset_fields(dataset: DatasetFile) -> dict[str, Any]:
    """The ``data`` fields a dataset file sets: its name, file, recipe base, root, source, lists
    and labels."""
    lists = dataset.lists
    return {
        "dataset": dataset.name,
        "dataset_file": str(dataset.path),
        "recipe_base": recipe_base(dataset.task, dataset),
        "root": str(dataset.root),
        "source": dataset.source,
        "train_list": str(lists.train),
        "val_list": str(lists.val),
        "test_list": None if lists.test is None else str(lists.test),
        "labels": None if dataset.labels is None else str(dataset.labels),
    }


def dataset_file_config(task: str, path: Path) -> tuple[dict[str, Any], str]:
    """The first layer for a dataset file, and the registered dataset its recipe comes from.

    The recipe base's recipe (``appearance``: Kinetics', ``motion``: Something-Something's) with
    the file's data fields; the run then carries the file's own name.
    """
    dataset = read_dataset(path, task)
    base = recipe_base(task, dataset)
    layer = deep_merge(DATASET_PRESETS[task][base], {"task": task, "data": dataset_fields(dataset)})
    return layer, base


def _check_recipes() -> None:
    for task, datasets in TASK_DATASETS.items():
        recipes = set(DATASET_PRESETS.get(task, {}))
        if recipes != set(datasets):
            raise RuntimeError(
                f"{task} recipes {sorted(recipes)} do not match the {task} datasets of "
                f"s4v_data.specs {sorted(datasets)}: add or remove the recipe"
            )
    for preset, by_dataset in MODEL_RECIPES.items():
        unknown = set(by_dataset) - set(DATASET_PRESETS["recognition"])
        if unknown:
            raise RuntimeError(f"model recipe {preset} names unknown datasets {sorted(unknown)}")


_check_recipes()

"""Model files: importing released Side4Video checkpoints, saving and loading s4v models.

Released recognition checkpoints (github.com/HJYao00/Side4Video @ 5d72352, ``model_best.pt``) are
``torch.save`` dicts ``{"epoch", "model_state_dict", "optimizer_state_dict"}`` whose
``model_state_dict`` holds the reference wrapper's ``visual.*`` (the ViT with the side network
inside) and ``fc.*`` (head) tensors, possibly with a DDP ``module.`` prefix. The key layouts are
in :mod:`s4v_recognition.releases`: :mod:`~s4v_recognition.releases.clip` for the CLIP ViT
presets, :mod:`~s4v_recognition.releases.eva` for the EVA ones (``side4video-e14``). Both import
the whole model from the file, frozen backbone included. The files come from the internet, so
they are read by :func:`s4v_core.weights.read_state_dict` (``torch.load(weights_only=True)``):
tensors and plain containers only, never arbitrary pickled objects. Converted files are s4v
checkpoints (:mod:`s4v_core.checkpoint`), self-contained (:class:`~s4v_core.checkpoint.SavedModel`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch

from s4v_core.backbone import file_sha256
from s4v_core.checkpoint import SavedModel, load_checkpoint, save_checkpoint
from s4v_core.side_eva import EvaSideNetwork
from s4v_core.weights import load_state_dict_strict, read_state_dict
from s4v_recognition.model import VideoClassifier, build_model
from s4v_recognition.presets import RecognitionPreset
from s4v_recognition.releases.clip import convert_reference_state
from s4v_recognition.releases.eva import load_eva_release

logger = logging.getLogger(__name__)


def _read_reference_state(path: Path) -> dict[str, torch.Tensor]:
    """A release's ``model_state_dict`` (or bare state dict), DDP ``module.`` prefix dropped."""
    return read_state_dict(path, wrappers=("model_state_dict",))


def _layout(preset: str, num_classes: int) -> VideoClassifier:
    """The ``preset`` side4video model built on the meta device: its modules and shapes, no data.

    Torch's generator is restored after, so that a random backbone built next (``pretrained``
    None) is drawn as if this had not run.
    """
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_model(preset, num_classes)


def is_eva_preset(preset: str) -> bool:
    """Whether ``preset``'s side4video model has the EVA side network, so that its releases have
    the reference's EVA layout (:mod:`s4v_recognition.releases.eva`)."""
    return isinstance(_layout(preset, 1).encoder.side, EvaSideNetwork)


def _load_release(
    path: Path, preset: str, num_classes: int, pretrained: str | None = None
) -> tuple[VideoClassifier, dict]:
    state = _read_reference_state(path)
    if "fc.weight" in state and state["fc.weight"].shape[0] != num_classes:
        raise ValueError(
            f"{path}: key 'fc.weight' has {state['fc.weight'].shape[0]} classes, "
            f"expected num_classes={num_classes}"
        )
    layout = _layout(preset, num_classes)
    if isinstance(layout.encoder.side, EvaSideNetwork):
        return load_eva_release(path, state, layout, preset, num_classes, pretrained), state
    if pretrained is not None:
        raise ValueError(
            f"pretrained={pretrained!r}: a release of preset {preset!r} carries its frozen "
            f"backbone, which is loaded from {path} (pretrained only serves EVA files saved "
            "without their tower)"
        )
    model = build_model(preset, num_classes)
    load_state_dict_strict(model, convert_reference_state(state, model, str(path)), str(path))
    # The file supplies every weight, the frozen backbone included: it is the backbone's source,
    # exactly as if the model had been built with pretrained=path.
    model.set_backbone_identity(
        {"name": model.preset.backbone, "pretrained": str(path), "sha256": file_sha256(path)}
    )
    return model.eval(), state


def load_side4video_checkpoint(
    path: str | Path, preset: str, num_classes: int, *, pretrained: str | None = None
) -> VideoClassifier:
    """Build the ``preset`` side4video model and load a released Side4Video checkpoint into it.

    Args:
        path: the released file (``{"model_state_dict": ...}`` or a bare state dict).
        preset: the matching preset, e.g. ``side4video-b16`` for a ViT-B/16 release.
        num_classes: K of the release's head (174 for Something-Something, 400 for Kinetics).
        pretrained: only for an EVA file that holds no tower entries (a side network and head
            saved alone): the frozen EVA backbone's weights, an open_clip tag or a local file;
            None takes the preset's own tag. A release carries its frozen backbone (CLIP or
            EVA) and is imported whole, so passing ``pretrained`` for one is an error.

    Returns:
        The model in eval mode. When the file supplied the backbone, its ``backbone_identity``
        names ``path`` and its SHA-256, and ``build_model(preset, num_classes, pretrained=path)``
        rebuilds the same backbone; otherwise it is the identity of ``pretrained``'s weights.

    Raises:
        ValueError: naming the key (and shapes), for unknown, missing or wrongly shaped entries,
            a tower in the file that is not the preset's, or a file that is not a checkpoint of
            tensors; for ``pretrained`` with a release that carries its backbone.
    """
    model, _ = _load_release(Path(path), preset, num_classes, pretrained)
    logger.info("loaded Side4Video checkpoint %s into preset %s", path, preset)
    return model


def convert_side4video_checkpoint(
    source: str | Path,
    target: str | Path,
    preset: str,
    num_classes: int,
    *,
    pretrained: str | None = None,
    extra: dict | None = None,
) -> VideoClassifier:
    """Convert a released checkpoint into a self-contained s4v model file.

    The file is an s4v checkpoint (``format``, ``version``, ``task``, ``backbone``, ``model``
    as written by training runs) plus what is needed to rebuild the model without anything else:
    ``preset``, ``method``, ``num_classes``, ``settings`` and the frozen backbone's weights in
    ``backbone_state_dict`` (those of the release, or of ``pretrained`` for an EVA file without
    its tower, as in :func:`load_side4video_checkpoint`). ``extra`` entries (e.g. a run ``config``) are stored as
    well. Read it back with :func:`load_converted_checkpoint`.
    """
    source, target = Path(source), Path(target)
    model, _ = _load_release(source, preset, num_classes, pretrained)
    save_converted_checkpoint(model, preset, source, target, extra=extra)
    return model


def save_converted_checkpoint(
    model: VideoClassifier,
    preset: str,
    source: str | Path,
    target: str | Path,
    *,
    extra: dict | None = None,
) -> None:
    """Write ``model`` (imported from the release ``source``) as :func:`convert_side4video_checkpoint`
    does; the second half of it, for callers that look at the model before writing it."""
    source, target = Path(source), Path(target)
    identity = model.backbone_identity
    # When the release is the backbone's source its hash is already known.
    from_release = identity["pretrained"] == str(source) and identity["sha256"] is not None
    release_sha256 = identity["sha256"] if from_release else file_sha256(source)
    trainable = model.trainable_state_dict()
    saved = SavedModel(
        task="recognition",
        preset=preset,
        method=model.method,
        num_classes=model.num_classes,
        **_settings(model.preset),
        backbone=identity,
        trainable=trainable,
        frozen={k: v for k, v in model.state_dict().items() if k not in trainable},
    )
    converted_from = {"path": str(source), "sha256": release_sha256}
    save_checkpoint(target, {**saved.fields(), "converted_from": converted_from, **(extra or {})})
    logger.info("converted %s -> %s", source, target)


def _settings(spec: RecognitionPreset) -> dict:
    return {k: v for k, v in asdict(spec).items() if k in ("num_frames", "side_dim", "dropout")}


def build_saved_model(saved: SavedModel, source: str | Path = "checkpoint") -> VideoClassifier:
    """The recognition model a self-contained checkpoint stores (see
    :class:`s4v_core.checkpoint.SavedModel`), in eval mode, its backbone from the file's weights.

    Raises:
        WeightsFileError: naming ``source`` and the keys that do not fit the rebuilt model.
    """
    model = build_model(saved.preset, saved.num_classes, method=saved.method, **saved.settings)
    load_state_dict_strict(model, {**saved.frozen, **saved.trainable}, str(source))
    model.set_backbone_identity(saved.backbone)
    return model.eval()


def load_converted_checkpoint(path: str | Path) -> VideoClassifier:
    """The model saved by :func:`convert_side4video_checkpoint`, in eval mode.

    Raises:
        WeightsFileError: the file is missing, unreadable, not a self-contained s4v checkpoint
            (:class:`~s4v_core.checkpoint.CheckpointError`), or its weights do not fit.
    """
    saved = SavedModel.from_checkpoint(load_checkpoint(path), path)
    return build_saved_model(saved, path)

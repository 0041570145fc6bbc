"""Exact loading of a checkpoint, its refusals, and the recognizer API on top of it."""

from __future__ import annotations

import pytest
import torch

from s4v_core.checkpoint import load_checkpoint, save_checkpoint
from s4v_orchestration.inference import ModelLoadError, load_model, load_recognizer


def _edited(path, tmp_path, edit):
    state = load_checkpoint(path)
    edit(state)
    out = tmp_path / "edited.pt"
    save_checkpoint(out, {k: v for k, v in state.items() if k not in ("format", "version")})
    return out


def test_load_rebuilds_the_trained_model_bit_for_bit(recognition_checkpoint, one_thread):
    path, trained, _ = recognition_checkpoint
    loaded = load_model(path)
    clips = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model(clips), trained(clips))
    assert loaded.class_names[0] == "moving left to right"
    assert loaded.preprocessing.num_frames == 8 and loaded.preprocessing.input_size == 32
    assert loaded.frozen_sha256 is not None  # a random tower, redrawn and hashed


def test_a_differently_seeded_random_tower_is_not_the_trained_model(recognition_checkpoint):
    """What `build_model` + `load_state_dict(strict=False)` does wrong: another random draw."""
    path, _, config = recognition_checkpoint
    loaded = load_model(path)
    state = load_checkpoint(path)
    state["config"]["seed"] = config.seed + 1
    other = load_model(_edited(path, path.parent, lambda s: s.update(config=state["config"])))
    clips = torch.randn(1, 8, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(other.model(clips), loaded.model(clips))
    assert other.frozen_sha256 != loaded.frozen_sha256


def test_unknown_preset_is_refused(recognition_checkpoint, tmp_path):
    path, _, _ = recognition_checkpoint
    bad = _edited(path, tmp_path, lambda s: s["config"]["model"].update(preset="giant-404"))
    with pytest.raises(ModelLoadError, match="unknown recognition preset 'giant-404'"):
        load_model(bad)


def test_missing_local_backbone_weights_are_refused(recognition_checkpoint, tmp_path):
    path, _, _ = recognition_checkpoint
    missing = tmp_path / "gone" / "clip.bin"
    bad = _edited(
        path,
        tmp_path,
        lambda s: s.update(
            backbone={"name": "s4v-tiny", "pretrained": str(missing), "sha256": "ab"}
        ),
    )
    with pytest.raises(
        ModelLoadError, match=r"weights file .*clip.bin it was trained from is missing"
    ):
        load_model(bad)


def test_changed_local_backbone_weights_are_refused(recognition_checkpoint, tmp_path):
    path, _, _ = recognition_checkpoint
    weights = tmp_path / "clip.bin"
    weights.write_bytes(b"not the weights it was trained on")
    bad = _edited(
        path,
        tmp_path,
        lambda s: s.update(
            backbone={"name": "s4v-tiny", "pretrained": str(weights), "sha256": "0" * 64}
        ),
    )
    with pytest.raises(ModelLoadError, match="changed since training"):
        load_model(bad)


def test_trained_tensors_that_do_not_fit_are_refused(recognition_checkpoint, tmp_path):
    path, _, _ = recognition_checkpoint
    bad = _edited(path, tmp_path, lambda s: s["model"].pop(sorted(s["model"])[0]))
    with pytest.raises(ModelLoadError, match="do not fit"):
        load_model(bad)


def test_recognizer_predicts_a_frame_folder_and_a_tensor(recognition_checkpoint, synthetic_root):
    path, trained, _ = recognition_checkpoint
    recognizer = load_recognizer(path)
    top = recognizer.predict(synthetic_root / "rawframes" / "vid_00_0000", k=3)
    assert len(top) == 3 and all(name in recognizer.class_names for name, _ in top)
    assert top[0][1] >= top[1][1] >= top[2][1] and sum(p for _, p in top) <= 1.0 + 1e-6
    # Prepared views given as a tensor give the model's own softmax.
    views = torch.randn(8, 3, 32, 32)
    probs = recognizer.probabilities(views)
    with torch.no_grad():
        expected = trained(views[None]).softmax(-1)[0]
    assert torch.allclose(probs, expected, atol=1e-6)


def test_retriever_scores_like_the_model(retrieval_checkpoint, captioned_root, one_thread):
    from s4v_orchestration.inference import load_retriever

    path, trained, _ = retrieval_checkpoint
    retriever = load_retriever(path)
    folders = sorted((captioned_root / "rawframes").iterdir())[:3]
    frames = torch.stack([retriever.embed_video(folder) for folder in folders])
    text = retriever.embed_texts(["a red square moves from left to right"])
    scores = retriever.scores(text, frames)
    assert scores.shape == (1, 3)
    ranked = retriever.search("a red square moves from left to right", folders, k=3)
    assert [score for _, score in ranked] == sorted(scores[0].tolist(), reverse=True)
    # The embeddings are those of the trained model, not of a fresh build.
    clips = torch.randn(1, 8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            retriever.model.encode_video(clips).frames, trained.encode_video(clips).frames
        )

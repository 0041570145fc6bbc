"""The retrieval model: forward contract, gradient routing, side-off baseline, checkpoints, text tower."""

from __future__ import annotations

import pytest
import torch

from s4v_core.backbone import create_clip
from s4v_retrieval import PRESETS, build_model, tokenizer_for
from s4v_retrieval.loss import symmetric_infonce
from s4v_retrieval.text import CLIPTextTower, build_tokenizer

CAPTIONS = ["a red square moves left", "a blue circle moves up", "a green dot", "snow"]


def _batch(model, b: int = 4):
    frames = torch.randn(b, model.num_frames, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return frames, tokenizer_for(model)(CAPTIONS[:b])


def test_tiny_forward_gives_scaled_square_logits() -> None:
    torch.manual_seed(0)
    model = build_model("tiny")
    frames, tokens = _batch(model)
    assert tokens.shape == (4, PRESETS["tiny"].max_words)
    logits = model(frames, tokens)
    assert logits.shape == (4, 4)
    unscaled = model.similarity(model.encode_text(tokens), model.encode_video(frames))
    torch.testing.assert_close(logits, model.logit_scale() * unscaled)
    assert unscaled.abs().max() <= 1.0 + 1e-5


def test_gradients_reach_side_head_and_temperature_but_not_the_frozen_towers() -> None:
    torch.manual_seed(0)
    model = build_model("tiny")
    with torch.no_grad():
        model.video.side_proj.normal_(std=0.1)  # at init (zero) the side branch gets no gradient
    symmetric_infonce(model(*_batch(model))).backward()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith(("video.side", "similarity.", "logit_scale.")) for n in trained)
    # The last bias of a WTI weight head shifts every logit of a softmax alike: its gradient is
    # zero in exact arithmetic, so it is rounding noise (exactly 0.0 on some CPUs) and only has
    # to exist.
    shift_invariant = {"similarity.text_weight.2.bias", "similarity.frame_weight.2.bias"}
    for name, p in model.named_parameters():
        if name in shift_invariant:
            assert p.grad is not None and p.grad.abs().max() < 1e-6, name
        elif p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert set(model.parameter_groups()) == {"main"}


def test_a_trainable_text_tower_gets_its_own_parameter_group() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", train_text=True)
    symmetric_infonce(model(*_batch(model))).backward()
    groups = model.parameter_groups()
    assert set(groups) == {"main", "text"}
    assert {id(p) for p in groups["text"]} == {id(p) for p in model.text.parameters()}
    assert all(p.grad is not None for p in groups["text"])
    assert any(k.startswith("text.") for k in model.trainable_state_dict())


def test_side_network_off_equals_side4video_at_initialisation() -> None:
    torch.manual_seed(0)
    side = build_model("tiny", method="side4video")
    torch.manual_seed(0)
    plain = build_model("tiny", method="frozen-clip")
    assert plain.video.side is None
    plain.similarity.load_state_dict(side.similarity.state_dict())
    frames, tokens = _batch(side)
    side.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(side(frames, tokens), plain(frames, tokens))
    trained = {n for n, p in plain.named_parameters() if p.requires_grad}
    assert all(n.startswith(("similarity.", "logit_scale.")) for n in trained)


def test_trainable_state_round_trips_without_any_frozen_weight() -> None:
    torch.manual_seed(0)
    model = build_model("tiny")
    with torch.no_grad():
        model.video.side_proj.normal_(std=0.1)
    state = model.trainable_state_dict()
    assert not any(k.startswith(("video.backbone.", "text.")) for k in state)
    assert "video.side.blocks.0.mlp.norm.running_mean" in state  # BatchNorm buffers travel
    torch.manual_seed(0)
    fresh = build_model("tiny")
    fresh.load_trainable_state_dict(state)
    frames, tokens = _batch(model)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(frames, tokens), model(frames, tokens))
    state.pop("video.side_proj")
    with pytest.raises(ValueError, match="missing"):
        fresh.load_trainable_state_dict(state)


def test_temperature_is_clamped_after_a_step() -> None:
    model = build_model("tiny")
    with torch.no_grad():
        model.logit_scale.log_scale.fill_(9.0)
    model.after_optimizer_step()
    assert model.logit_scale().item() == pytest.approx(100.0)


def test_text_tower_pooled_feature_equals_open_clip_encode_text() -> None:
    # The causal mask makes a caption's features independent of the positions after it, so the
    # tower truncated to 16 tokens gives open_clip's full-context sentence embedding.
    torch.manual_seed(0)
    clip, _ = create_clip("s4v-tiny", None)
    tower = CLIPTextTower(clip, context_length=16, trainable=False)
    feats = tower(build_tokenizer("s4v-tiny", 16)(CAPTIONS))
    with torch.no_grad():
        expected = clip.encode_text(build_tokenizer("s4v-tiny", clip.context_length)(CAPTIONS))
    torch.testing.assert_close(feats.pooled, expected, rtol=1e-5, atol=1e-5)
    assert feats.tokens.shape == (4, 16, 64)
    assert feats.mask.sum(1).tolist() == [7, 7, 5, 3]  # start + words + end
    assert not feats.tokens.requires_grad


def test_bad_arguments_are_reported() -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("huge")
    with pytest.raises(ValueError, match="unknown method"):
        build_model("tiny", method="full-finetune")
    with pytest.raises(ValueError, match="unknown similarity"):
        build_model("tiny", similarity="seqTransf")
    with pytest.raises(ValueError, match="context_length"):
        build_model("tiny", max_words=64)

"""EVA retrieval: presets built as Retrieval/eva_clip/eva_modeling.py builds them, and its files.

The files are the state dicts of ``tests/reference_eva.py``'s ``CLIP4CLIP`` (the tests' own
re-statement of the reference's EVA retrieval model, names and forward), saved bare as the
reference's ``save_model`` does; the expected scores are that re-statement's.
"""

from __future__ import annotations

import pytest
import torch

from s4v_core.side_retrieval import RetrievalEvaSideNetwork
from s4v_retrieval.model import build_model, count_parameters
from s4v_retrieval.releases import load_retrieval_release

T, C, WORDS = 8, 128, 16  # the tiny-eva retrieval preset


def _reference(ref, **tower):
    torch.manual_seed(0)
    visual = ref.EVAVisionTransformer(
        **ref.tiny_eva_tower(**tower), frames=T, side_dim=C, retrieval=True
    )
    text = ref.TextTransformer(context=32, width=64, heads=2, layers=2, embed=64)
    model = ref.CLIP4CLIP(ref.CustomCLIP(visual, text), embed=64)
    ref.randomise_batch_norms(model, torch.Generator().manual_seed(1))
    return model.eval()


@pytest.fixture(scope="module")
def release(reference_eva, tmp_path_factory):
    model = _reference(reference_eva)
    path = tmp_path_factory.mktemp("eva-retrieval") / "pytorch_model.bin.4"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.mark.usefixtures("one_thread")
def test_a_reference_eva_retrieval_file_gives_the_reference_scores(release) -> None:
    reference, path = release
    model = load_retrieval_release(path, "tiny-eva")
    generator = torch.Generator().manual_seed(2)
    frames = torch.randn(3, T, 3, 32, 32, generator=generator)
    # Every position a word: the reference's max over tokens also sees zeroed padding, s4v's
    # does not (a documented difference), so captions without padding compare the rest exactly.
    tokens = torch.randint(1, 49408, (2, WORDS), generator=generator)
    with torch.no_grad():
        expected = reference.similarity(tokens, frames)
        got = model.similarity(model.encode_text(tokens), model.encode_video(frames))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        frames_ref = reference.clip.visual(frames.flatten(0, 1))
        torch.testing.assert_close(model.encode_video(frames).frames, frames_ref)
    assert model.logit_scale.log_scale.item() == pytest.approx(3.0)
    assert model.backbone_identity["pretrained"] == str(path)


def test_a_retrieval_file_of_another_model_is_refused_by_name(
    reference_eva, tmp_path, release
) -> None:
    path = tmp_path / "pytorch_model.bin.1"
    torch.save(_reference(reference_eva, swiglu=False, hidden=170).state_dict(), path)
    with pytest.raises(ValueError, match=r"'blocks.0.mlp.fc1.bias' .* has no place"):
        load_retrieval_release(path, "tiny-eva")
    state = torch.load(release[1], weights_only=True)
    torch.save({**state, "cross.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"unknown key 'cross.weight'"):
        load_retrieval_release(path, "tiny-eva")
    del state["clip.visual.side_proj"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing key 'clip.visual.side_proj'"):
        load_retrieval_release(path, "tiny-eva")


def test_the_eva_presets_are_built_as_the_reference_builds_them() -> None:
    with torch.device("meta"):
        model = build_model("side4video-e14")
    side = model.video.side
    assert isinstance(side, RetrievalEvaSideNetwork)
    assert side.side_layers == tuple(range(1, 64, 2)) and side.out_dim == 576
    assert side.pos_embed.shape == (256, 576) and side.post_norm is not None
    assert model.video.side_proj.shape == (576, 1792)
    assert model.similarity.text_weight[0].weight.shape == (1024, 1024)
    assert (model.num_frames, model.max_words) == (12, 32)
    frozen = [p for n, p in model.named_parameters() if n.startswith(("video.backbone", "text."))]
    assert {p.dtype for p in frozen} == {torch.bfloat16}
    assert not any(p.requires_grad for p in frozen)
    assert count_parameters("side4video-e14") == (186_408_003, 4_890_997_571)


@pytest.mark.usefixtures("one_thread")
def test_side_proj_starts_at_zero_so_the_tower_starts_as_plain_eva_clip_frames() -> None:
    torch.manual_seed(0)
    model = build_model("tiny-eva").eval()
    plain = build_model("tiny-eva", method="frozen-clip").eval()
    plain.video.backbone.load_state_dict(model.video.backbone.state_dict())
    frames = torch.randn(1, T, 3, 32, 32)
    assert not model.video.side_proj.any()
    with torch.no_grad():
        torch.testing.assert_close(model.video(frames), plain.video(frames))

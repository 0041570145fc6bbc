"""AIM (arXiv 2302.03024) over a frozen CLIP ViT: contract, paper maths, gradients, counts."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from einops import rearrange
from torch import nn

from s4v_core.assembly import TrainableModule
from s4v_core.backbone import create_clip
from s4v_core.memory import SavedTensorMeter
from s4v_core.methods.aim import Adapter, AIMBlock, AIMConfig, AIMEncoder
from s4v_recognition.config import RecognitionPreset
from s4v_recognition.encoders import aim as build
from s4v_recognition.presets import get_preset

pytestmark = pytest.mark.usefixtures("one_thread")


def _preset(**fields) -> RecognitionPreset:
    """The tiny recognition preset with ``fields`` changed (the method's builder reads a preset)."""
    return replace(get_preset("tiny"), **fields)


B, T, SIZE = 2, 8, 32
TINY = _preset(backbone="s4v-tiny", num_frames=T, image_size=SIZE)


def _frames(seed: int = 1, batch: int = B, frames: int = T, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _tiny(seed: int = 0, **config) -> tuple[AIMEncoder, nn.Module]:
    """The AIM encoder on a seeded random tiny CLIP, and that CLIP's image tower."""
    torch.manual_seed(seed)
    clip, _ = create_clip("s4v-tiny", None)
    return AIMEncoder(clip.visual, AIMConfig(num_frames=T, **config)), clip.visual


def _perturb(encoder: AIMEncoder, seed: int = 2) -> AIMEncoder:
    """Random non-zero adapter up projections and temporal embedding.

    At initialisation every adapter's last Linear is zero (AIM's init), which makes the T- and
    J-adapters output 0 and blocks the gradient to their first Linear; tests of the adapted maths
    need them switched on.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, Adapter):
                module.fc2.weight.copy_(0.2 * torch.randn(module.fc2.weight.shape, generator=g))
                module.fc2.bias.copy_(0.1 * torch.randn(module.fc2.bias.shape, generator=g))
        encoder.temporal_embedding.copy_(torch.randn(encoder.temporal_embedding.shape, generator=g))
    return encoder


def _trained_parameters(encoder: AIMEncoder) -> list[nn.Parameter]:
    """What AIM trains, found structurally: the adapters, temporal embedding and ln_post."""
    adapters = [m for m in encoder.modules() if isinstance(m, Adapter)]
    return [
        *(p for adapter in adapters for p in adapter.parameters()),
        encoder.temporal_embedding,
        *encoder.ln_post.parameters(),
    ]


def test_build_maps_frames_to_finite_float32_features_of_out_dim() -> None:
    encoder, identity = build(TINY, None, False)
    features = encoder(_frames())
    assert encoder.out_dim == 64  # the ViT width: CLIP's proj is not used
    assert features.shape == (B, encoder.out_dim)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    assert identity == {"name": "s4v-tiny", "pretrained": None, "sha256": None}


def test_wrong_frame_count_image_size_or_setting_raises_value_error() -> None:
    encoder, _ = build(TINY, None, False)
    with pytest.raises(ValueError, match="built for 8 frames"):
        encoder(_frames(frames=4))  # the temporal embedding has one row per frame
    with pytest.raises(ValueError, match=r"expects frames \(B, T, 3, 32, 32\)"):
        encoder(_frames(size=16))
    with pytest.raises(ValueError, match="image_size"):
        build(_preset(backbone="s4v-tiny", num_frames=T, image_size=64), None, False)
    with pytest.raises(ValueError, match="num_tadapter"):
        AIMConfig(num_frames=T, num_tadapter=3)


def test_gradients_reach_every_trained_parameter_through_the_frozen_clip_only() -> None:
    # Gradients flow *through* the frozen backbone (an adapter method): the adapters of block 0
    # get theirs only through the frozen blocks 1-3, and the input frames get one through the
    # frozen patch embedding; no frozen CLIP weight gets a gradient.
    encoder = _perturb(build(TINY, None, False)[0])
    head = nn.Linear(encoder.out_dim, 5)
    frames = _frames().requires_grad_(True)
    head(encoder(frames)).sum().backward()

    trained = _trained_parameters(encoder)
    # T_Adapter_in, T-, S-, J-adapter (2 Linears each) in each of 4 blocks, + embedding, ln_post.
    assert len(trained) == 4 * 4 * 4 + 1 + 2
    trained_ids = {id(p) for p in trained}
    assert {id(p) for p in encoder.parameters() if p.requires_grad} == trained_ids
    for name, param in encoder.named_parameters():
        if id(param) in trained_ids:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name
    assert frames.grad is not None and frames.grad.abs().sum() > 0


def test_temporal_embedding_adds_row_t_to_every_token_of_frame_t() -> None:
    encoder = _perturb(_tiny()[0])
    seen = []
    encoder.ln_pre.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    frames = _frames()
    rows = encoder.temporal_embedding.detach().clone()  # (T, D)
    with torch.no_grad():
        encoder.embed(frames)
        encoder.temporal_embedding.zero_()
        encoder.embed(frames)
    added = rearrange(seen[0] - seen[1], "(b t) n d -> b t n d", t=T)  # ln_pre's inputs
    torch.testing.assert_close(added, rows[None, :, None].expand_as(added))


def test_trainable_state_dict_holds_exactly_what_aim_trains_and_loads_back() -> None:
    class Model(TrainableModule):
        def __init__(self, encoder: AIMEncoder) -> None:
            super().__init__()
            self.encoder = encoder

    model = Model(_perturb(_tiny()[0]))
    state = model.trainable_state_dict()
    params = dict(model.named_parameters())
    assert {id(params[key]) for key in state} == {id(p) for p in _trained_parameters(model.encoder)}
    fresh = Model(_tiny()[0])  # frozen weights rebuilt from the same CLIP, adapters at init
    fresh.load_trainable_state_dict(state)
    with torch.no_grad():
        frames = _frames()
        torch.testing.assert_close(fresh.encoder(frames), model.encoder(frames), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("backbone", "num_tadapter", "classes", "expected", "paper_m"),
    [
        # Side4Video memory table (SSv2, K=174) / AIM's SSv2 config with T_Adapter_in: 14M, 50M.
        ("ViT-B-16-quickgelu", 2, 174, 14_343_342, 14),
        ("ViT-L-14-quickgelu", 2, 174, 50_643_118, 50),
        # AIM's Kinetics-400 table (3 adapters a block, 400-way head): 11M, 38M.
        ("ViT-B-16-quickgelu", 1, 400, 10_966_672, 11),
        ("ViT-L-14-quickgelu", 1, 400, 38_261_136, 38),
    ],
)
def test_trainable_parameters_match_paper_tables_on_meta(
    backbone: str, num_tadapter: int, classes: int, expected: int, paper_m: int
) -> None:
    spec = _preset(backbone=backbone, num_frames=8, image_size=224)
    with torch.device("meta"):
        if num_tadapter == 2:  # the builder's (default) configuration
            encoder, _ = build(spec, None, False)
        else:
            clip, _ = create_clip(backbone, None)
            encoder = AIMEncoder(clip.visual, AIMConfig(num_frames=8, num_tadapter=num_tadapter))
    assert all(p.is_meta for p in encoder.parameters())
    d = encoder.out_dim
    adapter = 2 * d * (d // 4) + d // 4 + d  # Linear(D, D/4) + Linear(D/4, D)
    depth = len(encoder.blocks)
    # Adapters per block, the temporal embedding (T x D), ln_post (2D), the K-way head.
    formula = (num_tadapter + 2) * adapter * depth + 8 * d + 2 * d + classes * d + classes
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    assert trainable + classes * d + classes == formula == expected
    assert abs(expected - paper_m * 1e6) <= 0.1 * paper_m * 1e6


def test_zero_initialised_adapters_reproduce_the_frozen_clip_class_token() -> None:
    # AIM's init (zero up projections, zero temporal embedding) makes every block the CLIP block:
    # T- and J-adapters add 0 and the S-adapter with its skip is the identity.
    encoder, visual = _tiny()
    frames = _frames()
    visual.proj = None  # CLIP's pooled output before the projection: ln_post of the class token
    with torch.no_grad():
        expected = rearrange(
            visual(rearrange(frames, "b t c h w -> (b t) c h w")), "(b t) d -> b t d", t=T
        )
        torch.testing.assert_close(encoder(frames), expected.mean(dim=1))


@pytest.mark.parametrize("num_tadapter", [1, 2])
def test_block_matches_a_looped_reference_of_the_aim_equations(num_tadapter: int) -> None:
    encoder, _ = _tiny(num_tadapter=num_tadapter)
    block: AIMBlock = _perturb(encoder).blocks[1]
    frozen = block.block
    x = torch.randn(B * T, 17, 64, generator=torch.Generator().manual_seed(3))  # (B*T, 1+N, D)

    def attend(seq: torch.Tensor) -> torch.Tensor:  # one sequence (S, D)
        return frozen.attn(seq[None], seq[None], seq[None], need_weights=False)[0][0]

    with torch.no_grad():
        video = x.view(B, T, 17, 64)
        temporal = torch.zeros_like(video)
        for b in range(B):
            for n in range(17):  # T-MSA: token n of video b over its T frames
                z = frozen.ln_1(video[b, :, n])
                if num_tadapter == 2:
                    z = block.t_adapter_in(z)
                temporal[b, :, n] = block.t_adapter(attend(z))
        y = (video + temporal).view(B * T, 17, 64)
        y = torch.stack([f + block.s_adapter(attend(frozen.ln_1(f))) for f in y])  # per frame
        expected = y + frozen.mlp(frozen.ln_2(y)) + 0.5 * block.j_adapter(frozen.ln_2(y))
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_videos_in_a_batch_do_not_interact() -> None:
    encoder = _perturb(_tiny()[0])
    frames = _frames()
    changed = frames.clone()
    changed[1] = _frames(seed=9)[1]
    with torch.no_grad():
        first, second = encoder(frames), encoder(changed)
    torch.testing.assert_close(first[0], second[0], rtol=0, atol=0)
    assert not torch.allclose(first[1], second[1])


def test_grad_checkpointing_gives_the_same_features_and_gradients_and_saves_less() -> None:
    results, saved = {}, {}
    for checkpointing in (False, True):
        encoder = _perturb(_tiny()[0])
        encoder.set_grad_checkpointing(checkpointing)
        frames = _frames().requires_grad_(True)
        with SavedTensorMeter(exclude=encoder.parameters()) as meter:
            features = encoder(frames)
        saved[checkpointing] = meter.bytes
        trained = _trained_parameters(encoder)
        grads = torch.autograd.grad(features.square().sum(), [frames, *trained])
        results[checkpointing] = (features.detach(), grads)
    torch.testing.assert_close(results[True][0], results[False][0], rtol=0, atol=0)
    for got, want in zip(results[True][1], results[False][1], strict=True):
        torch.testing.assert_close(got, want)
    assert saved[True] < 0.5 * saved[False]


def test_same_seed_gives_the_same_features() -> None:
    frames = _frames()
    with torch.no_grad():
        first = _perturb(_tiny(seed=0)[0])(frames)
        again = _perturb(_tiny(seed=0)[0])(frames)
        other = _perturb(_tiny(seed=1)[0])(frames)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)

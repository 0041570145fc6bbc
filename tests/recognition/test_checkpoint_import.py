"""Released Side4Video checkpoints: key mapping, logits parity with the reference maths, errors.

The checkpoints are written here in the reference key layout (``model_best.pt`` as the reference's
``Recognition/train_vision.py`` saves the modules of ``Recognition/clip/model.py``, github.com/HJYao00/Side4Video @ 5d72352) at the tiny preset's
dimensions, and the expected logits come from an independent, sequence-first re-statement of the
reference forward (``VisualTransformer`` with its ``AttnCBlock`` side blocks) using only torch.nn.functional on the raw state dict.
"""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F

from s4v_core.weights import WeightsFileError
from s4v_recognition import (
    build_model,
    convert_side4video_checkpoint,
    load_converted_checkpoint,
    load_side4video_checkpoint,
)
from s4v_recognition.releases import reference_key_map

# The tiny preset: s4v-tiny ViT (D=64, 4 layers, 2 heads, patch 8, 32 px), T=8, C=128, K=5.
D, L, HEADS, P, SIZE, T, C, K = 64, 4, 2, 8, 32, 8, 128, 5
GRID = SIZE // P
N = GRID * GRID

# The reference's state-dict keys, one row per module parameter ({i} = layer 0..L-1).
SPEC_TABLE = [
    "visual.class_embedding",
    "visual.positional_embedding",
    "visual.conv1.weight",
    "visual.ln_pre.{weight,bias}",
    "visual.transformer.resblocks.{i}.ln_1.{weight,bias}",
    "visual.transformer.resblocks.{i}.ln_2.{weight,bias}",
    "visual.transformer.resblocks.{i}.attn.{in_proj_weight,in_proj_bias}",
    "visual.transformer.resblocks.{i}.attn.out_proj.{weight,bias}",
    "visual.transformer.resblocks.{i}.mlp.c_fc.{weight,bias}",
    "visual.transformer.resblocks.{i}.mlp.c_proj.{weight,bias}",
    "visual.side_conv1.{weight,bias}",
    "visual.side_pre_bn3d.{weight,bias,running_mean,running_var,num_batches_tracked}",
    "visual.transformer.side_spatial_position_embeddings",
    "visual.transformer.side_lns.{i}.{weight,bias}",
    "visual.transformer.side_linears.{i}.{weight,bias}",
    "visual.transformer.side_transformer.{i}.bn_1.{weight,bias,running_mean,running_var,num_batches_tracked}",
    "visual.transformer.side_transformer.{i}.conv.0.{weight,bias}",
    "visual.transformer.side_transformer.{i}.conv.1.{weight,bias}",
    "visual.transformer.side_transformer.{i}.conv.2.{weight,bias}",
    "visual.transformer.side_transformer.{i}.ln_1.{weight,bias}",
    "visual.transformer.side_transformer.{i}.attn.{in_proj_weight,in_proj_bias}",
    "visual.transformer.side_transformer.{i}.attn.out_proj.{weight,bias}",
    "visual.transformer.side_transformer.{i}.bn_2.{weight,bias,running_mean,running_var,num_batches_tracked}",
    "visual.transformer.side_transformer.{i}.mlp.fc1.{weight,bias}",
    "visual.transformer.side_transformer.{i}.mlp.fc2.{weight,bias}",
    "visual.side_post_bn.{weight,bias,running_mean,running_var,num_batches_tracked}",
    "fc.{weight,bias}",
]


def _expand(pattern: str, layers: int) -> list[str]:
    keys = [pattern]
    if "{" in pattern.rsplit(".", 1)[-1]:
        head, alternatives = pattern.rsplit(".{", 1)
        keys = [f"{head}.{leaf}" for leaf in alternatives.rstrip("}").split(",")]
    return (
        [k.replace("{i}", str(i)) for k in keys for i in range(layers)]
        if "{i}" in pattern
        else keys
    )


def _spec_keys(layers: int) -> set[str]:
    return {key for pattern in SPEC_TABLE for key in _expand(pattern, layers)}


_FIXED_SHAPES = {
    "visual.class_embedding": (D,),
    "visual.positional_embedding": (N + 1, D),
    "visual.conv1.weight": (D, 3, P, P),
    "visual.side_conv1.weight": (C, 3, 3, P, P),
    "visual.transformer.side_spatial_position_embeddings": (N, C),
    "fc.weight": (K, C),
    "fc.bias": (K,),
}


def _shape(key: str) -> tuple[int, ...]:
    """The tensor shape of a reference key at tiny dimensions (the shape ``Recognition/clip/model.py`` gives it)."""
    if key in _FIXED_SHAPES:
        return _FIXED_SHAPES[key]
    module, leaf = key.split(".")[-2:]
    if leaf == "num_batches_tracked":
        return ()
    if key.startswith(("visual.ln_pre", "visual.transformer.side_lns")):
        return (D,)
    if key.startswith("visual.transformer.side_linears"):
        return (C, D) if leaf == "weight" else (C,)
    w = D if ".resblocks." in key else C  # backbone or side block width
    shapes = {
        ("attn", "in_proj_weight"): (3 * w, w),
        ("attn", "in_proj_bias"): (3 * w,),
        ("out_proj", "weight"): (w, w),
        ("c_fc", "weight"): (4 * w, w),
        ("c_fc", "bias"): (4 * w,),
        ("c_proj", "weight"): (w, 4 * w),
        ("0", "weight"): (w, w, 1, 1, 1),  # conv.0, 1x1x1
        ("1", "weight"): (w, 1, 3, 1, 1),  # conv.1, depth-wise temporal
        ("2", "weight"): (w, w, 1, 1, 1),  # conv.2, 1x1x1
        ("fc1", "weight"): (4 * w, w),
        ("fc1", "bias"): (4 * w,),
        ("fc2", "weight"): (w, 4 * w),
    }
    return shapes.get((module, leaf), (w,))


def _reference_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(_spec_keys(L)):
        shape = _shape(key)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(123)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight")) or "side_lns" in key:
            state[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=g)
    return state


def _bn(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    return F.batch_norm(
        x,
        state[f"{prefix}.running_mean"],
        state[f"{prefix}.running_var"],
        state[f"{prefix}.weight"],
        state[f"{prefix}.bias"],
        training=False,
        eps=1e-5,
    )


def _ln(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], 1e-5)


def _mha(q, kv, state: dict, prefix: str, heads: int) -> torch.Tensor:
    width = q.shape[-1]
    return F.multi_head_attention_forward(
        q, kv, kv, width, heads,
        state[f"{prefix}.in_proj_weight"], state[f"{prefix}.in_proj_bias"],
        None, None, False, 0.0,
        state[f"{prefix}.out_proj.weight"], state[f"{prefix}.out_proj.bias"],
        training=False, need_weights=False,
    )[0]  # fmt: skip


def _reference_logits(state: dict[str, torch.Tensor], frames: torch.Tensor) -> torch.Tensor:
    """Side4Video's forward in the reference's sequence-first layout (``Recognition/clip/model.py``)."""
    b = frames.shape[0]
    bt = b * T

    def to_video(s):  # (N, B*T, C) -> (B, C, T, h, w)
        return s.permute(1, 2, 0).reshape(b, T, C, GRID, GRID).permute(0, 2, 1, 3, 4)

    def to_tokens(v):  # (B, C, T, h, w) -> (N, B*T, C)
        return v.permute(0, 2, 1, 3, 4).reshape(bt, C, N).permute(2, 0, 1)

    images = frames.reshape(bt, 3, SIZE, SIZE)
    x = F.conv2d(images, state["visual.conv1.weight"], stride=P).reshape(bt, D, N).permute(0, 2, 1)
    cls = state["visual.class_embedding"].expand(bt, 1, D)
    x = torch.cat([cls, x], dim=1) + state["visual.positional_embedding"]
    x = _ln(x, state, "visual.ln_pre").permute(1, 0, 2)  # (1+N, B*T, D)

    s = F.conv3d(
        frames.permute(0, 2, 1, 3, 4),
        state["visual.side_conv1.weight"],
        state["visual.side_conv1.bias"],
        stride=(1, P, P),
        padding=(1, 0, 0),
    )
    s = to_tokens(_bn(s, state, "visual.side_pre_bn3d"))  # (N, B*T, C)
    pos = state["visual.transformer.side_spatial_position_embeddings"]
    for i in range(L):
        r = f"visual.transformer.resblocks.{i}"
        h = _ln(x, state, f"{r}.ln_1")
        x = x + _mha(h, h, state, f"{r}.attn", HEADS)
        h = F.linear(
            _ln(x, state, f"{r}.ln_2"), state[f"{r}.mlp.c_fc.weight"], state[f"{r}.mlp.c_fc.bias"]
        )
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + F.linear(h, state[f"{r}.mlp.c_proj.weight"], state[f"{r}.mlp.c_proj.bias"])

        t = "visual.transformer"
        y = F.linear(
            _ln(x, state, f"{t}.side_lns.{i}"),
            state[f"{t}.side_linears.{i}.weight"],
            state[f"{t}.side_linears.{i}.bias"],
        )
        s = 0.5 * s + 0.5 * y[1:]

        k = f"{t}.side_transformer.{i}"
        v = to_video(s)
        u = _bn(v, state, f"{k}.bn_1")
        u = F.conv3d(u, state[f"{k}.conv.0.weight"], state[f"{k}.conv.0.bias"])
        u = F.conv3d(
            u, state[f"{k}.conv.1.weight"], state[f"{k}.conv.1.bias"], padding=(1, 0, 0), groups=C
        )
        u = F.conv3d(u, state[f"{k}.conv.2.weight"], state[f"{k}.conv.2.bias"])
        s = to_tokens(v + u)

        token = y[:1].reshape(1, b, T, C)
        shifted = torch.zeros_like(token)
        fold = C // 2
        shifted[:, :, :-1, :fold] = token[:, :, 1:, :fold]
        shifted[:, :, 1:, fold:] = token[:, :, :-1, fold:]
        z = torch.cat([shifted.reshape(1, bt, C), s + pos[:, None, :]], dim=0)
        z = _ln(z, state, f"{k}.ln_1")
        s = s + _mha(z[1:], z, state, f"{k}.attn", C // 64)

        m = to_tokens(_bn(to_video(s), state, f"{k}.bn_2"))
        m = F.linear(m, state[f"{k}.mlp.fc1.weight"], state[f"{k}.mlp.fc1.bias"])
        m = F.linear(F.gelu(m), state[f"{k}.mlp.fc2.weight"], state[f"{k}.mlp.fc2.bias"])
        s = s + m
    pooled = _bn(to_video(s), state, "visual.side_post_bn").mean(dim=(2, 3, 4))
    return F.linear(pooled, state["fc.weight"], state["fc.bias"])


def _frames(seed: int = 7) -> torch.Tensor:
    return torch.randn(2, T, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _write(path, state: dict, *, prefix: str = "") -> None:
    torch.save(
        {
            "epoch": 29,
            "model_state_dict": {f"{prefix}{k}": v for k, v in state.items()},
            "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        },
        path,
    )


def test_mapping_covers_every_key_of_the_reference_table() -> None:
    mapping = reference_key_map(build_model("tiny", K))
    assert set(mapping) == _spec_keys(L)
    assert len(set(mapping.values())) == len(mapping)  # one-to-one
    assert set(mapping.values()) == set(build_model("tiny", K).state_dict()) - {
        k for k in build_model("tiny", K).state_dict() if k.startswith("encoder.backbone.ln_post")
    }


def test_mapping_of_a_vit_b32_model_has_the_524_reference_entries() -> None:
    mapping = reference_key_map(build_model("side4video-b32", 174))
    assert len(mapping) == 524
    assert sum(".resblocks." in key for key in mapping) == 144
    assert set(mapping) == _spec_keys(12)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_imported_checkpoint_reproduces_the_reference_logits(tmp_path, prefix: str) -> None:
    state = _reference_state()
    path = tmp_path / "model_best.pt"
    _write(path, state, prefix=prefix)
    model = load_side4video_checkpoint(path, "tiny", K)
    assert not model.training
    frames = _frames()
    with torch.no_grad():
        expected = _reference_logits(state, frames)
        torch.testing.assert_close(model(frames), expected)
    assert model.backbone_identity["pretrained"] == str(path)
    assert len(model.backbone_identity["sha256"]) == 64


def test_converted_file_rebuilds_the_same_model(tmp_path) -> None:
    state = _reference_state(seed=1)
    source, target = tmp_path / "release.pt", tmp_path / "converted.pt"
    _write(source, state)
    imported = convert_side4video_checkpoint(source, target, "tiny", K)
    reloaded = load_converted_checkpoint(target)
    frames = _frames()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(frames), imported(frames), rtol=0, atol=0)
        torch.testing.assert_close(reloaded(frames), _reference_logits(state, frames))
    assert reloaded.backbone_identity == imported.backbone_identity
    saved = torch.load(target, weights_only=True)
    assert saved["format"] == "s4v-checkpoint" and saved["model"].keys() == (
        imported.trainable_state_dict().keys()
    )
    # The release is also a backbone source: build_model(pretrained=release) has its ViT.
    rebuilt = build_model("tiny", K, pretrained=str(source))
    assert rebuilt.backbone_identity == imported.backbone_identity
    for key, value in imported.encoder.backbone.state_dict().items():
        torch.testing.assert_close(rebuilt.encoder.backbone.state_dict()[key], value, msg=key)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update({"visual.transformer.side_extra.0.weight": torch.zeros(1)}),
         r"unknown key 'visual\.transformer\.side_extra\.0\.weight'"),
        (lambda s: s.pop("visual.transformer.side_linears.2.weight"),
         r"missing key 'visual\.transformer\.side_linears\.2\.weight'"),
        (lambda s: s.update({"visual.transformer.side_transformer.1.conv.1.weight": torch.zeros(C, 1, 5, 1, 1)}),
         r"'visual\.transformer\.side_transformer\.1\.conv\.1\.weight' has shape \(128, 1, 5, 1, 1\)"),
        (lambda s: s.update({"fc.weight": torch.zeros(K + 2, C), "fc.bias": torch.zeros(K + 2)}),
         r"'fc\.weight' has 7 classes, expected num_classes=5"),
        (lambda s: s.pop("visual.transformer.resblocks.3.mlp.c_fc.bias"),
         r"missing key 'visual\.transformer\.resblocks\.3\.mlp\.c_fc\.bias'"),
    ],
    ids=["unknown", "missing-trainable", "wrong-shape", "wrong-classes", "missing-backbone"],
)  # fmt: skip
def test_checkpoints_that_do_not_fit_are_refused_naming_the_key(tmp_path, edit, message) -> None:
    state = _reference_state()
    edit(state)
    path = tmp_path / "bad.pt"
    _write(path, state)
    with pytest.raises(ValueError, match=message):
        load_side4video_checkpoint(path, "tiny", K)


def test_files_that_are_not_checkpoints_are_refused_without_unpickling(tmp_path) -> None:
    text = tmp_path / "readme.pt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        load_side4video_checkpoint(text, "tiny", K)
    arbitrary = tmp_path / "object.pt"
    torch.save({"model_state_dict": {"fc.weight": argparse.Namespace(x=1)}}, arbitrary)
    with pytest.raises(ValueError, match="weights_only"):
        load_side4video_checkpoint(arbitrary, "tiny", K)
    with pytest.raises(WeightsFileError, match=r"absent\.pt: no such file"):
        load_side4video_checkpoint(tmp_path / "absent.pt", "tiny", K)


def test_pretrained_is_refused_for_a_clip_path_release(tmp_path) -> None:
    path = tmp_path / "model_best.pt"
    _write(path, _reference_state())
    with pytest.raises(ValueError, match=r"pretrained='openai': a release of preset 'tiny' carr"):
        load_side4video_checkpoint(path, "tiny", K, pretrained="openai")
    with pytest.raises(ValueError, match="carries its frozen backbone"):
        convert_side4video_checkpoint(path, tmp_path / "o.pt", "tiny", K, pretrained="openai")
    assert not (tmp_path / "o.pt").exists()

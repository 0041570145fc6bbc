"""Released Side4Video checkpoints: key mapping, logits parity with the reference maths, errors.

The checkpoints are written here in the reference key layout (spec section 8) at the tiny preset's
dimensions, and the expected logits come from an independent, sequence-first re-statement of the
reference forward (spec sections 1.2-1.4) using only torch.nn.functional on the raw state dict.
"""

from __future__ import annotations

import argparse
import logging

import pytest
import torch
import torch.nn.functional as F

from s4v_core.backbone import create_clip, file_sha256
from s4v_core.side import SideNetworkConfig, odd_layers
from s4v_core.side_eva import EvaSideNetwork
from s4v_recognition import (
    VideoClassifier,
    build_model,
    convert_side4video_checkpoint,
    load_converted_checkpoint,
    load_side4video_checkpoint,
)
from s4v_recognition.checkpoints import (
    eva_reference_key_map,
    eva_reference_side_state,
    load_eva_side_checkpoint,
    reference_key_map,
)

# The tiny preset: s4v-tiny ViT (D=64, 4 layers, 2 heads, patch 8, 32 px), T=8, C=128, K=5.
D, L, HEADS, P, SIZE, T, C, K = 64, 4, 2, 8, 32, 8, 128, 5
GRID = SIZE // P
N = GRID * GRID

# Spec section 8, one row per table line ({i} = layer 0..L-1).
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
    """The tensor shape of a reference key at tiny dimensions (spec section 8's shape column)."""
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
    """Side4Video's forward in the reference's sequence-first layout (spec 1.2-1.4)."""
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
    with pytest.raises(FileNotFoundError):
        load_side4video_checkpoint(tmp_path / "absent.pt", "tiny", K)


# ------------------------------------------------------------------------------------------------
# The EVA-CLIP variant (spec section 1.8). The reference's EVA side-module names are assumed as in
# s4v_recognition.checkpoints (the spec lists no EVA keys): side modules directly under `visual.`,
# side ModuleLists indexed by side slot {s} (odd backbone layers only), post-norm blocks with
# conv.{0,1,2} + bn_1, attn.{q,k,v}_proj + attn.proj + ln_1, mlp.{0,2} + bn_2, no side_post_bn.

EVA_SIDE_TABLE = [
    "visual.side_conv1.{weight,bias}",
    "visual.side_pre_bn3d.{weight,bias,running_mean,running_var,num_batches_tracked}",
    "visual.side_spatial_position_embeddings",
    "visual.side_linears.{s}.{weight,bias}",
    "visual.side_lns.{s}.{weight,bias}",
    "visual.side_transformer.{s}.conv.0.{weight,bias}",
    "visual.side_transformer.{s}.conv.1.{weight,bias}",
    "visual.side_transformer.{s}.conv.2.{weight,bias}",
    "visual.side_transformer.{s}.bn_1.{weight,bias,running_mean,running_var,num_batches_tracked}",
    "visual.side_transformer.{s}.attn.q_proj.{weight,bias}",
    "visual.side_transformer.{s}.attn.k_proj.{weight,bias}",
    "visual.side_transformer.{s}.attn.v_proj.{weight,bias}",
    "visual.side_transformer.{s}.attn.proj.{weight,bias}",
    "visual.side_transformer.{s}.ln_1.{weight,bias}",
    "visual.side_transformer.{s}.mlp.0.{weight,bias}",
    "visual.side_transformer.{s}.mlp.2.{weight,bias}",
    "visual.side_transformer.{s}.bn_2.{weight,bias,running_mean,running_var,num_batches_tracked}",
]
EVA_LAYERS = (1, 3)  # the odd layers of the 4-layer tiny backbone
EVA_HEADS = C // 64


def _eva_spec_keys(slots: int) -> set[str]:
    keys = set()
    for pattern in EVA_SIDE_TABLE:
        for key in _expand(pattern, 1):
            keys.update(key.replace("{s}", str(s)) for s in range(slots))
    return keys


def _eva_shape(key: str) -> tuple[int, ...]:
    """The shape of a reference EVA side key at tiny dimensions (Conv3d weights in 5-D)."""
    module, leaf = key.split(".")[-2:]
    if leaf == "num_batches_tracked":
        return ()
    shapes = {
        ("side_conv1", "weight"): (C, 3, 3, P, P),
        ("visual", "side_spatial_position_embeddings"): (N, C),
        ("0", "weight"): (4 * C, C) if ".mlp." in key else (C, C, 1, 1, 1),
        ("0", "bias"): (4 * C,) if ".mlp." in key else (C,),
        ("1", "weight"): (C, 1, 3, 1, 1),
        ("2", "weight"): (C, 4 * C) if ".mlp." in key else (C, C, 1, 1, 1),
        ("q_proj", "weight"): (C, C),
        ("k_proj", "weight"): (C, C),
        ("v_proj", "weight"): (C, C),
        ("proj", "weight"): (C, C),
    }
    if key.startswith("visual.side_linears"):
        return (C, D) if leaf == "weight" else (C,)
    if key.startswith("visual.side_lns"):
        return (C,)
    return shapes.get((module, leaf), (C,))


def _eva_reference_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(_eva_spec_keys(len(EVA_LAYERS))):
        shape = _eva_shape(key)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(77)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("weight") and (".bn_" in key or ".ln_" in key or "_lns." in key):
            state[key] = 1 + 0.2 * torch.randn(shape, generator=g)
        else:
            state[key] = 0.05 * torch.randn(shape, generator=g)
    return state


def _eva_side(seed: int = 0) -> EvaSideNetwork:
    torch.manual_seed(seed)
    return EvaSideNetwork(
        SideNetworkConfig(side_dim=C, side_layers=odd_layers(L)),
        backbone_width=D,
        num_layers=L,
        patch_size=P,
        grid=(GRID, GRID),
        num_frames=T,
    )


def _eva_inputs(seed: int = 7) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(2, T, 3, SIZE, SIZE, generator=g)
    return frames, [torch.randn(2 * T, 1 + N, D, generator=g) for _ in range(L)]


def _eva_reference_features(state: dict, frames: torch.Tensor, tokens: list) -> torch.Tensor:
    """The EVA path's side network, eval mode, in the reference's sequence-first layout (spec 1.8)."""
    b = frames.shape[0]
    bt = b * T

    def to_video(s):  # (N, B*T, C) -> (B, C, T, h, w)
        return s.permute(1, 2, 0).reshape(b, T, C, GRID, GRID).permute(0, 2, 1, 3, 4)

    def to_tokens(v):  # (B, C, T, h, w) -> (N, B*T, C)
        return v.permute(0, 2, 1, 3, 4).reshape(bt, C, N).permute(2, 0, 1)

    def linear(x, prefix):
        return F.linear(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])

    s = F.conv3d(
        frames.permute(0, 2, 1, 3, 4),
        state["visual.side_conv1.weight"],
        state["visual.side_conv1.bias"],
        stride=(1, P, P),
        padding=(1, 0, 0),
    )
    s = to_tokens(_bn(s, state, "visual.side_pre_bn3d"))  # (N, B*T, C)
    pos = state["visual.side_spatial_position_embeddings"]
    width = C // EVA_HEADS
    for slot, layer in enumerate(EVA_LAYERS):
        x = tokens[layer].permute(1, 0, 2)  # (1+N, B*T, D), sequence-first
        y = _ln(linear(x, f"visual.side_linears.{slot}"), state, f"visual.side_lns.{slot}")
        s = 0.5 * s + 0.5 * y[1:]

        k = f"visual.side_transformer.{slot}"
        v = to_video(s)
        u = F.conv3d(v, state[f"{k}.conv.0.weight"], state[f"{k}.conv.0.bias"])
        u = F.conv3d(
            u, state[f"{k}.conv.1.weight"], state[f"{k}.conv.1.bias"], padding=(1, 0, 0), groups=C
        )
        u = F.conv3d(u, state[f"{k}.conv.2.weight"], state[f"{k}.conv.2.bias"])
        s = to_tokens(v + _bn(u, state, f"{k}.bn_1"))

        token = y[:1].reshape(1, b, T, C)
        shifted = torch.zeros_like(token)
        fold = C // 2
        shifted[:, :, :-1, :fold] = token[:, :, 1:, :fold]
        shifted[:, :, 1:, fold:] = token[:, :, :-1, fold:]
        z = torch.cat([shifted.reshape(1, bt, C), s + pos[:, None, :]], dim=0)  # (1+N, B*T, C)
        q = linear(z[1:], f"{k}.attn.q_proj").reshape(N, bt * EVA_HEADS, width).transpose(0, 1)
        kk = linear(z, f"{k}.attn.k_proj").reshape(1 + N, bt * EVA_HEADS, width).transpose(0, 1)
        vv = linear(z, f"{k}.attn.v_proj").reshape(1 + N, bt * EVA_HEADS, width).transpose(0, 1)
        a = torch.softmax(q @ kk.transpose(1, 2) * width**-0.5, dim=-1) @ vv
        a = linear(a.transpose(0, 1).reshape(N, bt, C), f"{k}.attn.proj")
        s = s + _ln(a, state, f"{k}.ln_1")

        m = linear(F.gelu(linear(s, f"{k}.mlp.0")), f"{k}.mlp.2")
        s = s + to_tokens(_bn(to_video(m), state, f"{k}.bn_2"))
    return to_video(s).mean(dim=(2, 3, 4))  # no side_post_bn


@pytest.mark.usefixtures("one_thread")
def test_eva_mapping_covers_the_assumed_reference_layout_one_to_one() -> None:
    side = _eva_side()
    mapping = eva_reference_key_map(side)
    assert set(mapping) == _eva_spec_keys(len(EVA_LAYERS))
    assert len(set(mapping.values())) == len(mapping)
    assert set(mapping.values()) == set(side.state_dict())
    prefixed = eva_reference_key_map(
        side, reference_prefix="module.visual.", prefix="encoder.side."
    )
    assert prefixed["module.visual.side_transformer.1.attn.proj.weight"] == (
        "encoder.side.blocks.1.attn.out_proj.weight"
    )


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("prefix", ["", "module."])
def test_eva_checkpoint_in_reference_layout_reproduces_the_reference_features(
    tmp_path, prefix: str
) -> None:
    state = _eva_reference_state()
    # A release also holds the frozen EVA backbone and the head: not the side network's keys.
    extra = {
        "visual.blocks.0.attn.q_proj.weight": torch.zeros(D, D),
        "fc.weight": torch.zeros(K, C),
    }
    path = tmp_path / "model_best.pt"
    _write(path, {**state, **extra}, prefix=prefix)
    side = load_eva_side_checkpoint(path, _eva_side(seed=3))
    assert not side.training
    frames, tokens = _eva_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            side(frames, tokens), _eva_reference_features(state, frames, tokens)
        )


@pytest.mark.usefixtures("one_thread")
def test_eva_side_state_round_trips_through_the_reference_layout(tmp_path) -> None:
    ours = _eva_side(seed=1)
    frames, tokens = _eva_inputs()
    ours.train()
    with torch.no_grad():
        ours(frames, tokens)  # non-trivial running statistics and num_batches_tracked
    exported = eva_reference_side_state(ours)
    assert {k: tuple(v.shape) for k, v in exported.items()} == {
        k: _eva_shape(k) for k in _eva_spec_keys(len(EVA_LAYERS))
    }
    path = tmp_path / "release.pt"
    _write(path, exported)
    loaded = load_eva_side_checkpoint(path, _eva_side(seed=2))
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0, msg=key)
    ours.eval()
    with torch.no_grad():
        expected = ours(frames, tokens)
        torch.testing.assert_close(loaded(frames, tokens), expected, rtol=0, atol=0)
        torch.testing.assert_close(expected, _eva_reference_features(exported, frames, tokens))
    for key, value in eva_reference_side_state(loaded).items():
        torch.testing.assert_close(value, exported[key], rtol=0, atol=0, msg=key)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update({"visual.side_transformer.2.ln_1.weight": torch.ones(C)}),
         r"unknown EVA side key 'visual\.side_transformer\.2\.ln_1\.weight'"),
        (lambda s: s.pop("visual.side_lns.1.bias"), r"missing key 'visual\.side_lns\.1\.bias'"),
        (lambda s: s.update({"visual.side_transformer.0.conv.1.weight": torch.zeros(C, 1, 5, 1, 1)}),
         r"'visual\.side_transformer\.0\.conv\.1\.weight' has shape \(128, 1, 5, 1, 1\)"),
        (lambda s: s.update({"visual.side_post_bn.weight": torch.ones(C)}),
         r"unknown EVA side key 'visual\.side_post_bn\.weight'"),
    ],
    ids=["unknown", "missing", "wrong-shape", "clip-path-post-bn"],
)  # fmt: skip
def test_eva_checkpoints_that_do_not_fit_are_refused_naming_the_key(
    tmp_path, edit, message
) -> None:
    state = _eva_reference_state()
    edit(state)
    path = tmp_path / "bad.pt"
    _write(path, state)
    with pytest.raises(ValueError, match=message):
        load_eva_side_checkpoint(path, _eva_side())


# ------------------------------------------------------------------------------------------------
# EVA releases as a whole (`load_side4video_checkpoint` / `convert_side4video_checkpoint` with an
# EVA preset): the side network from the file's visual.side_* entries, the head from fc.*, the
# frozen EVA backbone from `pretrained` (the reference's EVA backbone names are unknown, so the
# file's other visual.* entries are skipped). The releases are written from a tiny-eva s4v model
# with random weights. For logits parity the backbone comes from a local CLIP file (the weights the
# original model was built on) while the importing model's side network and head are drawn from
# another seed: equal logits then show that the side network and head came from the release.

EVA_BACKBONE_ENTRIES = {  # stand-ins for the release's EVA backbone; shapes that fit nothing
    "visual.patch_embed.proj.weight": torch.zeros(3, 3),
    "visual.blocks.0.attn.q_proj.weight": torch.zeros(2),
    "visual.blocks.3.mlp.w12.weight": torch.zeros(1, 1, 1),
}


def _eva_clip_file(tmp_path, seed: int = 11):
    """A local weights file for the s4v-tiny-eva backbone: ``torch.save`` of a CLIP state dict."""
    torch.manual_seed(seed)
    clip, _ = create_clip("s4v-tiny-eva")
    path = tmp_path / "tiny-eva-clip.pt"
    torch.save(clip.state_dict(), path)
    return path


def _trained_eva_model(seed: int, pretrained: str | None = None) -> VideoClassifier:
    """A tiny-eva model with non-trivial side statistics and a head that is not its init."""
    torch.manual_seed(seed)
    model = build_model("tiny-eva", K, pretrained=pretrained)
    with torch.no_grad():
        model.train()
        model(_frames(seed=seed + 100))  # BatchNorm running statistics, num_batches_tracked
        model.head.weight.add_(0.5 * torch.randn_like(model.head.weight))
        model.head.bias.add_(0.5 * torch.randn_like(model.head.bias))
    return model.eval()


def _eva_release(model: VideoClassifier) -> dict[str, torch.Tensor]:
    """``model``'s side network and head in the reference EVA layout, plus backbone entries."""
    state = eva_reference_side_state(model.encoder.side)
    state["fc.weight"] = model.head.weight.detach().clone()
    state["fc.bias"] = model.head.bias.detach().clone()
    return {**state, **EVA_BACKBONE_ENTRIES}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("prefix", ["", "module."])
def test_eva_release_reproduces_the_s4v_model_logits(tmp_path, caplog, prefix: str) -> None:
    backbone = str(_eva_clip_file(tmp_path))
    original = _trained_eva_model(seed=0, pretrained=backbone)
    path = tmp_path / "model_best.pt"
    _write(path, _eva_release(original), prefix=prefix)
    torch.manual_seed(123)  # the importer's own side network and head: other random weights
    with caplog.at_level(logging.INFO, logger="s4v_recognition.checkpoints"):
        imported = load_side4video_checkpoint(path, "tiny-eva", K, pretrained=backbone)
    assert not imported.training
    frames = _frames()
    with torch.no_grad():
        expected = original(frames)
        torch.testing.assert_close(imported(frames), expected)
        torch.manual_seed(123)
        unloaded = build_model("tiny-eva", K, pretrained=backbone).eval()
        assert not torch.allclose(unloaded(frames), expected, atol=1e-3)  # the test can fail
    assert imported.backbone_identity == original.backbone_identity
    assert imported.backbone_identity["pretrained"] == backbone
    assert imported.backbone_identity["sha256"] == file_sha256(backbone)
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1
    assert f"skipped {len(EVA_BACKBONE_ENTRIES)} EVA backbone entries" in skipped[0]
    assert f"pretrained={backbone}" in skipped[0]


@pytest.mark.usefixtures("one_thread")
def test_eva_release_converts_to_a_file_with_the_preset_backbone(tmp_path) -> None:
    # pretrained=None takes the preset's tag; tiny-eva's is None, a random backbone drawn first
    # from torch's generator, so seeding as for the original rebuilds the original's backbone.
    original = _trained_eva_model(seed=5)
    source, target = tmp_path / "release.pt", tmp_path / "out" / "converted.pt"
    _write(source, _eva_release(original), prefix="module.")
    torch.manual_seed(5)
    imported = convert_side4video_checkpoint(source, target, "tiny-eva", K)
    reloaded = load_converted_checkpoint(target)
    frames = _frames()
    with torch.no_grad():
        expected = original(frames)
        torch.testing.assert_close(imported(frames), expected)
        torch.testing.assert_close(reloaded(frames), imported(frames), rtol=0, atol=0)
    identity = {"name": "s4v-tiny-eva", "pretrained": None, "sha256": None}
    assert imported.backbone_identity == reloaded.backbone_identity == identity
    saved = torch.load(target, weights_only=True)
    assert saved["preset"] == "tiny-eva" and saved["backbone"] == identity
    assert saved["model"].keys() == imported.trainable_state_dict().keys()
    assert saved["backbone_state_dict"] and all(
        key.startswith("encoder.backbone.") for key in saved["backbone_state_dict"]
    )
    assert saved["converted_from"] == {"path": str(source), "sha256": file_sha256(source)}
    for key, value in original.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update({"text_projection": torch.zeros(4, 4)}),
         r"unknown key 'text_projection' \(1 unknown keys\)"),
        (lambda s: s.update({"module_extra.fc.weight": torch.zeros(1), "fc.extra": torch.zeros(1)}),
         r"unknown key 'fc\.extra' \(2 unknown keys\)"),
        (lambda s: s.update({"visual.side_post_bn.weight": torch.ones(C)}),
         r"unknown EVA side key 'visual\.side_post_bn\.weight'"),
        (lambda s: s.pop("fc.bias"), r"missing key 'fc\.bias'"),
        (lambda s: s.update({"fc.bias": torch.zeros(K + 1)}), r"'fc\.bias' has shape \(6,\)"),
        (lambda s: s.update({"fc.weight": torch.zeros(K, C + 1)}),
         r"'fc\.weight' has shape \(5, 129\), expected \(5, 128\)"),
        (lambda s: s.pop("visual.side_transformer.1.attn.proj.bias"),
         r"missing key 'visual\.side_transformer\.1\.attn\.proj\.bias'"),
    ],
    ids=["unknown", "unknown-first-named", "unknown-side", "missing-head", "wrong-head",
         "wrong-head-width", "missing-side"],
)  # fmt: skip
def test_eva_releases_that_do_not_fit_are_refused_before_the_backbone_loads(
    tmp_path, edit, message
) -> None:
    torch.manual_seed(0)
    good = _eva_release(build_model("tiny-eva", K))
    bad = dict(good)
    edit(bad)
    for name, state in (("good.pt", good), ("bad.pt", bad)):
        _write(tmp_path / name, state, prefix="module.")
    # A backbone source that cannot load: the file's keys are checked first, on the meta device.
    absent = str(tmp_path / "absent-backbone.pt")
    with pytest.raises(ValueError, match=message):
        load_side4video_checkpoint(tmp_path / "bad.pt", "tiny-eva", K, pretrained=absent)
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        load_side4video_checkpoint(tmp_path / "good.pt", "tiny-eva", K, pretrained=absent)


def test_pretrained_is_refused_for_a_clip_path_release(tmp_path) -> None:
    path = tmp_path / "model_best.pt"
    _write(path, _reference_state())
    with pytest.raises(ValueError, match=r"pretrained='openai' applies to EVA releases only"):
        load_side4video_checkpoint(path, "tiny", K, pretrained="openai")
    with pytest.raises(ValueError, match="EVA releases only"):
        convert_side4video_checkpoint(path, tmp_path / "o.pt", "tiny", K, pretrained="openai")
    assert not (tmp_path / "o.pt").exists()

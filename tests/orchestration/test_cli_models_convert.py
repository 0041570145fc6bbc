"""`s4v models` and `s4v convert side4video` through the real typer application."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from s4v_core.backbone import create_clip
from s4v_orchestration.cli import app
from s4v_orchestration.config import RunConfig
from s4v_recognition import build_model, load_converted_checkpoint
from s4v_recognition.checkpoints import eva_reference_side_state, reference_key_map

runner = CliRunner()


def test_models_lists_every_preset_with_its_trainable_parameters() -> None:
    result = runner.invoke(app, ["models"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for preset in ("side4video-b32", "side4video-b16", "side4video-l14", "side4video-b16-light"):
        assert preset in result.output
    assert "21,112,686" in result.output and "23,277,486" in result.output
    assert "ViT-L-14-quickgelu" in result.output
    result = runner.invoke(app, ["models", "--num-classes", "400"], terminal_width=200)
    assert f"{21_112_686 + 226 * 320 + 226:,}" in result.output  # 400 - 174 = 226 more classes


def _release_from(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A checkpoint in the reference layout holding ``model``'s weights."""
    ours = model.state_dict()
    state = {}
    for reference, key in reference_key_map(model).items():
        tensor = ours[key]
        if reference.endswith(".conv.1.weight"):  # depth-wise temporal conv (C, 3)
            tensor = tensor.reshape(tensor.shape[0], 1, 3, 1, 1)
        elif ".conv." in reference and reference.endswith(".weight"):  # 1x1x1 convs (C, C)
            tensor = tensor.reshape(*tensor.shape, 1, 1, 1)
        state[f"module.{reference}"] = tensor
    return {"epoch": 1, "model_state_dict": state}


def test_convert_side4video_writes_a_model_with_the_release_weights(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", 3).eval()
    source, target = tmp_path / "model_best.pt", tmp_path / "out" / "tiny.pt"
    torch.save(_release_from(model), source)
    result = runner.invoke(
        app,
        [
            "convert",
            "side4video",
            str(source),
            str(target),
            "--preset",
            "tiny",
            "--num-classes",
            "3",
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert "wrote" in result.output and f"{trainable:,}" in result.output
    frames = torch.randn(2, 8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_converted_checkpoint(target)(frames), model(frames))


def test_convert_with_a_dataset_stores_a_run_config_that_rebuilds_the_same_backbone(
    tmp_path,
) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", 3)
    source, target = tmp_path / "model_best.pt", tmp_path / "tiny.pt"
    torch.save(_release_from(model), source)
    result = runner.invoke(
        app,
        ["convert", "side4video", str(source), str(target), "--preset", "tiny", "--num-classes",
         "3", "--dataset", "ssv2"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = torch.load(target, weights_only=True)
    config = RunConfig.model_validate(saved["config"])
    assert (config.data.dataset, config.model.preset) == ("ssv2", "tiny")
    rebuilt = build_model(config.model.preset, 3, pretrained=config.model.pretrained)
    assert rebuilt.backbone_identity == saved["backbone"]


def test_convert_side4video_names_the_bad_key_and_exits_2(tmp_path) -> None:
    release = _release_from(build_model("tiny", 3))
    del release["model_state_dict"]["module.visual.side_post_bn.running_var"]
    source = tmp_path / "model_best.pt"
    torch.save(release, source)
    result = runner.invoke(
        app,
        ["convert", "side4video", str(source), str(tmp_path / "o.pt"), "--preset", "tiny",
         "--num-classes", "3"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "visual.side_post_bn.running_var" in result.output
    assert not (tmp_path / "o.pt").exists()


def _eva_release_from(model: torch.nn.Module) -> dict:
    """A checkpoint in the reference's EVA layout holding ``model``'s side network and head, and
    backbone entries (under unknown reference names, never read) that fit nothing."""
    state = {
        **eva_reference_side_state(model.encoder.side),
        "fc.weight": model.head.weight.detach().clone(),
        "fc.bias": model.head.bias.detach().clone(),
        "visual.blocks.0.attn.q_proj.weight": torch.zeros(1),
        "visual.blocks.1.norm1.weight": torch.zeros(1),
    }
    return {"epoch": 1, "model_state_dict": {f"module.{k}": v for k, v in state.items()}}


def test_convert_side4video_imports_an_eva_release_with_the_backbone_from_pretrained(
    tmp_path,
) -> None:
    # The backbone file is torch.save of a tiny EVA CLIP's state dict; the CLI's own side network
    # and head are other random weights, so equal logits show that the release supplied them.
    torch.manual_seed(1)
    backbone = (tmp_path / "tiny-eva-clip.pt").resolve()
    torch.save(create_clip("s4v-tiny-eva")[0].state_dict(), backbone)
    torch.manual_seed(0)
    model = build_model("tiny-eva", 3, pretrained=str(backbone)).eval()
    with torch.no_grad():
        model.head.weight.add_(torch.randn_like(model.head.weight))
    source, target = tmp_path / "model_best.pt", tmp_path / "out" / "tiny-eva.pt"
    torch.save(_eva_release_from(model), source)
    result = runner.invoke(
        app,
        ["convert", "side4video", str(source), str(target), "--preset", "tiny-eva",
         "--num-classes", "3", "--pretrained", str(backbone), "--dataset", "ssv2"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    squeezed = "".join(result.output.split())  # rich wraps long lines at 80 columns
    assert "wrote" in result.output and f"backbones4v-tiny-evafrom{backbone}" in squeezed
    converted = load_converted_checkpoint(target)
    assert converted.backbone_identity == model.backbone_identity
    frames = torch.randn(2, 8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(frames), model(frames))
    saved = torch.load(target, weights_only=True)
    config = RunConfig.model_validate(saved["config"])
    assert (config.model.preset, config.model.pretrained) == ("tiny-eva", str(backbone))
    rebuilt = build_model(config.model.preset, 3, pretrained=config.model.pretrained)
    assert rebuilt.backbone_identity == saved["backbone"]


def test_convert_side4video_refuses_an_eva_release_with_an_unknown_key(tmp_path) -> None:
    torch.manual_seed(0)
    release = _eva_release_from(build_model("tiny-eva", 3))
    release["model_state_dict"]["module.logit_scale"] = torch.ones(())
    source = tmp_path / "model_best.pt"
    torch.save(release, source)
    result = runner.invoke(
        app,
        ["convert", "side4video", str(source), str(tmp_path / "o.pt"), "--preset", "tiny-eva",
         "--num-classes", "3"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "unknown key 'logit_scale'" in result.output
    assert not (tmp_path / "o.pt").exists()


def test_convert_side4video_refuses_pretrained_for_a_clip_release(tmp_path) -> None:
    source = tmp_path / "model_best.pt"
    torch.save(_release_from(build_model("tiny", 3)), source)
    result = runner.invoke(
        app,
        ["convert", "side4video", str(source), str(tmp_path / "o.pt"), "--preset", "tiny",
         "--num-classes", "3", "--pretrained", "openai"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "EVA releases only" in result.output
    assert not (tmp_path / "o.pt").exists()

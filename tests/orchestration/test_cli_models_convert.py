"""`s4v models` and `s4v convert side4video` through the real typer application."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from s4v_orchestration.cli import app
from s4v_orchestration.config import RunConfig
from s4v_recognition import build_model, load_converted_checkpoint
from s4v_recognition.releases import reference_key_map

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


def _eva_release(reference_eva, path) -> torch.nn.Module:
    """A release laid out as the reference's EVA code saves it (tests/reference_eva.py), K=3."""
    torch.manual_seed(0)
    visual = reference_eva.EVAVisionTransformer(
        **reference_eva.tiny_eva_tower(), frames=8, side_dim=128
    )
    model = reference_eva.VideoCLIP(visual, 128, 3).eval()
    torch.save({"epoch": 1, "model_state_dict": model.state_dict()}, path)
    return model


def test_convert_side4video_imports_an_eva_release_whole(tmp_path, reference_eva) -> None:
    source, target = (tmp_path / "model_best.pt").resolve(), tmp_path / "out" / "tiny-eva.pt"
    reference = _eva_release(reference_eva, source)
    result = runner.invoke(
        app,
        ["convert", "side4video", str(source), str(target), "--preset", "tiny-eva",
         "--num-classes", "3", "--dataset", "ssv2"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    squeezed = "".join(result.output.split())  # rich wraps long lines at 80 columns
    assert f"source{source}(sha256" in squeezed
    converted = load_converted_checkpoint(target)
    frames = torch.randn(2, 8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(frames), reference(frames), rtol=1e-4, atol=1e-5)
    saved = torch.load(target, weights_only=True)
    config = RunConfig.model_validate(saved["config"])
    assert (config.model.preset, config.model.pretrained) == ("tiny-eva", str(source))
    rebuilt = build_model(config.model.preset, 3, pretrained=config.model.pretrained)
    assert rebuilt.backbone_identity == saved["backbone"]


def test_convert_side4video_refuses_an_eva_release_with_an_unknown_key(
    tmp_path, reference_eva
) -> None:
    source = tmp_path / "model_best.pt"
    _eva_release(reference_eva, source)
    release = torch.load(source, weights_only=True)
    release["model_state_dict"]["logit_scale"] = torch.ones(())
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
    assert "carries its frozen" in result.output
    assert not (tmp_path / "o.pt").exists()

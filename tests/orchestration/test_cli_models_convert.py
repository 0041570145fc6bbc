"""`s4v models` and `s4v convert side4video` through the real typer application."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from s4v_orchestration.cli import app
from s4v_orchestration.config import RunConfig
from s4v_recognition import build_model, load_converted_checkpoint
from s4v_recognition.checkpoints import reference_key_map

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

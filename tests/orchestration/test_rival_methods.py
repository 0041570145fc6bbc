"""The paper's rival methods through s4v's own training loop, checkpoints and evaluation."""

from __future__ import annotations

import pytest
import torch

from s4v_orchestration.evaluate import evaluate_checkpoint
from s4v_orchestration.train import train
from s4v_recognition import METHODS, build_model

RIVALS = ("st-adapter", "aim", "evl", "dist")


def test_every_rival_is_a_registered_recognition_method() -> None:
    assert set(RIVALS) <= set(METHODS)


@pytest.mark.parametrize("method", RIVALS)
def test_two_epoch_synthetic_run_trains_checkpoints_and_evaluates_to_the_same_test(
    tiny_config, method: str
) -> None:
    config = tiny_config(method, **{"model.method": method})
    metrics = train(config)
    assert metrics["train/epoch_loss"] == metrics["train/epoch_loss"]  # finite, not NaN
    out = config.with_defaults().output_dir
    # `s4v eval` rebuilds the method from the stored config and tests best.pt: the same numbers.
    result = evaluate_checkpoint(out / "best.pt", out_dir=out / "re-eval")
    assert result.config.model.method == method
    assert result.evaluation.metrics["top1"] == pytest.approx(metrics["test/top1"])


@pytest.mark.parametrize("method", RIVALS)
def test_checkpoint_round_trip_restores_the_trained_state_and_nothing_frozen(method: str) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", 5, method=method)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    state = model.trainable_state_dict()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert trained <= set(state) and not frozen & set(state)

    torch.manual_seed(0)  # the frozen weights come back from the same seed (random backbone)
    fresh = build_model("tiny", 5, method=method)
    fresh.load_trainable_state_dict(state)
    frames = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(frames), model(frames), rtol=0, atol=0)

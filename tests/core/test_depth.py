"""Towers at another depth are the model's own tower with more or fewer blocks."""

from __future__ import annotations

import pytest
import torch

from s4v_core.backbone import build_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


def _shapes(module: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {
        key.removeprefix(prefix): tuple(value.shape)
        for key, value in module.state_dict().items()
        if key.startswith(prefix)
    }


@pytest.mark.parametrize(
    ("name", "blocks"), [("s4v-tiny", "blocks."), ("s4v-tiny-eva", "trunk.blocks.")]
)
def test_a_reduced_or_deepened_tower_keeps_every_other_weight_of_the_model(name, blocks) -> None:
    model = build_backbone(name)
    assert model.num_layers == 4
    full = _shapes(model)
    block = _shapes(model, f"{blocks}0.")
    for layers in (2, 6):
        tower = build_backbone(name, layers=layers)
        assert tower.num_layers == layers
        shapes = _shapes(tower)
        # Outside the blocks the tower is the model's; every block is shaped like the model's.
        assert {k: v for k, v in shapes.items() if not k.startswith(blocks)} == {
            k: v for k, v in full.items() if not k.startswith(blocks)
        }
        assert all(_shapes(tower, f"{blocks}{i}.") == block for i in range(layers))
        assert sum(k.startswith(blocks) for k in shapes) == layers * len(block)


def test_a_tower_of_another_depth_has_random_weights_only() -> None:
    with pytest.raises(ValueError, match="random weights"):
        build_backbone("s4v-tiny", "openai", layers=2)
    with pytest.raises(ValueError, match="at least one layer"):
        build_backbone("s4v-tiny", layers=0)

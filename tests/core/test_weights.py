"""The one torch-file reader and strict state-dict loader: weights only, one-line errors naming
the file and the key."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from s4v_core.weights import (
    WeightsFileError,
    check_state_dict,
    load_state_dict_strict,
    read_state_dict,
    read_torch_file,
)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_reads_tensors_and_plain_values_on_the_cpu(tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(3.0), "epoch": 2, "names": ["a", "b"]}, path)
    content = read_torch_file(path)
    assert torch.equal(content["w"], torch.arange(3.0))
    assert (content["epoch"], content["names"]) == (2, ["a", "b"])


def test_missing_text_and_pickled_object_files_give_one_line_naming_the_file(tmp_path) -> None:
    with pytest.raises(WeightsFileError, match=r"absent\.pt: no such file$") as error:
        read_torch_file(tmp_path / "absent.pt")
    _one_line(error)
    text = tmp_path / "notes.pt"
    text.write_text("hello\nworld\n")
    with pytest.raises(WeightsFileError, match=r"notes\.pt: not a torch checkpoint") as error:
        read_torch_file(text)
    _one_line(error)
    pickled = tmp_path / "object.pt"
    torch.save({"w": argparse.Namespace(x=1)}, pickled)
    with pytest.raises(WeightsFileError, match=r"object\.pt: .*weights_only=True refused") as error:
        read_torch_file(pickled)
    assert "Namespace" in _one_line(error)  # the line that says what was refused


@pytest.mark.parametrize(
    ("content", "prefix"),
    [({"model_state_dict": {"a": 1}}, ""), ({"a": 1}, ""), ({"state_dict": {"a": 1}}, "module.")],
    ids=["wrapped", "bare", "ddp-prefix"],
)
def test_state_dicts_are_unwrapped_and_lose_the_ddp_prefix(tmp_path, content, prefix) -> None:
    def tensors(tree):
        if isinstance(tree, dict):
            return {f"{prefix}{k}" if k == "a" else k: tensors(v) for k, v in tree.items()}
        return torch.full((2,), float(tree))

    path = tmp_path / "w.pt"
    torch.save(tensors(content), path)
    state = read_state_dict(path)
    assert list(state) == ["a"]
    assert torch.equal(state["a"], torch.ones(2))


def test_a_state_dict_entry_that_is_not_a_tensor_is_named(tmp_path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"model_state_dict": {"fc.weight": torch.zeros(1), "fc.bias": 3}}, path)
    with pytest.raises(WeightsFileError, match=r"w\.pt: entry 'fc\.bias' is a int, not a tensor"):
        read_state_dict(path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightsFileError, match=r"w\.pt: expected a state dict .* found list"):
        read_state_dict(path)


def test_mismatches_are_listed_by_key_in_one_line() -> None:
    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    state = {"a": torch.zeros(2), "b": torch.zeros(4), "d": torch.zeros(1)}
    with pytest.raises(WeightsFileError) as error:
        check_state_dict(state, expected, "f.pt")
    assert _one_line(error) == (
        "f.pt: weights do not fit the model: missing keys c; unexpected keys d; "
        "wrong shapes (file vs model) b (4,) vs (3,)"
    )
    check_state_dict({"a": torch.ones(2)}, expected, "f.pt", may_miss=("b", "c"))


def test_long_key_lists_are_cut_with_a_count() -> None:
    expected = {f"k{i}": torch.zeros(1) for i in range(8)}
    with pytest.raises(WeightsFileError, match=r"missing keys k0, k1, k2, k3, k4 and 3 more$"):
        check_state_dict({}, expected, "f.pt")


def test_strict_load_loads_every_tensor_or_nothing() -> None:
    module = nn.Linear(2, 3)
    good = {"weight": torch.ones(3, 2), "bias": torch.full((3,), 2.0)}
    load_state_dict_strict(module, good, "good.pt")
    assert torch.equal(module.weight, good["weight"]) and torch.equal(module.bias, good["bias"])
    with pytest.raises(WeightsFileError, match=r"bad\.pt: .*missing keys bias"):
        load_state_dict_strict(module, {"weight": torch.zeros(3, 2)}, "bad.pt")
    assert torch.equal(module.weight, good["weight"])  # refused before anything was copied

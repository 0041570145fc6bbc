"""s4v computes the reference's function: the reference layout and s4v on one set of weights.

The weights are drawn in the reference layout (release key names, Conv3d shapes) and imported into
s4v the way a released checkpoint is, so these tests also cover the key mapping in training mode.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s4v_core.memory import SavedTensorMeter
from s4v_recognition import build_model
from s4v_recognition.bench.reference_layout import ReferenceLayoutClassifier
from s4v_recognition.releases import reference_key_map

K = 5


def _pair(seed: int = 0):
    torch.manual_seed(seed)
    reference = ReferenceLayoutClassifier.from_model(build_model("tiny", K))
    with torch.no_grad():
        for name, tensor in reference.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith(
                ("running_var", "bn_1.weight", "bn_2.weight", "bn3d.weight", "post_bn.weight")
            ):
                tensor.uniform_(0.5, 1.5)  # variances and BatchNorm scales stay positive
            elif "side" in name or name.startswith("fc."):
                tensor.normal_(std=0.2)
    ours = build_model("tiny", K)
    ours.load_state_dict(reference.s4v_state_dict(ours), strict=True)
    return reference, ours


def _frames(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_training_mode_logits_gradients_and_statistics_equal_the_reference() -> None:
    reference, ours = _pair()
    reference.train()
    ours.train()
    frames, labels = _frames(), torch.tensor([1, 3])
    ref_logits, our_logits = reference(frames), ours(frames)
    torch.testing.assert_close(our_logits, ref_logits, rtol=1e-4, atol=1e-5)
    F.cross_entropy(ref_logits, labels).backward()
    F.cross_entropy(our_logits, labels).backward()

    ref_params = dict(reference.named_parameters())
    our_params = dict(ours.named_parameters())
    checked = 0
    for ref_key, our_key in reference_key_map(ours).items():
        if ref_key not in ref_params or not ref_params[ref_key].requires_grad:
            assert our_key not in our_params or our_params[our_key].grad is None
            continue
        want = ref_params[ref_key].grad
        got = our_params[our_key].grad
        torch.testing.assert_close(got, want.reshape(got.shape), rtol=1e-3, atol=1e-5)
        checked += 1
    assert checked == sum(p.requires_grad for p in ours.parameters())

    # One training forward updated every BatchNorm's running statistics identically.
    after = reference.s4v_state_dict(ours)
    for key, value in ours.state_dict().items():
        if "running_" in key or "num_batches_tracked" in key:
            torch.testing.assert_close(value, after[key])


def test_eval_mode_logits_equal_the_reference() -> None:
    reference, ours = _pair(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.eval()(_frames(4)), reference.eval()(_frames(4)), rtol=1e-4, atol=1e-5
        )


def test_reference_layout_has_the_release_keys_and_trains_only_side_and_head() -> None:
    reference, ours = _pair()
    assert set(reference.state_dict()) == set(reference_key_map(ours))
    trainable = {name for name, p in reference.named_parameters() if p.requires_grad}
    assert trainable == {
        name for name, _ in reference.named_parameters() if name.startswith("fc.") or "side" in name
    }


def test_s4v_keeps_less_for_backward_than_the_reference_layout() -> None:
    reference, ours = _pair()
    saved = {}
    for name, model in (("reference", reference.train()), ("s4v", ours.train())):
        with SavedTensorMeter(exclude=model.parameters()) as meter:
            model(_frames())
        saved[name] = meter.bytes
    # Among others, the reference keeps each tap's D-wide LayerNorm output; s4v does not.
    tap_outputs = 4 * (2 * 8 * 17 * 64 * 4)  # 4 layers x (B*T, 1+N, D) fp32
    assert saved["reference"] - saved["s4v"] >= tap_outputs


def test_only_side4video_models_with_every_layer_have_a_reference_layout() -> None:
    with pytest.raises(ValueError, match="side4video"):
        ReferenceLayoutClassifier.from_model(build_model("tiny", K, method="linear-probe"))
    with pytest.raises(ValueError, match="expected frames"):
        ReferenceLayoutClassifier.from_model(build_model("tiny", K))(torch.randn(1, 4, 3, 32, 32))

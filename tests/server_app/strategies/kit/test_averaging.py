"""Grouped averaging against hand computations: groups by architecture, clipping, the apply step."""

import numpy as np
import pytest

from server_app.round import Reply
from server_app.strategies.kit.averaging import average, clip_update, grouped_average
from tests.server_app.helpers import trained, values, weights

ARCHITECTURE = {1: "mlp-32", 2: "mlp-32", 3: "cnn"}.__getitem__


def test_weights_are_averaged_only_within_an_architecture():
    start = {"mlp-32": weights(0, 0), "cnn": weights(9, 9, 9), "mlp-8": weights(5)}
    replies = [
        Reply(1, 0, trained([1.0, 2.0], 100)),
        Reply(2, 1, trained([3.0, 6.0], 300)),
        Reply(3, 2, trained([1.0, 1.0, 1.0], 7)),
    ]
    out, clipped = grouped_average(start, replies, ARCHITECTURE, clip_norm=0.0)
    # mlp-32: (100 (1, 2) + 300 (3, 6)) / 400.
    np.testing.assert_allclose(values(out["mlp-32"]), [2.5, 5.0])
    np.testing.assert_allclose(values(out["cnn"]), [1.0, 1.0, 1.0])
    assert values(out["mlp-8"]) == [5.0]  # no replies: unchanged
    assert clipped == 0 and list(out) == ["mlp-32", "cnn", "mlp-8"]
    # The models it started from are left as they were.
    assert values(start["mlp-32"]) == [0.0, 0.0]


def test_average_is_weighted_by_num_examples():
    replies = [Reply(1, 0, trained([0.0, 4.0], 1)), Reply(2, 1, trained([4.0, 0.0], 3))]
    np.testing.assert_allclose(values(average(replies)), [3.0, 1.0])


def test_clip_norm_bounds_each_update_before_averaging():
    replies = [Reply(1, 0, trained([3.0, 4.0], 10)), Reply(2, 1, trained([0.6, 0.0], 10))]
    out, clipped = grouped_average({"mlp-32": weights(0, 0)}, replies, ARCHITECTURE, clip_norm=1.0)
    # (3, 4) has norm 5 and is scaled to (0.6, 0.8); (0.6, 0) is within the bound.
    np.testing.assert_allclose(values(out["mlp-32"]), [0.6, 0.4], rtol=1e-6)
    assert clipped == 1


def test_clip_update_scales_the_difference_from_the_base_in_place():
    update = weights(4.0, 5.0)
    assert clip_update(update, weights(1.0, 1.0), 2.5)
    # The difference (3, 4) of norm 5 halved: (1.5, 2).
    np.testing.assert_allclose(values(update), [2.5, 3.0])
    assert update["w"].numpy().dtype == np.float32
    assert not clip_update(update, weights(1.0, 1.0), 2.5)
    np.testing.assert_allclose(values(update), [2.5, 3.0])


def test_the_apply_step_turns_each_groups_average_into_its_model():
    seen = []

    def halfway(name, base, averaged):
        seen.append((name, values(base), values(averaged)))
        return weights(*((np.asarray(values(base)) + values(averaged)) / 2))

    start = {"mlp-32": weights(0, 0), "cnn": weights(2, 2, 2)}
    replies = [Reply(1, 0, trained([2.0, 4.0], 1)), Reply(2, 1, trained([4.0, 8.0], 1))]
    out, _ = grouped_average(start, replies, ARCHITECTURE, 0.0, apply=halfway)
    # Only a group with replies is applied.
    assert seen == [("mlp-32", [0.0, 0.0], [3.0, 6.0])]
    assert values(out["mlp-32"]) == pytest.approx([1.5, 3.0]) and values(out["cnn"]) == [2.0, 2.0, 2.0]

"""Grouped averaging against hand computations: groups by architecture, clipping (fixed and scaled to the round),
the weight cap, Flower's robust aggregators, the apply step."""

import numpy as np
import pytest

from server_app.round import Reply
from server_app.strategies.kit.averaging import Robustness, average, capped_weights, clip_update, grouped_average
from tests.server_app.helpers import trained, values, weights

ARCHITECTURE = {1: "mlp-32", 2: "mlp-32", 3: "cnn", 4: "mlp-32", 5: "mlp-32", 6: "mlp-32"}.__getitem__
PLAIN = Robustness()  # FedAvg: no cap, no clipping


def test_weights_are_averaged_only_within_an_architecture():
    start = {"mlp-32": weights(0, 0), "cnn": weights(9, 9, 9), "mlp-8": weights(5)}
    replies = [
        Reply(1, 0, trained([1.0, 2.0], 100)),
        Reply(2, 1, trained([3.0, 6.0], 300)),
        Reply(3, 2, trained([1.0, 1.0, 1.0], 7)),
    ]
    out, counts = grouped_average(start, replies, ARCHITECTURE, PLAIN)
    # mlp-32: (100 (1, 2) + 300 (3, 6)) / 400.
    np.testing.assert_allclose(values(out["mlp-32"]), [2.5, 5.0])
    np.testing.assert_allclose(values(out["cnn"]), [1.0, 1.0, 1.0])
    assert values(out["mlp-8"]) == [5.0]  # no replies: unchanged
    assert counts == {"clipped-updates": 0} and list(out) == ["mlp-32", "cnn", "mlp-8"]
    # The models it started from are left as they were.
    assert values(start["mlp-32"]) == [0.0, 0.0]


def test_average_is_weighted_by_num_examples():
    replies = [Reply(1, 0, trained([0.0, 4.0], 1)), Reply(2, 1, trained([4.0, 0.0], 3))]
    np.testing.assert_allclose(values(average(replies)), [3.0, 1.0])


def test_clip_norm_bounds_each_update_before_averaging():
    replies = [Reply(1, 0, trained([3.0, 4.0], 10)), Reply(2, 1, trained([0.6, 0.0], 10))]
    out, counts = grouped_average({"mlp-32": weights(0, 0)}, replies, ARCHITECTURE, Robustness(clip_norm=1.0))
    # (3, 4) has norm 5 and is scaled to (0.6, 0.8); (0.6, 0) is within the bound.
    np.testing.assert_allclose(values(out["mlp-32"]), [0.6, 0.4], rtol=1e-6)
    assert counts["clipped-updates"] == 1


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
    out, _ = grouped_average(start, replies, ARCHITECTURE, PLAIN, apply=halfway)
    # Only a group with replies is applied.
    assert seen == [("mlp-32", [0.0, 0.0], [3.0, 6.0])]
    assert values(out["mlp-32"]) == pytest.approx([1.5, 3.0]) and values(out["cnn"]) == [2.0, 2.0, 2.0]


def test_clipping_scaled_to_the_round_bounds_a_node_by_the_lower_median_of_the_norms():
    # Norms 1, 2 and 100: the lower median is 2, the bound 3 x 2 = 6; only the third update is scaled, to (0, 6).
    replies = [
        Reply(1, 0, trained([1.0, 0.0], 10)),
        Reply(2, 1, trained([0.0, 2.0], 10)),
        Reply(4, 2, trained([0.0, 100.0], 10)),
    ]
    how = Robustness(clip_median_multiple=3.0)
    out, counts = grouped_average({"mlp-32": weights(0, 0)}, replies, ARCHITECTURE, how)
    np.testing.assert_allclose(values(out["mlp-32"]), [1 / 3, 8 / 3], rtol=1e-6)
    assert counts["clipped-updates"] == 1
    # Two replies: the lower median is the smaller norm, so the larger node cannot set its own bound.
    two = [Reply(1, 0, trained([1.0, 0.0], 10)), Reply(2, 1, trained([0.0, 50.0], 10))]
    out, _ = grouped_average({"mlp-32": weights(0, 0)}, two, ARCHITECTURE, how)
    np.testing.assert_allclose(values(out["mlp-32"]), [0.5, 1.5], rtol=1e-6)


@pytest.mark.parametrize(
    "claimed, share, expected",
    [
        ([100, 100, 10**6], 0.5, [100, 100, 200]),  # the liar is lowered to the others' sum: half of the total
        ([100, 300], 0.5, [1, 1]),  # two nodes under a cap of one half: equal weights
        ([10, 20, 30, 40], 0.5, [10, 20, 30, 40]),  # nobody above half: unchanged
        ([1, 1, 1, 97], 0.25, [1, 1, 1, 1]),
        ([5, 5, 90], 1.0, [5, 5, 90]),  # no cap
        ([50, 40, 5, 5], 0.4, [20, 20, 5, 5]),  # two lowered to a common level: t = 0.4 x (10 + 2t)
    ],
)
def test_no_weight_exceeds_its_share_of_the_group(claimed, share, expected):
    capped = capped_weights(claimed, share)
    assert capped == pytest.approx(expected)
    if share * len(claimed) > 1:
        assert max(capped) / sum(capped) <= share + 1e-12


def test_a_node_claiming_a_million_examples_weighs_half_at_most():
    replies = [Reply(1, 0, trained([0.0], 100)), Reply(2, 1, trained([0.0], 100)), Reply(4, 2, trained([9.0], 10**6))]
    out, _ = grouped_average({"mlp-32": weights(0)}, replies, ARCHITECTURE, Robustness(max_weight_share=0.5))
    assert values(out["mlp-32"]) == pytest.approx([4.5])


@pytest.mark.parametrize(
    "aggregator, expected",
    [
        ("median", [3.0, 3.0]),  # coordinate-wise median of 1, 2, 3, 4, 1000
        ("trimmed-mean", [3.0, 3.0]),  # a fifth cut from each end: the mean of 2, 3, 4
        ("krum", [2.0, 2.0]),  # the reply closest to its n - f - 2 = 2 nearest: 2 (neighbours 1 and 3)
        ("multi-krum", [2.5, 2.5]),  # the n - f = 4 best scored replies, averaged: 1, 2, 3, 4
    ],
)
def test_flowers_robust_aggregators_leave_an_extreme_reply_out(aggregator, expected, task_identity):
    replies = [Reply(n, i, trained([v, v], 10)) for i, (n, v) in enumerate(zip([1, 2, 4, 5, 6], [1, 2, 3, 4, 1000]))]
    how = Robustness(aggregator=aggregator, trim=0.2, malicious=1)
    out, counts = grouped_average({"mlp-32": weights(0, 0)}, replies, ARCHITECTURE, how)
    assert values(out["mlp-32"]) == pytest.approx(expected)
    assert counts == {"clipped-updates": 0, "aggregator-fallbacks": 0}
    assert out["mlp-32"]["w"].numpy().dtype == np.float32


def test_too_few_replies_for_krum_or_bulyan_fall_back_to_the_median_and_say_so(task_identity):
    replies = [Reply(n, i, trained([v], 10)) for i, (n, v) in enumerate(zip([1, 2, 4], [1.0, 5.0, 100.0]))]
    for aggregator in ("krum", "bulyan"):
        out, counts = grouped_average({"mlp-32": weights(0)}, replies, ARCHITECTURE, Robustness(aggregator=aggregator))
        assert values(out["mlp-32"]) == [5.0] and counts["aggregator-fallbacks"] == 1

"""The generator-samples benchmark's image helpers, on hand-made images."""

import torch

from benchmarks.generator_samples import mixed, shifted, total_variation


def test_total_variation_is_zero_for_a_flat_image_and_two_for_a_checkerboard():
    flat = torch.full((1, 16), 0.5)
    board = ((torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2).float().view(1, 16)
    assert total_variation(flat, 4).item() == 0
    assert total_variation(board, 4).item() == 2


def test_a_shift_moves_each_image_by_at_most_the_limit_and_lets_zeros_in():
    images = torch.zeros(50, 36)
    images[:, 14] = 1.0  # one lit pixel at row 2, column 2 of a 6x6 image
    out = shifted(images, 6, 2, torch.Generator().manual_seed(0))
    assert out.shape == (50, 36) and torch.equal(out.sum(1), torch.ones(50))
    rows, cols = out.view(50, 6, 6).nonzero()[:, 1:].T
    assert rows.min() == 0 and rows.max() == 4 and cols.min() == 0 and cols.max() == 4
    assert len({(r, c) for r, c in zip(rows.tolist(), cols.tolist())}) > 10


def test_mixup_blends_each_input_with_another_of_the_batch():
    x = torch.stack([torch.zeros(3), torch.ones(3)])
    out = mixed(x, torch.Generator().manual_seed(0))
    # Each row is w * itself + (1 - w) * some row: every value of a row is equal and within [0, 1].
    assert out.shape == (2, 3) and torch.all(out == out[:, :1]) and out.min() >= 0 and out.max() <= 1

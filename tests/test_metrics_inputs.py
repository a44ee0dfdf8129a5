"""The localisation metrics' input checks: numpy input, negative maps, ambiguous point shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gridcam import metrics as M

MASK = torch.zeros(8, 8, dtype=torch.bool)
MASK[2:4, 2:4] = True


def test_numpy_input_is_named():
    heat = np.ones((8, 8), dtype=np.float32)
    for fn in (M.content_heatmap, M.pointing_game_hit, M.stochastic_pointing_game):
        with pytest.raises(TypeError, match=r"heatmap must be a torch.Tensor, got numpy.ndarray.*from_numpy"):
            fn(heat, MASK)
        with pytest.raises(TypeError, match=r"mask must be a torch.Tensor"):
            fn(torch.ones(8, 8), MASK.numpy())
    with pytest.raises(TypeError, match="heat must be a torch.Tensor"):
        M.score_pairs(heat[None], MASK[None])
    with pytest.raises(TypeError, match="points must be a torch.Tensor"):
        M.hit_points(MASK[None], np.zeros((1, 3), dtype=np.int64))


def test_negative_heatmap_is_rejected_where_it_is_used_as_mass():
    heat = torch.ones(8, 8)
    heat[0, 0] = -0.5
    with pytest.raises(ValueError, match=r"negative values \(min -0.5\)"):
        M.content_heatmap(heat, MASK)
    with pytest.raises(ValueError, match="negative values"):
        M.stochastic_pointing_game(heat, MASK)
    assert M.pointing_game_hit(heat, MASK) in (True, False)  # argmax is defined for any map
    assert 0.0 <= M.content_heatmap(heat.clamp(min=0), MASK) <= 1.0


def test_hit_points_coordinates_and_ambiguous_shape():
    masks = MASK[None].repeat(2, 1, 1)
    yx = torch.tensor([[[2, 3]], [[7, 7]]])  # (P,1,2): one (y, x) point per mask
    assert M.hit_points(masks, yx, tolerance=1.0).tolist() == [[True], [False]]
    flat = (yx[..., 0] * 8 + yx[..., 1])  # the same points as flat indices (P,1)
    assert M.hit_points(masks, flat, tolerance=1.0).tolist() == [[True], [False]]
    with pytest.raises(ValueError, match=r"\(P,2\) that all look like \(y, x\).*\(P,1,2\).*flat=True"):
        M.hit_points(masks, yx[:, 0], tolerance=1.0)
    # values that cannot be (y, x) (beyond the 8x8 mask) are flat indices: no ambiguity
    assert M.hit_points(masks, torch.tensor([[19, 63], [63, 18]]), tolerance=1.0).tolist() == [
        [True, False], [False, True]]
    # explicitly flat: two flat indices per mask
    two = torch.tensor([[2 * 8 + 3, 0], [63, 18]])
    assert M.hit_points(masks, two, tolerance=1.0, flat=True).tolist() == [[True, False], [False, True]]
    with pytest.raises(ValueError, match="integer"):
        M.hit_points(masks, yx.float())

import math

import torch

from localconv.data.augment import (TEN_VIEWS, crop_flip, draw_epoch_plan, eval_batch, standardize, train_batch,
                                    view_offsets)
from localconv.models.base import InputSpec


def test_crop_flip_matches_slicing():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    offsets = torch.tensor([[0, 0], [8, 8], [3, 5], [8, 0], [0, 8], [4, 4]])
    flips = torch.tensor([False, True, True, False, True, False])
    out = crop_flip(x, offsets, flips, 24)
    for i in range(6):
        ref = x[i, :, offsets[i, 0]:offsets[i, 0] + 24, offsets[i, 1]:offsets[i, 1] + 24]
        if flips[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_standardize_is_tf_per_image_standardization():
    x = torch.rand(4, 3, 24, 24) * 255
    y = standardize(x)
    for i in range(4):
        m, s = x[i].mean(), x[i].std(unbiased=False)
        assert torch.allclose(y[i], (x[i] - m) / max(s, 1 / math.sqrt(x[i].numel())), atol=1e-5)
    flat = torch.full((1, 3, 24, 24), 7.0)  # std 0: divided by 1/sqrt(N), not by zero
    assert torch.isfinite(standardize(flat)).all() and standardize(flat).abs().max() == 0


def test_epoch_plan_is_a_function_of_seed_and_epoch():
    spec = InputSpec()
    a, b = draw_epoch_plan(100, spec, 3, 5), draw_epoch_plan(100, spec, 3, 5)
    c = draw_epoch_plan(100, spec, 3, 6)
    assert torch.equal(a.order, b.order) and torch.equal(a.offsets, b.offsets) and torch.equal(a.contrast, b.contrast)
    assert not torch.equal(a.order, c.order)
    assert sorted(a.order.tolist()) == list(range(100))
    assert a.offsets.min() >= 0 and a.offsets.max() <= 8
    assert a.brightness.abs().max() <= 63 and a.contrast.min() >= 0.2 and a.contrast.max() <= 1.8
    assert 0.3 < a.flips.float().mean() < 0.7


def test_no_augmentation_spec_draws_identity():
    spec = InputSpec(crop=32, normalize="pixel_mean", flip=False, photometric=False)
    plan = draw_epoch_plan(50, spec, 0, 0)
    assert plan.offsets.abs().sum() == 0 and not plan.flips.any()
    assert (plan.brightness == 0).all() and (plan.contrast == 1).all()


def test_centre_patch_of_the_pixel_mean_is_subtracted_from_every_view():
    # cuda-convnet's way (REFERENCE §3): the centre 24x24 of the mean, never flipped, for every crop and view
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    mean = torch.rand(3, 32, 32) * 255
    spec = InputSpec(crop=24, normalize="pixel_mean", photometric=False)
    centre = mean[:, 4:28, 4:28]
    for view, flip in TEN_VIEWS:
        top, left = view_offsets(spec, view)
        ref = x.float()[:, :, top:top + 24, left:left + 24]
        ref = ref.flip(-1) if flip else ref
        assert torch.allclose(eval_batch(x, spec, mean, view, flip), ref - centre, atol=1e-4)
    plan = draw_epoch_plan(3, spec, 1, 0)
    got = train_batch(x, plan, spec, mean)
    for i in range(3):
        t, l = plan.offsets[i].tolist()
        ref = x[i].float()[:, t:t + 24, l:l + 24]
        assert torch.allclose(got[i], (ref.flip(-1) if plan.flips[i] else ref) - centre, atol=1e-4)


def test_photometric_train_batch_is_standardized():
    x = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    plan = draw_epoch_plan(8, InputSpec(), 0, 0)
    y = train_batch(x, plan, InputSpec())
    assert y.shape == (8, 3, 24, 24)
    assert torch.allclose(y.mean((1, 2, 3)), torch.zeros(8), atol=1e-4)
    assert torch.allclose(y.std((1, 2, 3), unbiased=False), torch.ones(8), atol=1e-3)

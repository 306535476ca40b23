"""DSA: differentiable, siamese, deterministic augmentation (harness.augment)."""

from __future__ import annotations

import pytest
import torch

from harness.augment import DSA, DSAParams


def images(b=4, c=3, h=8, w=8, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["color", "crop", "cutout", "flip", "scale", "rotate"])
def test_every_transform_is_differentiable_and_keeps_the_shape(family):
    dsa = DSA(DSAParams(strategy=family))
    x = images().requires_grad_(True)
    out = dsa.draw(torch.Generator().manual_seed(1))(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_siamese_draw_applies_the_same_transform_to_batches_of_any_size():
    """Real and synthetic batches of different sizes see one transformation (same first image)."""
    for seed in range(12):  # every family gets picked for some seed
        draw = DSA().draw(torch.Generator().manual_seed(seed))
        x = images(b=5)
        big, small = draw(x), draw(x[:2])
        assert torch.allclose(big[:2], small, atol=1e-6)
        assert torch.allclose(draw(x[:1].expand(3, -1, -1, -1)), draw(x[:1]).expand(3, -1, -1, -1), atol=1e-6)


def test_per_example_draws_differ_across_the_batch():
    x = images(b=1).expand(16, -1, -1, -1).contiguous()
    out = DSA(DSAParams(strategy="rotate"))(x, torch.Generator().manual_seed(0))
    assert not torch.allclose(out[0], out[1])


def test_draws_are_reproducible_from_the_generator():
    x = images()
    a = DSA()(x, torch.Generator().manual_seed(3))
    b = DSA()(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_crop_shifts_in_zero_padding_and_cutout_zeroes_a_square():
    x = torch.ones(1, 1, 8, 8)
    params = DSAParams(strategy="cutout")
    out = DSA(params).draw(torch.Generator().manual_seed(0))(x)
    zeros = int((out == 0).sum())
    assert 0 < zeros <= 16  # a 4x4 square (half the side), clipped at the border
    shifted = [DSA(DSAParams(strategy="crop")).draw(torch.Generator().manual_seed(s))(x) for s in range(20)]
    assert all(set(o.unique().tolist()) <= {0.0, 1.0} for o in shifted)
    assert any((o == 0).any() for o in shifted) and all(int((o == 0).sum()) <= 8 * 8 - 6 * 6 for o in shifted)


def test_flip_mirrors_horizontally_and_single_mode_picks_one_family():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    outs = {tuple(DSA(DSAParams(strategy="flip")).draw(torch.Generator().manual_seed(s))(x).flatten().tolist())
            for s in range(20)}
    assert outs == {tuple(x.flatten().tolist()), tuple(x.flip(3).flatten().tolist())}


def test_unknown_strategy_names_the_families():
    with pytest.raises(ValueError, match="unknown transform.*color, crop"):
        DSAParams(strategy="color_blur")


def test_non_image_batches_are_refused():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        DSA().draw(torch.Generator())(torch.zeros(2, 5, 50))


def test_a_siamese_draw_reseeds_per_random_call_as_the_code_does():
    """The code's set_seed_DiffAug: seed for the family pick, seed+1, seed+2, ... for each random
    value; so a brightness draw with seed s shifts the image by rand(seed s+1) - 0.5."""
    x = torch.zeros(2, 1, 3, 3, dtype=torch.float64)
    out = DSA(DSAParams(strategy="color")).draw_from(41)(x)
    torch.manual_seed(42)
    shift = torch.rand(1, dtype=torch.float64).item() - 0.5
    torch.manual_seed(43)
    sat = torch.rand(1, dtype=torch.float64).item() * 2.0
    torch.manual_seed(44)
    con = torch.rand(1, dtype=torch.float64).item() + 0.5
    assert sat >= 0 and con > 0
    assert torch.allclose(out, torch.full_like(x, shift))  # constant image: saturation/contrast keep it


def test_draws_are_in_the_images_dtype_and_per_example_draws_follow_one_generator():
    x = images(b=3).double()
    a = DSA(DSAParams(strategy="flip"))(x, torch.Generator().manual_seed(0))
    assert a.dtype == torch.float64
    seed = int(torch.randint(2**31 - 1, (1,), generator=torch.Generator().manual_seed(0)))
    g = torch.Generator().manual_seed(seed)
    torch.randint(0, 1, (1,), generator=g)  # the family pick
    flips = torch.rand(3, generator=g, dtype=torch.float64) < 0.5
    assert torch.equal(a, torch.where(flips.view(3, 1, 1, 1), x.flip(3), x))


def test_align_corners_matters_only_for_rotations_of_non_square_images():
    """affine_grid + grid_sample with align_corners True or False differ by a scaling of the
    normalised coordinates per axis; with no translation that commutes with a diagonal (scale) or,
    on square images, any (rotate) matrix, so only rotate on H != W images tells them apart."""
    for family, (h, w), differs in [("rotate", (9, 12), True), ("rotate", (8, 8), False), ("scale", (9, 12), False),
                                    ("crop", (9, 12), False)]:
        x = torch.randn(3, 2, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        a = DSA(DSAParams(strategy=family)).draw_from(3)(x)
        b = DSA(DSAParams(strategy=family, align_corners=False)).draw_from(3)(x)
        assert (not torch.allclose(a, b, atol=1e-10)) == differs, (family, h, w)

import pytest
import torch
from torch import nn

from localconv.nn.lrn import CrossMapLRN, band_matrix


@pytest.mark.parametrize("size", [1, 3, 4, 5, 9])
def test_matches_torch_local_response_norm(size):
    torch.manual_seed(size)
    x = torch.randn(3, 12, 5, 4, dtype=torch.double) * 3
    ref = nn.LocalResponseNorm(size, 1e-2, 0.75, 1.0)(x)
    assert torch.allclose(CrossMapLRN(size, 1e-2, 0.75, 1.0)(x), ref, atol=1e-12)


@pytest.mark.parametrize("size", [3, 4, 9])
def test_gradient_is_exact(size):
    x = torch.randn(2, 10, 3, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: CrossMapLRN(size, 0.7, 0.75, 2.0)(t), (x,))


def test_band_window_is_clipped_at_the_edges():
    b = band_matrix(6, 3)[:, :, 0, 0]
    assert b[0].tolist() == [1, 1, 0, 0, 0, 0]
    assert b[3].tolist() == [0, 0, 1, 1, 1, 0]
    assert b[5].tolist() == [0, 0, 0, 0, 1, 1]

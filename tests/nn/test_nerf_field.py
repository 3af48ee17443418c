import pytest
import torch

from pyengine.nn import HashGrid, NeRFField
from pyengine.reference.hash_encode import hash_encode as ref_hash_encode
from tests.helpers import assert_close


def small_field(**kw):
    torch.manual_seed(0)
    return NeRFField(n_levels=4, log2_hashmap_size=12, base_resolution=4, finest_resolution=16,
                     interpolation="smoothstep", **kw)


def test_analytic_normals_match_finite_differences():
    field = small_field(density_activation="softplus")
    with torch.no_grad():
        field.grid.params.uniform_(-1, 1)  # a non-trivial density landscape
    x = torch.rand(64, 3) * 1.6 - 0.8
    analytic = field(x, with_normals=True)["normal"]
    field.normals, field.fd_eps = "finite_difference", 1e-3
    fd = field(x, with_normals=True)["normal"]
    cos = (analytic * fd).sum(-1)
    assert cos.median() > 0.999 and (cos > 0.99).float().mean() > 0.95, cos


def test_normals_train_through_the_double_backward():
    field = small_field()
    x = torch.rand(32, 3) * 1.6 - 0.8
    out = field(x, with_normals=True)
    (out["normal"][:, 2].sum()).backward()  # a loss on normals only
    assert field.grid.params.grad is not None and field.grid.params.grad.abs().sum() > 0
    assert all(p.grad is not None for p in field.density_net.parameters())


def test_density_is_zero_outside_the_box_and_blob_bias():
    field = small_field(density_bias="blob", blob_density=5.0, blob_radius=0.5)
    inside = field.density(torch.zeros(1, 3))
    edge = field.density(torch.full((1, 3), 0.9))
    assert (field.density(torch.tensor([[1.5, 0.0, 0.0]])) == 0).all()
    assert inside > edge, "the blob makes the centre denser"


def test_hash_grid_bounds_map_to_unit_cube():
    grid = HashGrid(n_input_dims=3, n_levels=3, log2_hashmap_size=10, bounds=[[-2, -2, -2], [2, 2, 2]])
    x = torch.rand(20, 3) * 4 - 2
    assert_close(grid(x), ref_hash_encode((x + 2) / 4, grid.params, grid.config), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="bounds"):
        HashGrid(n_levels=2, bounds=[[0, 0, 0], [0, 1, 1]])
    with pytest.raises(TypeError, match="either config or keyword"):
        HashGrid(grid.config, n_levels=4)


def test_field_argument_errors():
    with pytest.raises(ValueError, match="aabb"):
        NeRFField(aabb=[1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="normals"):
        NeRFField(normals="sobel")
    with pytest.raises(ValueError, match="density_activation"):
        NeRFField(density_activation="gelu")

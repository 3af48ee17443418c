"""Point-Voxel CNN modules and PVD's generation U-Net on pyengine's ops.

Parameter names, nesting and shapes follow PVD (alexzhou907/PVD, ``modules/`` and
``model/pvcnn_generation.py``) one to one, so its checkpoints load with ``load_state_dict``:
GroupNorm(8) + Swish after every convolution, PVConv's voxel branch ``voxel_layers`` (Conv3d,
GroupNorm, Swish, Dropout, Conv3d, GroupNorm, Attention or Swish, SE3d) and its point branch
``point_features``; ``PVCNN2Base`` with ``sa_layers``, ``global_att``, ``fp_layers``,
``classifier`` and ``embedf``. Channel counts must be multiples of 8 (GroupNorm(8)).

Modules pass tuples as PVD's do: ``(features, coords, temb)`` in and out, where ``temb`` [B, E, N]
is the timestep embedding carried along with the points; ``(features, coords)`` without it, as
PVCNN's. Forward passes run ``pyengine.ops`` (``avg_voxelize``, ``trilinear_devoxelize``,
``furthest_point_sample``, ``gather``, ``ball_query``, ``grouping``,
``nearest_neighbor_interpolate``), so no extension is compiled at import.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from pyengine.ops.ball_query import ball_query
from pyengine.ops.furthest_point_sample import furthest_point_sample
from pyengine.ops.grouping import gather, grouping
from pyengine.ops.nearest_neighbor_interpolate import nearest_neighbor_interpolate
from pyengine.ops.voxelize import avg_voxelize, normalize_coords, trilinear_devoxelize

__all__ = [
    "SE3d",
    "Attention",
    "BallQuery",
    "PVCNN2",
    "PVCNN2Base",
    "PVConv",
    "PointNetAModule",
    "PointNetFPModule",
    "PointNetSAModule",
    "SharedMLP",
    "Swish",
    "Voxelization",
]


class Swish(nn.Module):
    """``x * sigmoid(x)`` (SiLU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class SharedMLP(nn.Module):
    """Pointwise MLP: per width, a 1x1 convolution, GroupNorm(8) and Swish (PVD's ``SharedMLP``).

    Args:
        in_channels: C_in.
        out_channels: an int or a list of widths, one layer each.
        dim: 1 for [B, C, N] inputs (Conv1d), 2 for [B, C, M, K] (Conv2d).

    Parameters: ``layers.{3i}`` the convolution and ``layers.{3i+1}`` the GroupNorm of layer i.

    ``forward`` takes a tensor, or a tuple whose first item is transformed and the rest passed on.

    Example:
        >>> SharedMLP(3, [16, 32])(torch.randn(2, 3, 10)).shape
        torch.Size([2, 32, 10])
    """

    def __init__(self, in_channels: int, out_channels, dim: int = 1):
        super().__init__()
        if dim not in (1, 2):
            raise ValueError(f"SharedMLP: dim must be 1 or 2, got {dim!r}")
        conv = nn.Conv1d if dim == 1 else nn.Conv2d
        layers = []
        for oc in out_channels if isinstance(out_channels, (list, tuple)) else [out_channels]:
            layers += [conv(in_channels, oc, 1), nn.GroupNorm(8, oc), Swish()]
            in_channels = oc
        self.layers = nn.Sequential(*layers)

    def forward(self, inputs):
        if isinstance(inputs, (list, tuple)):
            return (self.layers(inputs[0]), *inputs[1:])
        return self.layers(inputs)


class Voxelization(nn.Module):
    """Average point features into an R^3 grid over each cloud's own normalized box (PVD's).

    ``normalize=True``: ``pyengine.ops.voxelize.normalize_coords`` (centre, divide by twice the largest
    radius plus ``eps``, shift by 0.5, scale by R, clamp to [0, R - 1]); ``False``: centre, map
    [-1, 1] to [0, R] and clamp. The coordinates are detached, as in PVD.

    ``forward(features [B, C, N], coords [B, 3, N])`` returns ``(grid [B, C, R, R, R],
    voxel_coords [B, 3, N])``, the continuous voxel coordinates for ``trilinear_devoxelize``.
    """

    def __init__(self, resolution: int, normalize: bool = True, eps: float = 0.0):
        super().__init__()
        self.r = int(resolution)
        self.normalize = normalize
        self.eps = eps

    def forward(self, features: torch.Tensor, coords: torch.Tensor):
        coords = coords.detach()
        if self.normalize:
            norm_coords, voxels = normalize_coords(coords, self.r, self.eps)
        else:
            norm_coords = ((coords - coords.mean(2, keepdim=True) + 1) / 2 * self.r).clamp(0, self.r - 1)
            voxels = norm_coords.round().to(torch.int32)
        return avg_voxelize(features, voxels, self.r, validate=False), norm_coords

    def extra_repr(self) -> str:
        return f"resolution={self.r}" + (f", normalized eps = {self.eps}" if self.normalize else "")


class SE3d(nn.Module):
    """Squeeze-excitation over a voxel grid: ``x * sigmoid(W2 act(W1 mean_xyz(x)))``, bias-free.

    ``fc.0`` [C / reduction, C] and ``fc.2`` [C, C / reduction]; ``act`` is ReLU with
    ``use_relu`` (as PVD's PVConv uses it), else Swish.
    """

    def __init__(self, channel: int, reduction: int = 8, use_relu: bool = False):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction, bias=False),
                                nn.ReLU(True) if use_relu else Swish(),
                                nn.Linear(channel // reduction, channel, bias=False), nn.Sigmoid())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs * self.fc(inputs.mean((2, 3, 4)))[:, :, None, None, None]


class Attention(nn.Module):
    """PVD's self-attention over all voxels (D=3) or points (D=1), with a residual.

    ``h = out(V softmax(Q^T K)^T)`` with 1x1 convolutions ``q``, ``k``, ``v``, ``out`` and no
    1/sqrt(C) scale (as PVD), then ``Swish(GroupNorm(x + h))``. Runs on
    ``scaled_dot_product_attention`` (scale 1), which need not form the [L, L] matrix.

    Args:
        in_ch: C, a multiple of num_groups.
        num_groups: GroupNorm groups (``norm``).
        D: 3 for [B, C, X, Y, Z] inputs, 1 for [B, C, N].
    """

    def __init__(self, in_ch: int, num_groups: int, D: int = 3):
        super().__init__()
        if in_ch % num_groups:
            raise ValueError(f"Attention: in_ch ({in_ch}) must be a multiple of num_groups ({num_groups})")
        if D not in (1, 3):
            raise ValueError(f"Attention: D must be 1 or 3, got {D!r}")
        conv = nn.Conv3d if D == 3 else nn.Conv1d
        self.q, self.k, self.v, self.out = (conv(in_ch, in_ch, 1) for _ in range(4))
        self.norm = nn.GroupNorm(num_groups, in_ch)
        self.nonlin = Swish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C = x.shape[:2]
        q, k, v = (f(x).reshape(B, C, -1).transpose(1, 2) for f in (self.q, self.k, self.v))  # [B, L, C]
        h = F.scaled_dot_product_attention(q, k, v, scale=1.0).transpose(1, 2).reshape(x.shape)
        return self.nonlin(self.norm(x + self.out(h)))


class PVConv(nn.Module):
    """Point-voxel convolution (PVD's ``PVConv``): voxel branch plus point branch, summed.

    Voxel branch: ``Voxelization`` -> ``voxel_layers`` (Conv3d k, GroupNorm(8), Swish, Dropout
    (omitted when ``dropout`` is None), Conv3d k, GroupNorm(8), ``Attention`` if ``attention``
    else Swish, ``SE3d`` if ``with_se``) -> ``trilinear_devoxelize`` at the points. Point branch:
    ``point_features = SharedMLP(in_channels, out_channels)``.

    ``forward((features [B, C_in, N], coords [B, 3, N], *rest))`` returns ``(out [B, C_out, N],
    coords, *rest)``; ``rest`` is PVD's timestep embedding, passed through.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, resolution: int,
                 attention: bool = False, dropout: float | None = 0.1, with_se: bool = False,
                 with_se_relu: bool = False, normalize: bool = True, eps: float = 0.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.resolution = kernel_size, resolution
        self.voxelization = Voxelization(resolution, normalize=normalize, eps=eps)
        conv = functools.partial(nn.Conv3d, kernel_size=kernel_size, stride=1, padding=kernel_size // 2)
        layers = [conv(in_channels, out_channels), nn.GroupNorm(8, out_channels), Swish()]
        layers += [nn.Dropout(dropout)] if dropout is not None else []
        layers += [conv(out_channels, out_channels), nn.GroupNorm(8, out_channels),
                   Attention(out_channels, 8) if attention else Swish()]
        layers += [SE3d(out_channels, use_relu=with_se_relu)] if with_se else []
        self.voxel_layers = nn.Sequential(*layers)
        self.point_features = SharedMLP(in_channels, out_channels)

    def forward(self, inputs):
        features, coords, *rest = inputs
        grid, voxel_coords = self.voxelization(features, coords)
        voxel_features = trilinear_devoxelize(self.voxel_layers(grid), voxel_coords, self.resolution)
        return (voxel_features + self.point_features(features), coords, *rest)


class BallQuery(nn.Module):
    """Neighbourhoods of centres: up to K points within ``radius`` (PVCNN's ball query).

    ``forward(points_coords [B, 3, N], centers_coords [B, 3, M], temb [B, E, N] or None,
    points_features [B, C, N] or None)`` returns ``(neighbor_features [B, 3 + C, M, K], temb
    grouped [B, E, M, K] or None)``: the neighbours' offsets from their centre (with
    ``include_coordinates``), then their features. Argument order as PVD's.
    """

    def __init__(self, radius: float, num_neighbors: int, include_coordinates: bool = True):
        super().__init__()
        self.radius, self.num_neighbors, self.include_coordinates = radius, num_neighbors, include_coordinates

    def forward(self, points_coords, centers_coords, temb=None, points_features=None):
        indices = ball_query(centers_coords, points_coords, self.radius, self.num_neighbors)
        parts = [grouping(points_coords, indices) - centers_coords.unsqueeze(-1)] if self.include_coordinates else []
        if points_features is not None:
            parts.append(grouping(points_features, indices))
        if not parts:
            raise ValueError("BallQuery: no features to group (points_features is None and include_coordinates "
                             "is False)")
        return torch.cat(parts, 1), None if temb is None else grouping(temb, indices)

    def extra_repr(self) -> str:
        return (f"radius={self.radius}, num_neighbors={self.num_neighbors}"
                + (", include coordinates" if self.include_coordinates else ""))


def _nested_widths(out_channels, n: int) -> list[list[int]]:
    if not isinstance(out_channels, (list, tuple)):
        return [[out_channels]] * n
    if not isinstance(out_channels[0], (list, tuple)):
        return [list(out_channels)] * n
    return [list(oc) for oc in out_channels]


class PointNetAModule(nn.Module):
    """Global PointNet layer: SharedMLP(s) on every point, max over all points (one centre at 0).

    ``forward((features [B, C, N], coords [B, 3, N], *temb))`` returns ``(out [B, C_out, 1],
    zeros [B, 3, 1], *temb max-pooled to [B, E, 1])``; several MLPs are concatenated.
    """

    def __init__(self, in_channels: int, out_channels, include_coordinates: bool = True):
        super().__init__()
        widths = _nested_widths(out_channels, 1)
        self.mlps = nn.ModuleList(SharedMLP(in_channels + (3 if include_coordinates else 0), w, dim=1)
                                  for w in widths)
        self.include_coordinates = include_coordinates
        self.out_channels = sum(w[-1] for w in widths)

    def forward(self, inputs):
        features, coords, *rest = inputs
        if self.include_coordinates:
            features = torch.cat([features, coords], 1)
        out = torch.cat([mlp(features).amax(-1, keepdim=True) for mlp in self.mlps], 1)
        return (out, coords.new_zeros(coords.shape[0], 3, 1), *(t.amax(-1, keepdim=True) for t in rest))

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, include_coordinates={self.include_coordinates}"


class PointNetSAModule(nn.Module):
    """Set abstraction: furthest-point-sampled centres, ball-query groups, SharedMLP, max per group.

    Args:
        num_centers: M, centres drawn by ``furthest_point_sample``.
        radius: a radius, or one per scale.
        num_neighbors: K, an int or one per scale.
        in_channels: C of the input features (3 is added for the coordinates).
        out_channels: widths of the SharedMLP (dim=2), or one list per scale.
        include_coordinates: group the offsets from the centre with the features.

    Parameters: ``mlps.{s}`` (``groupers.{s}`` have none).

    ``forward((features [B, C, N], coords [B, 3, N], *temb))`` returns ``(out [B, C_out, M],
    centers [B, 3, M], *temb)``, where scales are concatenated along channels (PVD keeps only
    the first scale's; they agree for one scale, the only case PVD builds) and ``temb`` [B, E, N]
    is grouped with the first scale's neighbourhoods and max-pooled to [B, E, M].
    """

    def __init__(self, num_centers: int, radius, num_neighbors, in_channels: int, out_channels,
                 include_coordinates: bool = True):
        super().__init__()
        radii = list(radius) if isinstance(radius, (list, tuple)) else [radius]
        ks = list(num_neighbors) if isinstance(num_neighbors, (list, tuple)) else [num_neighbors] * len(radii)
        widths = _nested_widths(out_channels, len(radii))
        if not len(radii) == len(ks) == len(widths):
            raise ValueError(f"PointNetSAModule: {len(radii)} radii, {len(ks)} neighbour counts and "
                             f"{len(widths)} MLPs must match")
        self.num_centers = num_centers
        self.groupers = nn.ModuleList(BallQuery(r, k, include_coordinates) for r, k in zip(radii, ks))
        self.mlps = nn.ModuleList(SharedMLP(in_channels + (3 if include_coordinates else 0), w, dim=2)
                                  for w in widths)
        self.out_channels = sum(w[-1] for w in widths)

    def forward(self, inputs):
        features, coords, *rest = inputs
        temb = rest[0] if rest else None
        centers = gather(coords, furthest_point_sample(coords, self.num_centers))
        outs, temb_out = [], None
        for grouper, mlp in zip(self.groupers, self.mlps):
            grouped, grouped_temb = grouper(coords, centers, temb, features)
            outs.append(mlp(grouped).amax(-1))
            if temb_out is None and grouped_temb is not None:
                temb_out = grouped_temb.amax(-1) if grouped_temb.shape[1] > 0 else grouped_temb[..., 0]
        return (torch.cat(outs, 1), centers) + ((temb_out,) if rest else ())

    def extra_repr(self) -> str:
        return f"num_centers={self.num_centers}, out_channels={self.out_channels}"


class PointNetFPModule(nn.Module):
    """Feature propagation: centres' features interpolated to the points (inverse squared distance
    of the 3 nearest centres), concatenated with the points' own features, then ``mlp``.

    ``forward((points_coords [B, 3, N], centers_coords [B, 3, M], centers_features [B, C, M],
    points_features [B, C', N], temb [B, E, M]))`` returns ``(out [B, C_out, N], points_coords,
    temb interpolated to [B, E, N])``, as PVD's; ``(points_coords, centers_coords,
    centers_features[, points_features])`` returns ``(out, points_coords)``, as PVCNN's.
    """

    def __init__(self, in_channels: int, out_channels):
        super().__init__()
        self.mlp = SharedMLP(in_channels, out_channels, dim=1)

    def forward(self, inputs):
        temb = inputs[4] if len(inputs) == 5 else None
        points_coords, centers_coords, centers_features, *points_features = inputs[:4]
        features = nearest_neighbor_interpolate(points_coords, centers_coords, centers_features)
        out = self.mlp(torch.cat([features, *points_features], 1))
        if temb is None:
            return out, points_coords
        return out, points_coords, nearest_neighbor_interpolate(points_coords, centers_coords, temb)


# PVD's generation U-Net ---------------------------------------------------------------------------

def _pvconv(resolution: int, attention: bool, dropout, with_se: bool, normalize: bool, eps: float):
    return functools.partial(PVConv, kernel_size=3, resolution=resolution, attention=attention, dropout=dropout,
                             with_se=with_se, with_se_relu=True, normalize=normalize, eps=eps)


def _sa_layers(sa_blocks, extra_feature_channels: int, embed_dim: int, use_att: bool, dropout, with_se: bool,
               normalize: bool, eps: float, r: float, vr: float):
    """PVD's ``create_pointnet2_sa_components``: (layers, input channels of each stage, output channels).

    Stage ``c`` is ``(conv_configs, sa_configs)``: conv (out, num_blocks, voxel resolution or None
    for SharedMLP) and set abstraction (num_centers or None, radius, num_neighbors, widths).
    As in PVD, stages after the first build only the first of their ``num_blocks`` convolutions
    (which takes ``embed_dim`` more channels: the features arrive concatenated with temb), the
    set abstraction of a stage without convolutions takes those ``embed_dim`` channels instead,
    and attention goes to the first convolution of odd stages.
    """
    in_channels = extra_feature_channels + 3
    layers, stage_in = [], []
    for c, (conv_configs, sa_configs) in enumerate(sa_blocks):
        stage_in.append(in_channels)
        blocks = []
        if conv_configs is not None:
            out_channels, num_blocks, voxel_resolution = conv_configs
            out_channels = int(r * out_channels)
            for p in range(num_blocks if c == 0 else min(num_blocks, 1)):
                attention = c % 2 == 1 and use_att and p == 0
                block = (SharedMLP if voxel_resolution is None else
                         _pvconv(int(vr * voxel_resolution), attention, dropout, with_se, normalize, eps))
                blocks.append(block(in_channels + (embed_dim if c > 0 else 0), out_channels))
                in_channels = out_channels
            extra_feature_channels = in_channels
        num_centers, radius, num_neighbors, widths = sa_configs
        widths = [[int(r * w) for w in oc] if isinstance(oc, (list, tuple)) else int(r * oc) for oc in widths]
        sa_in = extra_feature_channels + (embed_dim if not blocks else 0)
        if num_centers is None:
            blocks.append(PointNetAModule(sa_in, widths, include_coordinates=True))
        else:
            blocks.append(PointNetSAModule(num_centers, radius, num_neighbors, sa_in, widths, include_coordinates=True))
        in_channels = extra_feature_channels = blocks[-1].out_channels
        layers.append(blocks[0] if len(blocks) == 1 else nn.Sequential(*blocks))
    return layers, stage_in, in_channels


def _fp_layers(fp_blocks, in_channels: int, stage_in: list[int], embed_dim: int, dropout, with_se: bool,
               normalize: bool, eps: float, r: float, vr: float):
    """PVD's ``create_pointnet2_fp_modules``: (layers, output channels).

    Stage ``i`` is ``(fp widths, conv_configs or None)``: a ``PointNetFPModule`` taking the
    coarser features plus temb plus the skip features of SA stage ``-1 - i``, then the
    convolutions. PVD's attention condition there never holds (it compares with the length of
    the stage being built, 1 when tested), so these convolutions have no attention.
    """
    layers = []
    for i, (fp_configs, conv_configs) in enumerate(fp_blocks):
        widths = [int(r * w) for w in fp_configs]
        blocks = [PointNetFPModule(in_channels + stage_in[-1 - i] + embed_dim, widths)]
        in_channels = widths[-1]
        if conv_configs is not None:
            out_channels, num_blocks, voxel_resolution = conv_configs
            out_channels = int(r * out_channels)
            for _ in range(num_blocks):
                block = (SharedMLP if voxel_resolution is None else
                         _pvconv(int(vr * voxel_resolution), False, dropout, with_se, normalize, eps))
                blocks.append(block(in_channels, out_channels))
                in_channels = out_channels
        layers.append(blocks[0] if len(blocks) == 1 else nn.Sequential(*blocks))
    return layers, in_channels


class PVCNN2Base(nn.Module):
    """PVD's noise-prediction U-Net over point clouds (``model/pvcnn_generation.py``).

    Subclasses set ``sa_blocks`` and ``fp_blocks`` (see ``PVCNN2``). ``forward(inputs [B, 3 +
    S, N], t [B])`` embeds the timesteps (sinusoidal ``get_timestep_embedding``, then ``embedf``:
    Linear, LeakyReLU(0.1), Linear), broadcasts them over the points as ``temb``, runs the set
    abstraction stages (every stage after the first gets its features concatenated with temb),
    ``global_att`` over the coarsest points if ``use_att``, and the feature propagation stages
    (each gets ``[features, temb]`` and the skip features, the raw ``S`` extra input channels for
    the last), then ``classifier`` (SharedMLP to 128 * width_multiplier, Dropout, Conv1d to
    ``num_classes``). Returns [B, num_classes, N].

    Args:
        num_classes: output channels (3 for PVD's epsilon on xyz).
        embed_dim: E, timestep embedding width.
        use_att: attention in the voxel branch of odd SA stages and over the coarsest points.
        dropout: in every PVConv and the classifier.
        extra_feature_channels: S, input channels beyond xyz.
        width_multiplier: scales every width (results must stay multiples of 8).
        voxel_resolution_multiplier: scales every voxel resolution.
        with_se, normalize, eps: PVConv options; PVD uses with_se=True, normalize=True, eps=0.
    """

    sa_blocks: list = []
    fp_blocks: list = []

    def __init__(self, num_classes: int, embed_dim: int, use_att: bool, dropout: float = 0.1,
                 extra_feature_channels: int = 3, width_multiplier: float = 1, voxel_resolution_multiplier: float = 1,
                 *, with_se: bool = True, normalize: bool = True, eps: float = 0.0):
        super().__init__()
        if extra_feature_channels < 0:
            raise ValueError(f"PVCNN2Base: extra_feature_channels must be >= 0, got {extra_feature_channels}")
        self.embed_dim = embed_dim
        self.in_channels = extra_feature_channels + 3
        common = {"embed_dim": embed_dim, "dropout": dropout, "with_se": with_se, "normalize": normalize,
                  "eps": eps, "r": width_multiplier, "vr": voxel_resolution_multiplier}
        sa_layers, stage_in, channels = _sa_layers(self.sa_blocks, extra_feature_channels, use_att=use_att, **common)
        self.sa_layers = nn.ModuleList(sa_layers)
        self.global_att = Attention(channels, 8, D=1) if use_att else None
        stage_in[0] = extra_feature_channels  # the last FP stage gets only the raw extra features
        fp_layers, channels = _fp_layers(self.fp_blocks, channels, stage_in, **common)
        self.fp_layers = nn.ModuleList(fp_layers)
        hidden = int(width_multiplier * 128)
        self.classifier = nn.Sequential(SharedMLP(channels, hidden), nn.Dropout(dropout),
                                        nn.Conv1d(hidden, num_classes, 1))
        self.embedf = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.LeakyReLU(0.1, inplace=True),
                                    nn.Linear(embed_dim, embed_dim))

    def get_timestep_embedding(self, timesteps: torch.Tensor, device=None) -> torch.Tensor:
        """[B] -> [B, E]: ``sin(t f_i)`` then ``cos(t f_i)`` with ``f_i = 10000^(-i / (E/2 - 1))``,
        i < E/2 (zero-padded when E is odd)."""
        if timesteps.dim() != 1:
            raise ValueError(f"get_timestep_embedding: timesteps must be [B], got shape {tuple(timesteps.shape)}")
        half = self.embed_dim // 2
        freqs = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000) / (half - 1)))
        emb = timesteps[:, None].float() * freqs.float().to(device or timesteps.device)[None]
        return F.pad(torch.cat([emb.sin(), emb.cos()], 1), (0, self.embed_dim % 2))

    def forward(self, inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.embedf(self.get_timestep_embedding(t, inputs.device))[:, :, None].expand(-1, -1, inputs.shape[-1])
        coords, features = inputs[:, :3].contiguous(), inputs
        coords_list, skip = [], []
        for i, stage in enumerate(self.sa_layers):
            skip.append(features)
            coords_list.append(coords)
            features, coords, temb = stage((features if i == 0 else torch.cat([features, temb], 1), coords, temb))
        skip[0] = inputs[:, 3:].contiguous()
        if self.global_att is not None:
            features = self.global_att(features)
        for i, stage in enumerate(self.fp_layers):
            features, coords, temb = stage((coords_list[-1 - i], coords, torch.cat([features, temb], 1),
                                            skip[-1 - i], temb))
        return self.classifier(features)


class PVCNN2(PVCNN2Base):
    """PVD's generation model (``train_generation.py``'s ``PVCNN2``), trained there with
    ``num_classes=3, embed_dim=64, use_att=True, dropout=0.1, extra_feature_channels=0`` on
    2048-point clouds.

    Example:
        >>> model = PVCNN2(num_classes=3, embed_dim=64, use_att=True, dropout=0.1, extra_feature_channels=0)
        >>> sum(p.numel() for p in model.parameters())
        27649987
    """

    sa_blocks = [
        ((32, 2, 32), (1024, 0.1, 32, (32, 64))),
        ((64, 3, 16), (256, 0.2, 32, (64, 128))),
        ((128, 3, 8), (64, 0.4, 32, (128, 256))),
        (None, (16, 0.8, 32, (256, 256, 512))),
    ]
    fp_blocks = [
        ((256, 256), (256, 3, 8)),
        ((256, 256), (256, 3, 8)),
        ((256, 128), (128, 2, 16)),
        ((128, 128, 64), (64, 2, 32)),
    ]

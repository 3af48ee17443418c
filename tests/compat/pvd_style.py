"""A PVD-style point-voxel denoiser, written as PVD's ``modules/pvconv.py`` and ``pointnet.py`` are:
its ops come from ``import modules.functional as F`` (PVCNN's CUDA package there). Imported by
tests/compat/test_pvcnn.py after ``pyengine.compat.install_pvcnn()``, unchanged.
"""

import modules.functional as F
import torch
import torch.nn as nn
from modules import Swish


class TinyPVConv(nn.Module):
    def __init__(self, in_channels, out_channels, resolution):
        super().__init__()
        self.r = resolution
        self.conv = nn.Conv3d(in_channels, out_channels, 3, padding=1)
        self.point = nn.Conv1d(in_channels, out_channels, 1)
        self.act = Swish()

    def forward(self, inputs):
        features, coords, temb = inputs
        c = coords.detach()
        norm = c - c.mean(2, keepdim=True)
        norm = norm / (norm.norm(dim=1, keepdim=True).max(dim=2, keepdim=True).values * 2.0) + 0.5
        norm = torch.clamp(norm * self.r, 0, self.r - 1)
        grid = F.avg_voxelize(features, torch.round(norm).to(torch.int32), self.r)
        voxel = F.trilinear_devoxelize(self.act(self.conv(grid)), norm, self.r, self.training)
        return voxel + self.point(features), coords, temb


class TinyDenoiser(nn.Module):
    def __init__(self, channels=16, embed_dim=8, num_centers=32, radius=0.5, num_neighbors=8):
        super().__init__()
        self.embed_dim, self.num_centers = embed_dim, num_centers
        self.radius, self.num_neighbors = radius, num_neighbors
        self.pv = TinyPVConv(3 + embed_dim, channels, 8)
        self.sa = nn.Conv2d(channels + 3, channels, 1)
        self.out = nn.Conv1d(2 * channels, 3, 1)

    def forward(self, x, t):
        half = self.embed_dim // 2
        freqs = torch.exp(torch.arange(half, device=x.device) * -(9.21 / (half - 1)))
        temb = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)
        temb = temb[:, :, None].expand(-1, -1, x.shape[-1])
        features, coords, temb = self.pv((torch.cat([x, temb], 1), x, temb))
        centers = F.furthest_point_sample(coords, self.num_centers)
        idx = F.ball_query(centers, coords, self.radius, self.num_neighbors)
        grouped = torch.cat([F.grouping(coords, idx) - centers.unsqueeze(-1), F.grouping(features, idx)], 1)
        center_features = self.sa(grouped).max(dim=-1).values
        back = F.nearest_neighbor_interpolate(coords, centers, center_features)
        return self.out(torch.cat([features, back], 1))

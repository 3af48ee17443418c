"""A threestudio-style radiance field on ``tinycudann``, run through pyengine's drop-in on the CPU.

Mirrors how threestudio uses tcnn (``threestudio/models/networks.py``): a density/feature field
``tcnn.NetworkWithInputEncoding`` over a HashGrid on positions in [0, 1]^3, a SphericalHarmonics
``tcnn.Encoding`` of view directions mapped to [0, 1]^3, and a colour ``tcnn.Network``; outputs
are cast with ``.float()`` as threestudio does. A few Adam steps fit a soft ball of density with a
view-dependent colour. Prints ``step <i> loss <value>`` lines, then ``initial_loss`` and
``final_loss``; exits non-zero if the loss did not decrease.

Usage: python tests/compat/threestudio_style.py [--steps 40] [--batch 256]
"""

import argparse
import sys

import torch
import torch.nn.functional as F

import pyengine.compat

pyengine.compat.install_tinycudann()
import tinycudann as tcnn

POS_ENCODING = {
    "otype": "HashGrid",
    "n_levels": 8,
    "n_features_per_level": 2,
    "log2_hashmap_size": 14,
    "base_resolution": 16,
    "per_level_scale": 1.447269237440378,
}
DENSITY_NETWORK = {
    "otype": "FullyFusedMLP",
    "activation": "ReLU",
    "output_activation": "none",
    "n_neurons": 64,
    "n_hidden_layers": 1,
}
DIR_ENCODING = {"otype": "SphericalHarmonics", "degree": 4}
COLOR_NETWORK = {
    "otype": "FullyFusedMLP",
    "activation": "ReLU",
    "output_activation": "None",
    "n_neurons": 32,
    "n_hidden_layers": 2,
}
N_FEATURES = 15


class RadianceField(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.geometry = tcnn.NetworkWithInputEncoding(3, 1 + N_FEATURES, POS_ENCODING, DENSITY_NETWORK)
        self.dir_encoding = tcnn.Encoding(3, DIR_ENCODING, dtype=torch.float32)
        self.color_net = tcnn.Network(N_FEATURES + self.dir_encoding.n_output_dims, 3, COLOR_NETWORK)

    def forward(self, points, dirs):
        out = self.geometry(points).float()
        density = F.softplus(out[:, :1] - 1.0)  # threestudio's "softplus" density activation with a bias
        dirs_unit = (dirs + 1.0) / 2.0  # threestudio maps unit directions to [0, 1]^3 for tcnn's SH
        h = torch.cat([out[:, 1:], self.dir_encoding(dirs_unit).float()], dim=-1)
        rgb = torch.sigmoid(self.color_net(h).float())
        return density, rgb


def target(points, dirs):
    r = (points - 0.5).norm(dim=-1, keepdim=True)
    density = 10.0 * torch.exp(-((r / 0.2) ** 2))
    rgb = 0.5 + 0.4 * dirs * torch.tensor([1.0, -1.0, 0.5])
    return density, rgb


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    print(f"tinycudann module: {tcnn.__name__}")
    model = RadianceField()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2, eps=1e-15)
    losses = []
    for step in range(args.steps):
        points = torch.rand(args.batch, 3)
        dirs = F.normalize(torch.randn(args.batch, 3), dim=-1)
        density, rgb = model(points, dirs)
        ref_density, ref_rgb = target(points, dirs)
        loss = F.mse_loss(density, ref_density) + F.mse_loss(rgb, ref_rgb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.6f}")
    tcnn.free_temporary_memory()

    initial, final = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    print(f"initial_loss {initial:.6f}")
    print(f"final_loss {final:.6f}")
    return 0 if final < initial else 1


if __name__ == "__main__":
    sys.exit(main())

"""Point-cloud metrics of PVD's evaluation: Chamfer distance, EMD and 1-NNA.

- **Chamfer distance** (PVD's, as in PointFlow): with squared distances,
  ``CD(A, B) = mean_a min_b |a - b|^2 + mean_b min_a |a - b|^2``.
- **EMD**: the exact earth mover's distance between two clouds of the same size, the mean
  Euclidean distance under the optimal one-to-one matching, found by
  ``scipy.optimize.linear_sum_assignment`` on ``emd_points`` points drawn from each cloud (exact
  assignment is O(n^3), so clouds are subsampled; PVD uses an approximate auction solver on all
  2048 points instead — the subsample adds noise of a few percent, not bias in the ranking).
- **1-NNA** (Lopez-Paz & Oquab; PointFlow's and PVD's main metric): pool the generated set and the
  reference set, classify each cloud by the set of its nearest other cloud (1-NN under CD or EMD),
  and report the accuracy. About 50% when the two sets are independent draws of the same
  distribution (best), 100% when they are told apart perfectly. Copies of the reference set give
  0% (every cloud's nearest neighbour is its copy): a memorising generator scores below 50%.
"""

from __future__ import annotations

import numpy as np
import torch


def chamfer(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Chamfer distance (squared) between clouds: a [..., N, 3], b [..., M, 3] -> [...]."""
    d = torch.cdist(a, b).square()
    return d.min(-1).values.mean(-1) + d.min(-2).values.mean(-1)


def chamfer_matrix(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """[n, m] Chamfer distances between every cloud of A [n, N, 3] and of B [m, M, 3].

    Exact nearest neighbours from one k-d tree per cloud (``scipy.spatial.cKDTree``): a pair of
    2048-point clouds costs about a millisecond instead of a 2048 x 2048 distance matrix.
    """
    from scipy.spatial import cKDTree

    a_np, b_np = A.detach().cpu().double().numpy(), B.detach().cpu().double().numpy()
    trees_a, trees_b = [cKDTree(c) for c in a_np], [cKDTree(c) for c in b_np]
    out = torch.empty(len(A), len(B), dtype=torch.float64)
    for i in range(len(A)):
        for j in range(len(B)):
            d_ab = trees_b[j].query(a_np[i], k=1)[0]
            d_ba = trees_a[i].query(b_np[j], k=1)[0]
            out[i, j] = float((d_ab ** 2).mean() + (d_ba ** 2).mean())
    return out.to(A.dtype)


def subsample(clouds: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """[K, min(n, N), 3]: ``n`` points of each cloud [K, N, 3], drawn without replacement."""
    K, N, _ = clouds.shape
    if n >= N:
        return clouds
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(N, generator=g)[:n] for _ in range(K)])
    return torch.gather(clouds, 1, idx[..., None].expand(-1, -1, 3))


def emd(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact EMD between two clouds [N, 3] of the same size: mean distance of the optimal matching."""
    from scipy.optimize import linear_sum_assignment

    if a.shape != b.shape:
        raise ValueError(f"emd: clouds must have the same size, got {tuple(a.shape)} and {tuple(b.shape)}")
    cost = torch.cdist(a.double(), b.double()).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].mean())


def emd_matrix(A: torch.Tensor, B: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """[n, m] exact EMDs between the clouds of A [n, N, 3] and B [m, N, 3] (``symmetric``: A is B)."""
    out = torch.zeros(len(A), len(B), dtype=torch.float64)
    for i in range(len(A)):
        for j in range(i + 1 if symmetric else 0, len(B)):
            out[i, j] = emd(A[i], B[j])
            if symmetric:
                out[j, i] = out[i, j]
    return out


def one_nna(d_gg: torch.Tensor, d_gr: torch.Tensor, d_rr: torch.Tensor) -> float:
    """1-NN accuracy in [0, 1] from the distances within the generated set [n, n], between the sets
    [n, m] and within the reference set [m, m]."""
    n, m = d_gr.shape
    full = torch.cat([torch.cat([d_gg, d_gr], 1), torch.cat([d_gr.T, d_rr], 1)], 0).double().clone()
    full.fill_diagonal_(float("inf"))
    label = torch.cat([torch.ones(n), torch.zeros(m)])
    return float((label[full.argmin(1)] == label).double().mean())


def evaluate_generation(gen: torch.Tensor, ref: torch.Tensor, emd_points: int = 256, seed: int = 0) -> dict:
    """1-NNA under CD and EMD between generated clouds [n, N, 3] and reference clouds [m, N, 3].

    Returns ``{"1nna_cd", "1nna_emd", "mmd_cd"}`` (accuracies in [0, 1]; ``mmd_cd``: mean over the
    reference of the CD to its nearest generated cloud). ``emd_points=0`` skips EMD.
    """
    gen, ref = gen.float(), ref.float()
    cd_gr = chamfer_matrix(gen, ref)
    out = {"1nna_cd": one_nna(chamfer_matrix(gen, gen), cd_gr, chamfer_matrix(ref, ref)),
           "mmd_cd": float(cd_gr.min(0).values.mean())}
    if emd_points:
        g, r = subsample(gen, emd_points, seed), subsample(ref, emd_points, seed + 1)
        out["1nna_emd"] = one_nna(emd_matrix(g, g, True), emd_matrix(g, r), emd_matrix(r, r, True))
    else:
        out["1nna_emd"] = float("nan")
    return out


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A plain-text table: ``columns`` are ``(key, header, format)``."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("-" if r.get(k) is None or (isinstance(r.get(k), float) and np.isnan(r[k]))
                       else format(r[k], f)) for k, _, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""Drop-in for tiny-cuda-nn's PyTorch bindings (``import tinycudann as tcnn``), on any device.

Mirrors the public surface of ``tinycudann``: ``Encoding``, ``Network``,
``NetworkWithInputEncoding``, ``supports_jit_fusion`` and ``free_temporary_memory``. Modules take
the same JSON-style configs, hold one flat ``params`` parameter with tcnn's length and layout, and
map ``[batch, n_input_dims]`` to ``[batch, n_output_dims]``. Grid encodings run through
``pyengine.ops.hash_encode`` (CUDA, Triton, C++/OpenMP or PyTorch, chosen per device; twice
differentiable); everything else is plain PyTorch, differentiable by autograd.

Supported encodings (``otype`` is case-insensitive, as in tcnn):

* ``"HashGrid"``, ``"Grid"`` (``"type"``: ``"Hash"`` | ``"Dense"``), ``"DenseGrid"``: keys
  ``n_levels`` (16) or ``n_features``/``n_grid_features``, ``n_features_per_level`` (2),
  ``log2_hashmap_size`` (19), ``base_resolution`` (16), ``per_level_scale`` (2.0; for dense grids
  tcnn's ``(256 / base_resolution)^(1 / (n_levels - 1))``), ``interpolation`` (``"Linear"`` |
  ``"Smoothstep"``); ``hash`` only ``"CoherentPrime"``; ``stochastic_interpolation`` and
  ``fixed_point_pos`` only ``false``.
* ``"Identity"`` (``scale``, ``offset``), ``"Frequency"`` (``n_frequencies``),
  ``"SphericalHarmonics"`` (``degree`` 1..8), ``"Empty"``, and ``"Composite"`` (``nested``,
  each with ``n_dims_to_encode``; ``reduction`` only ``"Concatenation"``).

Not supported (a ``ValueError`` says so): ``"Nearest"`` interpolation, ``"Tiled"`` grids, other hash
functions, ``"OneBlob"``, ``"TriangleWave"``, ``"OneBlobFrequency"``/``"NRC"``,
``dims_to_encode_begin``. Networks: ``"FullyFusedMLP"`` (also ``"MegakernelMLP"``),
``"CutlassMLP"``/``"MLP"``, with ``activation``, ``output_activation``, ``n_neurons``,
``n_hidden_layers``; ``feedback_alignment`` only ``false``.

Where pyengine differs from tiny-cuda-nn on purpose:

* **Unknown config keys raise** ``ValueError`` naming the key; tcnn ignores them silently.
  Set ``STRICT = False`` (or ``pyengine.compat.install_tinycudann(strict=False)``) to get a
  warning instead, e.g. for threestudio's ``ProgressiveBandHashGrid``, which passes its own keys
  (``start_level``, ``start_step``, ``update_steps``) through to ``tcnn.Encoding``. Keys that tcnn
  knows but pyengine does not implement always raise.
* **Precision.** ``Encoding(dtype=None)`` computes in float32; real tcnn picks fp16 on most GPUs.
  ``dtype`` may be ``torch.float32``, ``torch.float16`` or ``torch.bfloat16`` (tcnn: no bf16).
  As in tcnn's bindings, ``params`` is a float32 master copy cast to ``dtype`` on every forward,
  and the output is in ``dtype``. Networks compute and return float32 (tcnn: fp16).
* **Initial values** follow tcnn's distributions (grids: uniform in ``[-1e-4, 1e-4]``; MLP
  layers: uniform in ``±sqrt(6 / (fan_in + fan_out))`` of the padded shapes, SIREN bounds for
  ``"Sine"``), drawn in tcnn's order (network, then encoding) from a ``torch.Generator`` seeded
  with ``seed`` rather than from tcnn's pcg32, so the numbers differ from tcnn's for equal seeds.
* **Inputs** may have extra leading dims, ``[..., n_input_dims]``, and any floating dtype (cast to
  float32 as tcnn does); they must be on the device of ``params`` (tcnn copies them to CUDA).
* Modules are created on the CPU; move them with ``.to(device)``.

Layouts follow tcnn so that ``state_dict()["params"]`` lines up with a tcnn checkpoint: grid
tables ``[entry, feature]`` level after level; MLP weights ``[out, in]`` row-major, layer after
layer, with the input width padded to a multiple of 16 (the padding inputs are 1, so those
columns act as a bias) and the output width padded to a multiple of 16 (sliced off);
``NetworkWithInputEncoding`` stores the network's weights first, then the encoding's.

Example:
    >>> from pyengine.compat import tcnn
    >>> enc = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": 8, "log2_hashmap_size": 15})
    >>> enc(torch.rand(100, 3)).shape
    torch.Size([100, 16])
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from functools import cache
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F

from pyengine.ops.hash_encode import HashGridConfig, hash_encode

__all__ = ["Encoding", "Module", "Network", "NetworkWithInputEncoding", "free_temporary_memory",
           "supports_jit_fusion"]

#: Unknown config keys raise ValueError when True, warn when False (tcnn ignores them silently).
STRICT = True

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_NETWORK_ALIGNMENT = 16  # tcnn's MLPs pad input and output widths to multiples of 16
_FULLY_FUSED_WIDTHS = (16, 32, 64, 128)


def supports_jit_fusion() -> bool:
    """tcnn's runtime-compiled kernel fusion; pyengine has none, so always False."""
    return False


def free_temporary_memory() -> None:
    """No-op: pyengine keeps no tcnn-style memory arenas (PyTorch's allocator owns all memory)."""


# Config parsing ----------------------------------------------------------------------------------

def _not_supported(where: str, what: str) -> ValueError:
    return ValueError(f"{where}: {what} is not supported by pyengine's tiny-cuda-nn drop-in")


def _check_keys(cfg: Mapping, where: str, known, unsupported=()) -> None:
    """Keys tcnn knows but pyengine lacks always raise; unknown keys raise, or warn if not STRICT."""
    for key in cfg:
        if key in unsupported:
            raise _not_supported(where, f"key {key!r}")
    unknown = [key for key in cfg if key not in known]
    if not unknown:
        return
    names = ", ".join(repr(k) for k in unknown)
    msg = (f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {names}; pyengine accepts {sorted(known)}. "
           "tiny-cuda-nn ignores unknown keys; set pyengine.compat.tcnn.STRICT = False "
           "(or install_tinycudann(strict=False)) to warn instead")
    if STRICT:
        raise ValueError(msg)
    frame, level = sys._getframe(0), 1  # point the warning at the caller's line, outside this file
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(msg + "; ignoring them", stacklevel=level)


def _int(cfg: Mapping, key: str, default: int, where: str, minimum: int = 0) -> int:
    value = cfg.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{where}: {key!r} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float(cfg: Mapping, key: str, default: float, where: str) -> float:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise ValueError(f"{where}: {key!r} must be a finite number, got {value!r}")
    return float(value)


def _choice(cfg: Mapping, key: str, default: str, where: str, supported, unsupported=()) -> str:
    """A case-insensitive string option; returns the lower-case value."""
    value = cfg.get(key, default)
    low = value.lower() if isinstance(value, str) else None
    if low in unsupported:
        raise _not_supported(where, f"{key}={value!r}")
    if low not in supported:
        raise ValueError(f"{where}: {key!r} must be one of {list(supported) + list(unsupported)}, got {value!r}")
    return low


def _flag_off(cfg: Mapping, key: str, where: str) -> None:
    value = cfg.get(key, False)
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {key!r} must be true or false, got {value!r}")
    if value:
        raise _not_supported(where, f"{key}=true")


def _otype(cfg, where: str, default: str) -> str:
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{where}: expected a dict config, got {type(cfg).__name__}")
    otype = cfg.get("otype", default)
    if not isinstance(otype, str):
        raise TypeError(f"{where}: 'otype' must be a string, got {otype!r}")
    return otype


def _next_multiple(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


# Encodings ---------------------------------------------------------------------------------------
# Each encoding is a plain object: its own output width, the padding tcnn adds after it (or, for
# spherical harmonics, before it) and the value of that padding, and a function of (x, params).

class _Enc:
    n_params = 0
    pad_value = 1.0  # tcnn pads with ones, except grids (zeros)
    pad_front = False  # spherical harmonics put their padding first
    required_output_alignment = 1

    def __init__(self, n_input_dims: int, width: int):
        self.n_input_dims, self.width, self.n_to_pad = n_input_dims, width, 0

    @property
    def padded_width(self) -> int:
        return self.width + self.n_to_pad

    def set_padded_width(self, width: int) -> None:
        assert width >= self.width
        self.n_to_pad = width - self.width

    def set_alignment(self, alignment: int) -> None:
        self.set_padded_width(_next_multiple(self.padded_width, math.lcm(alignment, self.required_output_alignment)))

    def init_params(self, gen: torch.Generator) -> torch.Tensor:
        return torch.zeros(0)

    def encode(self, x: torch.Tensor, params: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x, params, dtype):
        """x: [N, n_input_dims] float32, params: [n_params] float32 -> [N, padded_width] in dtype."""
        y = self.encode(x, params, dtype)
        if self.n_to_pad:
            pad = y.new_full((y.shape[0], self.n_to_pad), self.pad_value)
            y = torch.cat([pad, y] if self.pad_front else [y, pad], dim=-1)
        return y


_GRID_KEYS = ("otype", "type", "n_levels", "n_features", "n_grid_features", "n_features_per_level",
              "log2_hashmap_size", "base_resolution", "per_level_scale", "interpolation", "hash",
              "stochastic_interpolation", "fixed_point_pos", "n_dims_to_encode")


def hash_grid_config(n_input_dims: int, encoding_config: Mapping, where: str = "Encoding") -> HashGridConfig:
    """The ``HashGridConfig`` that a tcnn grid-encoding config (``HashGrid``/``Grid``/``DenseGrid``) means.

    Example:
        >>> hash_grid_config(3, {"otype": "HashGrid", "per_level_scale": 1.5}).n_output_dims
        32
    """
    otype = _otype(encoding_config, where, "Grid")
    if otype.lower() not in ("hashgrid", "grid", "densegrid"):
        raise ValueError(f"{where}: expected a grid encoding otype (HashGrid, Grid, DenseGrid), got {otype!r}")
    return _grid_config(n_input_dims, encoding_config, f"{where} (otype {otype!r})")


def _grid_config(n_input_dims: int, cfg: Mapping, where: str) -> HashGridConfig:
    otype = cfg.get("otype", "Grid").lower()
    _check_keys(cfg, where, _GRID_KEYS)
    if n_input_dims not in (2, 3, 4):
        raise ValueError(f"{where}: grid encodings take 2, 3 or 4 input dims, got n_input_dims={n_input_dims}")
    grid_type = _choice(cfg, "type", "dense" if otype == "densegrid" else "hash", where, ("hash", "dense"),
                        ("tiled", "tile"))
    interpolation = _choice(cfg, "interpolation", "Linear", where, ("linear", "smoothstep"), ("nearest",))
    _choice(cfg, "hash", "CoherentPrime", where, ("coherentprime",),
            ("prime", "reversedprime", "rng", "baseconvert"))
    _flag_off(cfg, "stochastic_interpolation", where)
    _flag_off(cfg, "fixed_point_pos", where)
    n_features_per_level = _int(cfg, "n_features_per_level", 2, where, 1)
    if "n_features" in cfg or "n_grid_features" in cfg:
        if "n_levels" in cfg:
            raise ValueError(f"{where}: give either 'n_levels' or 'n_features', not both (one determines the other)")
        key = "n_features" if "n_features" in cfg else "n_grid_features"
        n_features = _int(cfg, key, 0, where, 1)
        if n_features % n_features_per_level:
            raise ValueError(f"{where}: {key}={n_features} must be a multiple of "
                             f"n_features_per_level={n_features_per_level}")
        n_levels = n_features // n_features_per_level
    else:
        n_levels = _int(cfg, "n_levels", 16, where, 1)
    # tcnn reads base_resolution as an unsigned int; a fractional value would be truncated there
    base_resolution = _int(cfg, "base_resolution", 16, where, 1)
    if "per_level_scale" in cfg:
        per_level_scale = _float(cfg, "per_level_scale", 2.0, where)
    elif grid_type == "dense":
        if n_levels == 1:
            raise ValueError(f"{where}: a one-level dense grid needs an explicit 'per_level_scale'")
        # tcnn's default for dense grids: finest level at resolution 256, in float32
        ratio = np.float32(256.0) / np.float32(base_resolution)
        per_level_scale = float(np.exp(np.log(ratio) / np.float32(n_levels - 1), dtype=np.float32))
    else:
        per_level_scale = 2.0
    try:
        return HashGridConfig(n_input_dims=n_input_dims, n_levels=n_levels, n_features_per_level=n_features_per_level,
                              log2_hashmap_size=_int(cfg, "log2_hashmap_size", 19, where, 1),
                              base_resolution=float(base_resolution), per_level_scale=per_level_scale,
                              interpolation=interpolation, grid_type=grid_type)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


class _Grid(_Enc):
    pad_value = 0.0

    def __init__(self, n_input_dims, cfg, where):
        self.config = _grid_config(n_input_dims, cfg, where)
        super().__init__(n_input_dims, self.config.n_output_dims)
        self.n_params = self.config.n_params()
        self.required_output_alignment = self.config.n_features_per_level

    def init_params(self, gen):
        return torch.empty(self.n_params).uniform_(-1e-4, 1e-4, generator=gen)

    def encode(self, x, params, dtype):
        return hash_encode(x, params.to(dtype), self.config)


class _Identity(_Enc):
    def __init__(self, n_input_dims, cfg, where):
        _check_keys(cfg, where, ("otype", "scale", "offset", "n_dims_to_encode"))
        super().__init__(n_input_dims, n_input_dims)
        self.scale, self.offset = _float(cfg, "scale", 1.0, where), _float(cfg, "offset", 0.0, where)

    def encode(self, x, params, dtype):
        return (x * self.scale + self.offset).to(dtype)


class _Frequency(_Enc):
    def __init__(self, n_input_dims, cfg, where):
        _check_keys(cfg, where, ("otype", "n_frequencies", "n_dims_to_encode"))
        self.n_frequencies = _int(cfg, "n_frequencies", 12, where, 1)
        super().__init__(n_input_dims, n_input_dims * self.n_frequencies * 2)

    def encode(self, x, params, dtype):
        # out[n, (d * n_freq + i) * 2 + k] = sin(x[n, d] * 2^i * pi + k * pi / 2): sin, cos per frequency
        scales = torch.exp2(torch.arange(self.n_frequencies, dtype=x.dtype, device=x.device))
        phase = torch.tensor([0.0, math.pi / 2], dtype=x.dtype, device=x.device)
        arg = (x[:, :, None] * scales)[..., None] * math.pi + phase
        return torch.sin(arg).reshape(x.shape[0], self.width).to(dtype)


@cache
def _sh_terms(degree: int):
    """Real spherical harmonics as polynomials, in tcnn's order and sign convention.

    Band ``l``, order ``m`` sits at column ``l^2 + l + m``, with the Condon-Shortley phase:
    ``Y_lm = c_lm * Re((x + iy)^m) * d^m P_l / dz^m (z)`` for ``m > 0``, ``Im((x+iy)^|m|)`` for
    ``m < 0``, ``c_lm = (-1)^m sqrt(2) sqrt((2l+1)/(4 pi) (l-|m|)!/(l+|m|)!)`` (no ``sqrt(2)`` for
    ``m = 0``). These are the same polynomials in ``x, y, z`` that tcnn evaluates (it does not
    normalise the direction either). Returns ``[(column, m, coefficient, z_poly)]`` where
    ``z_poly`` lists ascending-power coefficients of the derivative of the Legendre polynomial.
    """
    terms = []
    for l in range(degree):
        legendre = np.zeros(l + 1)
        for k in range(l // 2 + 1):  # Legendre P_l from its explicit sum
            legendre[l - 2 * k] = (-1) ** k * math.comb(l, k) * math.comb(2 * l - 2 * k, l) / 2.0**l
        for m in range(-l, l + 1):
            a = abs(m)
            poly = np.polynomial.polynomial.polyder(legendre, a) if a else legendre
            c = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - a) / math.factorial(l + a))
            if a:
                c *= math.sqrt(2.0) * (-1) ** a
            terms.append((l * l + l + m, m, c, tuple(float(v) for v in poly)))
    return terms


class _SphericalHarmonics(_Enc):
    pad_front = True

    def __init__(self, n_input_dims, cfg, where):
        _check_keys(cfg, where, ("otype", "degree", "n_dims_to_encode"))
        if n_input_dims != 3:
            raise ValueError(f"{where}: SphericalHarmonics encodes 3-D directions, got n_input_dims={n_input_dims}")
        self.degree = _int(cfg, "degree", 4, where, 1)
        if self.degree > 8:
            raise ValueError(f"{where}: SphericalHarmonics 'degree' must be in 1..8 (as in tcnn), got {self.degree}")
        super().__init__(3, self.degree**2)

    def encode(self, x, params, dtype):
        d = x * 2.0 - 1.0  # tcnn maps [0, 1]^3 to [-1, 1]^3
        px, py, pz = d.unbind(-1)
        re, im = [torch.ones_like(px)], [torch.zeros_like(px)]  # Re, Im of (x + iy)^m
        for _ in range(1, self.degree):
            a, b = re[-1], im[-1]
            re.append(a * px - b * py)
            im.append(a * py + b * px)
        cols = [None] * self.width
        for col, m, c, poly in _sh_terms(self.degree):
            zpart = poly[-1] * torch.ones_like(pz)
            for coef in reversed(poly[:-1]):
                zpart = zpart * pz + coef
            xy = re[m] if m > 0 else (im[-m] if m < 0 else 1.0)
            cols[col] = c * xy * zpart
        return torch.stack(cols, dim=-1).to(dtype)


class _Empty(_Enc):
    def __init__(self, n_input_dims, cfg, where):
        _check_keys(cfg, where, ("otype", "n_dims_to_encode"))
        super().__init__(n_input_dims, 0)

    def encode(self, x, params, dtype):
        return x.new_zeros(x.shape[0], 0, dtype=dtype)


class _Composite(_Enc):
    def __init__(self, n_input_dims, cfg, where):
        _check_keys(cfg, where, ("otype", "nested", "reduction", "n_dims_to_encode"))
        _choice(cfg, "reduction", "Concatenation", where, ("concatenation",), ("sum", "product"))
        nested = cfg.get("nested")
        if not isinstance(nested, Sequence) or isinstance(nested, str) or not nested:
            raise ValueError(f"{where}: 'nested' must be a non-empty list of encoding configs")
        for i, sub in enumerate(nested):
            if not isinstance(sub, Mapping):
                raise TypeError(f"{where}: nested[{i}] must be a dict config, got {type(sub).__name__}")
            if "dims_to_encode_begin" in sub:
                raise _not_supported(f"{where}: nested[{i}]", "key 'dims_to_encode_begin'")
        specified = [_int(sub, "n_dims_to_encode", 0, f"{where}: nested[{i}]") if "n_dims_to_encode" in sub else None
                     for i, sub in enumerate(nested)]
        if sum(s or 0 for s in specified) > n_input_dims:
            raise ValueError(f"{where}: nested encodings encode {sum(s or 0 for s in specified)} dims, "
                             f"more than n_input_dims={n_input_dims}")
        if specified.count(None) > 1:
            raise ValueError(f"{where}: only one nested encoding may leave 'n_dims_to_encode' unspecified")
        rest = n_input_dims - sum(s or 0 for s in specified)
        self.children, self.begins, offset = [], [], 0
        for i, (sub, dims) in enumerate(zip(nested, specified)):
            dims = rest if dims is None else dims
            if dims > 0:
                child = _make_encoding(dims, sub, f"{where}: nested[{i}]")
                child.set_alignment(1)
                self.children.append(child)
                self.begins.append(offset)
            offset += dims
        if not self.children:
            raise ValueError(f"{where}: no nested encoding encodes any dims")
        # pad each child so that the next one starts at a multiple of its required alignment, as tcnn does
        so_far = 0
        for child, following in pairwise(self.children):
            width = _next_multiple(so_far + child.padded_width, following.required_output_alignment) - so_far
            child.set_padded_width(width)
            so_far += width
        super().__init__(n_input_dims, 0)
        self.n_params = sum(c.n_params for c in self.children)
        self.required_output_alignment = math.lcm(*(c.required_output_alignment for c in self.children))

    @property
    def padded_width(self):
        return sum(c.padded_width for c in self.children)

    def set_padded_width(self, width):
        before = self.padded_width - self.children[-1].padded_width
        self.children[-1].set_padded_width(width - before)

    def init_params(self, gen):
        return torch.cat([c.init_params(gen) for c in self.children])

    def __call__(self, x, params, dtype):
        outs, p = [], 0
        for child, begin in zip(self.children, self.begins):
            outs.append(child(x[:, begin:begin + child.n_input_dims], params[p:p + child.n_params], dtype))
            p += child.n_params
        return torch.cat(outs, dim=-1)


_ENCODINGS = {
    "hashgrid": _Grid, "grid": _Grid, "densegrid": _Grid,
    "identity": _Identity, "frequency": _Frequency, "sphericalharmonics": _SphericalHarmonics,
    "empty": _Empty, "composite": _Composite,
}
_UNSUPPORTED_ENCODINGS = ("tiledgrid", "oneblob", "trianglewave", "oneblobfrequency", "nrc")


def _make_encoding(n_input_dims: int, cfg, where: str) -> _Enc:
    otype = _otype(cfg, where, "OneBlob")  # tcnn's default otype
    key = otype.lower()
    if key in _UNSUPPORTED_ENCODINGS:
        missing = "" if "otype" in cfg else " (no 'otype' given; tcnn then defaults to 'OneBlob')"
        raise _not_supported(where, f"encoding otype {otype!r}{missing}")
    if key not in _ENCODINGS:
        raise ValueError(f"{where}: unknown encoding otype {otype!r}; supported: "
                         "HashGrid, Grid, DenseGrid, Identity, Frequency, SphericalHarmonics, Empty, Composite")
    return _ENCODINGS[key](n_input_dims, cfg, f"{where} (otype {otype!r})")


# Networks ----------------------------------------------------------------------------------------

def _squareplus(x):
    y = x * 10.0
    return 0.5 * (y + torch.sqrt(y * y + 4.0)) / 10.0


# tcnn's activations; Squareplus and Softplus are sharpened by its K_ACT = 10
_ACTIVATIONS = {
    "none": lambda x: x,
    "relu": F.relu,
    "leakyrelu": lambda x: F.leaky_relu(x, 0.01),
    "silu": F.silu,
    "exponential": torch.exp,
    "sine": torch.sin,
    "sigmoid": torch.sigmoid,
    "squareplus": _squareplus,
    "softplus": lambda x: F.softplus(x, beta=10.0),
    "tanh": torch.tanh,
}
_ACTIVATION_NAMES = ("None", "ReLU", "LeakyReLU", "SiLU", "Exponential", "Sine", "Sigmoid", "Squareplus",
                     "Softplus", "Tanh")
_NETWORK_KEYS = ("otype", "activation", "output_activation", "n_neurons", "n_hidden_layers", "feedback_alignment",
                 "n_input_dims", "n_output_dims")


def _activation(cfg, key, default, where) -> str:
    value = cfg.get(key, default)
    if value is None:  # JSON null / YAML ~ read as "None"
        value = "None"
    if not isinstance(value, str) or value.lower() not in _ACTIVATIONS:
        raise ValueError(f"{where}: {key!r} must be one of {list(_ACTIVATION_NAMES)}, got {value!r}")
    return value.lower()


class _MLP:
    """tcnn's bias-free MLP on an already padded input width; output padded to a multiple of 16."""

    def __init__(self, n_input_dims: int, n_output_dims: int, cfg, where: str):
        otype = _otype(cfg, where, "MLP")
        kind = otype.lower()
        if kind not in ("fullyfusedmlp", "megakernelmlp", "cutlassmlp", "mlp"):
            raise ValueError(f"{where}: unknown network otype {otype!r}; supported: FullyFusedMLP, CutlassMLP, MLP")
        where = f"{where} (otype {otype!r})"
        _check_keys(cfg, where, _NETWORK_KEYS)
        _flag_off(cfg, "feedback_alignment", where)
        fused = kind in ("fullyfusedmlp", "megakernelmlp")
        self.activation = _activation(cfg, "activation", "ReLU", where)
        self.output_activation = _activation(cfg, "output_activation", "None", where)
        width = _int(cfg, "n_neurons", 128, where, 1)
        n_hidden = _int(cfg, "n_hidden_layers", 5, where, 1 if fused else 0)
        if fused and width not in _FULLY_FUSED_WIDTHS:
            raise ValueError(f"{where}: FullyFusedMLP supports n_neurons in {_FULLY_FUSED_WIDTHS} (as in tcnn), "
                             f"got {width}; use CutlassMLP for other widths")
        if fused and self.activation in ("sine", "silu"):
            raise ValueError(f"{where}: tcnn's FullyFusedMLP has no {cfg.get('activation')!r} hidden activation; "
                             "use CutlassMLP")
        out = _next_multiple(n_output_dims, _NETWORK_ALIGNMENT)
        dims = [n_input_dims] + [width] * n_hidden + [out]
        self.shapes = [(o, i) for i, o in pairwise(dims)]  # [out, in] per layer
        self.n_params = sum(o * i for o, i in self.shapes)
        self.padded_output_width = out

    def init_params(self, gen):
        chunks = []
        for layer, (fan_out, fan_in) in enumerate(self.shapes):
            if self.activation == "sine":  # SIREN bounds, as tcnn
                bound = 30.0 / fan_in if layer == 0 else math.sqrt(6.0 / fan_in)
            else:
                bound = math.sqrt(6.0 / (fan_in + fan_out))
            chunks.append(torch.empty(fan_out * fan_in).uniform_(-bound, bound, generator=gen))
        return torch.cat(chunks)

    def __call__(self, h, params):
        """h: [N, padded input width] -> [N, padded output width]."""
        p, last = 0, len(self.shapes) - 1
        for layer, (fan_out, fan_in) in enumerate(self.shapes):
            w = params[p:p + fan_out * fan_in].view(fan_out, fan_in)
            p += fan_out * fan_in
            h = F.linear(h, w.to(h.dtype))
            h = _ACTIVATIONS[self.output_activation if layer == last else self.activation](h)
        return h


# Modules -----------------------------------------------------------------------------------------

class Module(torch.nn.Module):
    """Base of the tcnn modules: a flat ``params`` parameter and a checked forward.

    Subclasses set ``n_input_dims``, ``n_output_dims``, ``dtype`` and implement ``_initial_params``
    and ``_apply_flat``.
    """

    def __init__(self, seed: int = 1337):
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"{type(self).__name__}: seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        gen = torch.Generator().manual_seed(self.seed)
        self.params = torch.nn.Parameter(self._initial_params(gen).to(torch.float32), requires_grad=True)

    def _initial_params(self, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _apply_flat(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [batch, n_input_dims] (or [..., n_input_dims]) floating -> [batch, n_output_dims]."""
        name = type(self).__name__
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name}.forward: x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name}.forward: x must be a floating-point tensor, got {x.dtype}")
        if x.dim() < 1 or x.shape[-1] != self.n_input_dims:
            raise ValueError(f"{name}.forward: x must be [batch, {self.n_input_dims}] (n_input_dims), "
                             f"got shape {tuple(x.shape)}")
        if x.device != self.params.device:
            raise ValueError(f"{name}.forward: x is on {x.device} but the module's params are on "
                             f"{self.params.device}; move one of them (module.to(device))")
        batch = x.shape[:-1]
        y = self._apply_flat(x.reshape(-1, self.n_input_dims).to(torch.float32))
        return y[:, :self.n_output_dims].reshape(*batch, self.n_output_dims)

    @property
    def jit_fusion(self) -> bool:
        return False

    @jit_fusion.setter
    def jit_fusion(self, value: bool) -> None:
        if value:
            warnings.warn("jit_fusion has no effect in pyengine's tiny-cuda-nn drop-in", stacklevel=2)

    def extra_repr(self) -> str:
        return (f"n_input_dims={self.n_input_dims}, n_output_dims={self.n_output_dims}, seed={self.seed}, "
                f"dtype={self.dtype}, n_params={self.params.numel()}")


def _check_dims(name: str, **dims) -> None:
    for key, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: {key} must be a positive int, got {value!r}")


class Encoding(Module):
    """Input encoding, as ``tinycudann.Encoding``: ``[batch, n_input_dims]`` -> ``[batch, n_output_dims]``.

    Args:
        n_input_dims: width of the inputs (grids: 2, 3 or 4; spherical harmonics: 3).
        encoding_config: tcnn encoding config (see the module docstring for what is supported).
        seed: seed of the parameter initialisation.
        dtype: precision of the computation and the output: torch.float32 (default; real tcnn
            defaults to fp16 on most GPUs), torch.float16 or torch.bfloat16. ``params`` stays a
            float32 master copy, as in tcnn's bindings.

    Example:
        >>> enc = Encoding(3, {"otype": "SphericalHarmonics", "degree": 4})
        >>> enc.n_output_dims, enc(torch.rand(5, 3)).shape
        (16, torch.Size([5, 16]))
    """

    def __init__(self, n_input_dims: int, encoding_config: dict, seed: int = 1337, dtype: torch.dtype | None = None):
        _check_dims("Encoding", n_input_dims=n_input_dims)
        if dtype is not None and dtype not in _DTYPES:
            raise ValueError("Encoding: dtype must be None, torch.float32, torch.float16 or torch.bfloat16, "
                             f"got {dtype}")
        self.n_input_dims = int(n_input_dims)
        self.encoding_config = encoding_config
        self.dtype = torch.float32 if dtype is None else dtype
        self._encoding = _make_encoding(self.n_input_dims, encoding_config, "Encoding")
        self.n_output_dims = self._encoding.padded_width
        super().__init__(seed=seed)

    def _initial_params(self, gen):
        return self._encoding.init_params(gen)

    def _apply_flat(self, x):
        return self._encoding(x, self.params, self.dtype)


class Network(Module):
    """Bias-free MLP, as ``tinycudann.Network``: ``[batch, n_input_dims]`` -> ``[batch, n_output_dims]``.

    As in tcnn, the input is padded with ones to a multiple of 16 columns (so the first layer's
    extra columns act as a bias) and the output layer has a multiple of 16 rows, sliced to
    ``n_output_dims``. Computes and returns float32 (tcnn: fp16).

    Example:
        >>> net = Network(3, 1, {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 2})
        >>> net.params.numel()  # 64*16 + 64*64 + 16*64
        6144
    """

    def __init__(self, n_input_dims: int, n_output_dims: int, network_config: dict, seed: int = 1337):
        _check_dims("Network", n_input_dims=n_input_dims, n_output_dims=n_output_dims)
        self.n_input_dims, self.n_output_dims = int(n_input_dims), int(n_output_dims)
        self.network_config = network_config
        self.dtype = torch.float32
        # tcnn builds a Network as an Identity encoding (padded with ones) followed by the MLP
        self._encoding = _Identity(self.n_input_dims, {"otype": "Identity"}, "Network")
        self._encoding.set_alignment(_NETWORK_ALIGNMENT)
        self._network = _MLP(self._encoding.padded_width, self.n_output_dims, network_config, "Network")
        super().__init__(seed=seed)

    def _initial_params(self, gen):
        return self._network.init_params(gen)

    def _apply_flat(self, x):
        return self._network(self._encoding(x, self.params[:0], torch.float32), self.params)


class NetworkWithInputEncoding(Module):
    """Encoding followed by an MLP, as ``tinycudann.NetworkWithInputEncoding``.

    ``params`` holds the network's weights first and the encoding's after them (tcnn's order).
    The encoding's output is padded to a multiple of 16 as in tcnn (ones, or zeros for grids).

    Example:
        >>> model = NetworkWithInputEncoding(
        ...     3, 4, {"otype": "HashGrid", "n_levels": 8, "log2_hashmap_size": 15},
        ...     {"otype": "FullyFusedMLP", "n_neurons": 64, "n_hidden_layers": 1})
        >>> model(torch.rand(10, 3)).shape
        torch.Size([10, 4])
    """

    def __init__(self, n_input_dims: int, n_output_dims: int, encoding_config: dict, network_config: dict,
                 seed: int = 1337):
        _check_dims("NetworkWithInputEncoding", n_input_dims=n_input_dims, n_output_dims=n_output_dims)
        self.n_input_dims, self.n_output_dims = int(n_input_dims), int(n_output_dims)
        self.encoding_config, self.network_config = encoding_config, network_config
        self.dtype = torch.float32
        self._encoding = _make_encoding(self.n_input_dims, encoding_config, "NetworkWithInputEncoding")
        self._encoding.set_alignment(_NETWORK_ALIGNMENT)
        self._network = _MLP(self._encoding.padded_width, self.n_output_dims, network_config,
                             "NetworkWithInputEncoding")
        super().__init__(seed=seed)

    def _initial_params(self, gen):
        network = self._network.init_params(gen)
        return torch.cat([network, self._encoding.init_params(gen)])

    def _apply_flat(self, x):
        n = self._network.n_params
        h = self._encoding(x, self.params[n:], torch.float32)
        return self._network(h, self.params[:n])

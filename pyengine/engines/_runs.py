"""Run directories and checkpoints shared by the engines.

A run is defined by its config minus the fields that may change when it is resumed (``steps``,
``out``, how often to evaluate, ...). The default output directory is named after those defining
fields (``runs/<job>/<label>-<hash>``), so different settings never share a directory, and an
existing checkpoint is resumed only when its saved config matches field by field.

Checkpoints are one safetensors file: tensors by name, and the rest (config, step, optimizer
hyper-parameters) as JSON in the header's metadata. Loading parses a JSON header and raw tensor
bytes, so it runs no code, unlike a pickle (``torch.load(weights_only=False)``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict

import torch

CHECKPOINT = "checkpoint.safetensors"
LEGACY_CHECKPOINTS = ("checkpoint.pt",)  # pickles written by pyengine <= 0.1; never loaded
_META_KEY = "pyengine"
FORMAT = 1


# -- run identity -----------------------------------------------------------------------------------

def defining_fields(cfg, resume_free: frozenset) -> dict:
    """The fields of a config dataclass that define its run (all but ``resume_free``)."""
    return {k: v for k, v in asdict(cfg).items() if k not in resume_free}


def config_hash(cfg, resume_free: frozenset, n: int = 8) -> str:
    """Short hash of the defining fields: equal for configs that may resume each other."""
    blob = json.dumps(defining_fields(cfg, resume_free), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def config_diff(saved: dict, current: dict, resume_free: frozenset) -> list[tuple[str, object, object]]:
    """``[(field, saved value, current value)]`` for every defining field that differs.

    A field missing on one side (a config from another pyengine version) counts as different and
    shows as ``<missing>``.
    """
    missing = "<missing>"
    keys = [k for k in current if k not in resume_free]
    keys += [k for k in saved if k not in current and k not in resume_free]
    return [(k, saved.get(k, missing), current.get(k, missing)) for k in keys
            if saved.get(k, missing) != current.get(k, missing)]


def format_diff(diff) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff)


def _has_run(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, name)) for name in (CHECKPOINT, *LEGACY_CHECKPOINTS))


def _candidates(out: str):
    yield out
    i = 2
    while True:
        yield f"{out}-{i}"
        i += 1


def _why_not(job: str, path: str, cfg, resume_free: frozenset) -> str | None:
    """None if the run in ``path`` can be resumed with ``cfg``, else the reason."""
    ckpt = os.path.join(path, CHECKPOINT)
    if not os.path.exists(ckpt):
        legacy = next(n for n in LEGACY_CHECKPOINTS if os.path.exists(os.path.join(path, n)))
        return f"{legacy} is a pickle checkpoint from an older pyengine, which is never loaded (it could run code)"
    try:
        state = read_metadata(ckpt)
    except ValueError as exc:
        return f"cannot read {ckpt} ({exc})"
    if state.get("job") != job:
        return f"{ckpt} is a checkpoint of {state.get('job')!r}"
    diff = config_diff(state.get("config", {}), asdict(cfg), resume_free)
    return f"its config differs in {format_diff(diff)}" if diff else None


def choose_run_dir(job: str, out: str, cfg, resume: bool, resume_free: frozenset, verb: str = "resuming"):
    """Pick the directory for a run and whether to resume from its checkpoint.

    Looks at ``out``, then ``out-2``, ``out-3``, ...: the first that holds no run is used for a fresh
    one, unless ``resume`` is set and one before it holds a run whose saved config matches ``cfg``
    on every field outside ``resume_free``; that one is resumed. Why ``out`` itself is not resumed
    is printed (``verb`` names what is done with a matching run). A run with another config is
    never written over.

    Returns ``(directory, checkpoint path to resume or None)``.
    """
    reason = None
    for path in _candidates(out):
        if not _has_run(path):
            if reason is not None:
                print(f"{job}: not {verb} {out}: {reason}; starting fresh in {path}")
            return path, None
        why = "resume=false" if not resume else _why_not(job, path, cfg, resume_free)
        if why is None:
            if reason is not None:
                print(f"{job}: not {verb} {out}: {reason}; {verb} {path}, whose config matches")
            return path, os.path.join(path, CHECKPOINT)
        if reason is None:
            reason = why


def find_run(job: str, out: str, cfg, resume_free: frozenset) -> tuple[str | None, list[str]]:
    """The first of ``out``, ``out-2``, ... holding a run whose config matches ``cfg`` (for jobs that
    read a trained run, such as sampling); ``(None, [why each existing run does not match])`` if none."""
    reasons = []
    for path in _candidates(out):
        if not _has_run(path):
            return None, reasons
        why = _why_not(job, path, cfg, resume_free)
        if why is None:
            return path, reasons
        reasons.append(f"{path}: {why}")


# -- checkpoint files -------------------------------------------------------------------------------

def save_checkpoint(path: str, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write ``tensors`` and JSON-able ``state`` to ``path`` atomically (temp file, then rename)."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # safetensors wants contiguous CPU tensors that share no memory with each other
    flat = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    meta = {_META_KEY: json.dumps({"format": FORMAT, **state}, sort_keys=True)}
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        save_file(flat, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_metadata(path: str) -> dict:
    """The JSON state of a checkpoint, without reading its tensors. ValueError if not one of ours."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{path} is not a safetensors file ({exc})") from None
    if _META_KEY not in meta:
        raise ValueError(f"{path} is a safetensors file without pyengine's checkpoint metadata")
    try:
        state = json.loads(meta[_META_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: checkpoint metadata is not valid JSON ({exc})") from None
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, expected {FORMAT}")
    return state


def load_checkpoint(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors on CPU, state)`` from a file written by :func:`save_checkpoint`; runs no code."""
    from safetensors.torch import load_file

    state = read_metadata(path)
    return load_file(path, device="cpu"), state


def load_run(path: str, job: str, config: dict, resume_free: frozenset) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``load_checkpoint(path)`` of a run being resumed: None when there is no file; ValueError
    naming the difference when the file is another job's or its config differs from ``config``
    (a dict) in a field outside ``resume_free``."""
    if not os.path.exists(path):
        return None
    tensors, state = load_checkpoint(path)
    diff = config_diff(state.get("config", {}), config, resume_free)
    if state.get("job") != job or diff:
        raise ValueError(f"{job}: {path} belongs to another run "
                         f"({format_diff(diff) if diff else 'job ' + repr(state.get('job'))})")
    return tensors, state


def prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


# -- optimizer state ----------------------------------------------------------------------------

def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``opt.state_dict()`` into tensors (``"<param index>.<name>"``) and JSON-able rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars,
                     "tuples": sorted({k for g in sd["param_groups"] for k, v in g.items() if isinstance(v, tuple)})}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict) -> None:
    """Inverse of :func:`optimizer_to_flat`: load the state into ``opt``."""
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(rest["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    tuples = set(rest.get("tuples", ()))
    groups = [{k: tuple(v) if k in tuples else v for k, v in g.items()} for g in rest["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})

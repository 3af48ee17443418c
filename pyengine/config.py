"""Engine configuration: a dataclass, an optional YAML file, then dotted overrides."""

from __future__ import annotations

from dataclasses import fields


def load_config(cls, yaml_path: str | None = None, overrides: list[str] | None = None):
    """Build ``cls`` from its defaults, a YAML file and ``key=value`` overrides (omegaconf).

    Unknown keys raise a ValueError naming the key.

    Example:
        >>> load_config(FitImageConfig, None, ["steps=10", "lr=0.02"]).steps
        10
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    base = OmegaConf.structured(cls)
    try:
        if yaml_path:
            base = OmegaConf.merge(base, OmegaConf.load(yaml_path))
        if overrides:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    except (ConfigKeyError, ValidationError) as exc:
        known = ", ".join(f.name for f in fields(cls))
        raise ValueError(f"{cls.__name__}: {exc.msg if hasattr(exc, 'msg') else exc} (known keys: {known})") from None
    return OmegaConf.to_object(base)

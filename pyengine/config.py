"""Engine configuration: a dataclass, an optional YAML file, then dotted overrides."""

from __future__ import annotations

from dataclasses import fields


def load_config(cls, yaml_path: str | None = None, overrides: list[str] | None = None):
    """Build ``cls`` from its defaults, a YAML file and ``key=value`` overrides (omegaconf).

    Unknown keys, and a YAML file that cannot be read, raise a ValueError naming the key or file.

    Example:
        >>> load_config(FitImageConfig, None, ["steps=10", "lr=0.02"]).steps
        10
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    base = OmegaConf.structured(cls)
    if yaml_path:
        import yaml

        # OmegaConf reads YAML with a safe loader: tags such as !!python/object are refused, not run.
        try:
            loaded = OmegaConf.load(yaml_path)
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{cls.__name__}: cannot read {yaml_path}: {exc}") from None
        if not isinstance(loaded, DictConfig):
            raise ValueError(f"{cls.__name__}: {yaml_path} must hold a mapping of config keys")
    try:
        if yaml_path:
            base = OmegaConf.merge(base, loaded)
        if overrides:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
    except (ConfigKeyError, ValidationError) as exc:
        known = ", ".join(f.name for f in fields(cls))
        raise ValueError(f"{cls.__name__}: {exc.msg if hasattr(exc, 'msg') else exc} (known keys: {known})") from None
    return OmegaConf.to_object(base)

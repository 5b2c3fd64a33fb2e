"""Dataclass configs <-> YAML, with `key=value` / `key.sub=value` overrides, validated when constructed.

    config = load_config(GRPOConfig, "results/run/config.yaml", ["lr=1e-5", "temperature=0.8"])
    save_config(config, "results/run2/config.yaml")    # the resolved config (every run writes its own)

A config is a dataclass whose fields carry type annotations; nested dataclasses are sections (`a.b=`).
`check_types(config)` (called from every config's `__post_init__`) checks each field against its
annotation, so a wrong type fails where the config is made, naming the key: bool, int (a bool is not an
int), float (an int is accepted and converted), str, `X | None`, `Literal[...]`, `list[X]`, `tuple[X, ...]`,
`dict[str, X]` and nested config dataclasses. Files and override values are read as YAML (`1e-5`,
`true`, `[1, 2]`, `null`), with YAML 1.2's floats (PyYAML alone reads `1e-5` as a string); a string YAML
would read as something else is quoted ('"1e-5"').
Unknown keys (in the file or an override) are a ValueError that names the key and suggests the nearest
field, by spelling or by the name transformers/TRL give it (`learning_rate` is `lr`: `ALIASES`).
Range checks (a learning rate > 0, ...) live in each config's `__post_init__`.

Left out: environment-variable interpolation, includes/inheritance between YAML files, CLI flags other
than `key=value` (argparse front-ends parse their own flags and pass the rest here).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

C = TypeVar("C")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: `1e-5` is a number (YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)$|^[-+]?(?:[0-9][0-9_]*)\.[0-9_]*$"
               r"|^[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # safe: _Loader is a SafeLoader


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (YAML 1.2 floats); a missing file or a non-mapping is a ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    data = _yaml(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of keys to values")
    return data


def check_types(config: Any, prefix: str = "") -> None:
    """Check (and normalise int -> float) every field of a config dataclass against its annotation."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        key = prefix + f.name
        value = getattr(config, f.name)
        ok, normalised = _conforms(value, hints[f.name])
        if not ok:
            raise ValueError(f"config key {key!r} must be {_describe(hints[f.name])}, got {value!r}")
        if normalised is not value:
            object.__setattr__(config, f.name, normalised)


def _conforms(value: Any, tp: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, v = _conforms(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if origin is Literal:
        return value in args, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False, value
        return True, float(value)
    if tp is str:
        return isinstance(value, str), value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False, value
        item = args[0] if args else Any
        out = []
        for v in value:
            ok, nv = _conforms(v, item)
            if not ok:
                return False, value
            out.append(nv)
        return True, (list(out) if origin is list else tuple(out))
    if origin is dict:
        if not isinstance(value, dict):
            return False, value
        item = args[1] if len(args) == 2 else Any
        out = {}
        for k, v in value.items():
            ok, nv = _conforms(v, item)
            if not (ok and isinstance(k, str)):
                return False, value
            out[k] = nv
        return True, out
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp), value
    raise TypeError(f"config annotation {tp!r} is not supported by atlas.config")


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]) if args else 'values'}"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Build `cls` from a (nested) mapping; unknown keys raise naming the key and the nearest field."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<root>'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(_unknown(prefix + str(key), list(fields), prefix))
        section = _section_type(hints[key])
        kwargs[key] = from_dict(section, value, f"{prefix}{key}.") if section and isinstance(value, dict) else value
    return cls(**kwargs)


def _section_type(tp: Any) -> type | None:
    """The config dataclass a field holds (also inside `X | None`), or None for a plain value."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


# What transformers' TrainingArguments and TRL's configs call atlas's fields: a user coming from them types
# these (or misspells them), and the suggestion should be the atlas field.
ALIASES = {
    "learning_rate": "lr", "lr_scheduler_type": "lr_schedule", "per_device_train_batch_size": "micro_batch_size",
    "save_steps": "save_every", "eval_steps": "eval_every", "save_total_limit": "keep_checkpoints",
    "resume_from_checkpoint": "resume", "gradient_checkpointing": "activation_checkpointing",
    "max_completion_length": "max_new_tokens", "num_iterations": "mu", "epsilon": "eps_low",
    "epsilon_high": "eps_high", "loss_type": "loss_norm", "scale_rewards": "adv_scale",
    "sync_ref_model": "ref_sync_every", "ref_model_sync_steps": "ref_sync_every",
    "ref_model_mixup_alpha": "ref_sync_alpha", "max_length": "max_seq_len", "packing": "pack",
    "assistant_only_loss": "last_turn_only",
}


def _unknown(key: str, names: list[str], prefix: str) -> str:
    bare = key.removeprefix(prefix)
    aliases = {a: f for a, f in ALIASES.items() if f in names}
    near = difflib.get_close_matches(bare, names + list(aliases), n=1)
    near = [aliases.get(near[0], near[0])] if near else []
    hint = f"; did you mean {prefix + near[0]!r}?" if near else f"; known keys: {', '.join(sorted(names))}"
    return f"unknown config key {key!r}{hint}"


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """["a=1", "b.c=x"] -> {"a": 1, "b": {"c": "x"}}; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r} must look like key=value or section.key=value")
        try:
            value = _yaml(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({e})") from e
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} sets a key under {part!r}, which is given a value elsewhere")
        node[parts[-1]] = value
    return tree


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `extra` merged in, section by section."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: Sequence[str] = ()) -> C:
    """`cls` from a YAML file (optional) with `key=value` overrides applied on top."""
    data = read_yaml(path) if path is not None else {}
    return from_dict(cls, merge(data, parse_overrides(overrides)))


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")

"""Configs: YAML and key=value overrides, validated where they are made, naming the key."""

from dataclasses import dataclass, field

import pytest

from atlas.config import check_types, load_config, parse_overrides, save_config
from atlas.distill import SFTConfig


@dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int = 0

    def __post_init__(self):
        check_types(self, "sampling.")


@dataclass
class Nested:
    name: str = "x"
    sampling: Sampling = field(default_factory=Sampling)
    tags: list[str] = field(default_factory=list)
    limit: int | None = None

    def __post_init__(self):
        check_types(self)


def test_yaml_and_overrides_build_the_config(tmp_path):
    path = tmp_path / "sft.yaml"
    path.write_text("lr: 3.0e-4\nmax_steps: 50\nlr_schedule: cosine\n")
    overrides = ["max_steps=7", "pack=false", "output_dir=results/x", "adam_betas=[0.9, 0.95]"]
    config = load_config(SFTConfig, path, overrides)
    assert (config.lr, config.max_steps, config.lr_schedule, config.pack) == (3e-4, 7, "cosine", False)
    assert config.adam_betas == (0.9, 0.95)
    save_config(config, tmp_path / "resolved.yaml")
    assert load_config(SFTConfig, tmp_path / "resolved.yaml") == config  # the resolved config round-trips


def test_nested_sections_and_dotted_overrides(tmp_path):
    config = load_config(Nested, None, ["sampling.temperature=0.7", "tags=[a, b]", "limit=null"])
    assert config.sampling.temperature == 0.7 and config.tags == ["a", "b"] and config.limit is None
    with pytest.raises(ValueError, match=r"sampling\.temprature.*sampling\.temperature"):
        load_config(Nested, None, ["sampling.temprature=0.7"])
    with pytest.raises(ValueError, match="'sampling.top_k' must be int"):
        load_config(Nested, None, ["sampling.top_k=0.5"])


@pytest.mark.parametrize("overrides, message", [
    (["lerning_rate=1"], "unknown config key 'lerning_rate'; did you mean 'lr'"),  # by transformers' name
    (["per_device_train_batch_size=4"], "did you mean 'micro_batch_size'"),
    (["lrr=1e-3"], "did you mean 'lr'"),
    (["max_steps=ten"], "'max_steps' must be int"),
    (["max_steps=1.5"], "'max_steps' must be int"),
    (["pack=maybe"], "'pack' must be bool"),
    (["lr_schedule=linear"], "'lr_schedule' must be one of 'constant', 'cosine'"),
    (["lr=-1"], "'lr' must be > 0"),
    (["warmup_ratio=1.5"], "'warmup_ratio' must be in"),
    (["batch_size=0"], "'batch_size' must be > 0"),
    (["max_steps"], "key=value"),
])
def test_typos_and_bad_values_raise_naming_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(SFTConfig, None, overrides)


def test_a_yaml_typo_and_direct_construction_raise_too(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("max_step: 5\n")
    with pytest.raises(ValueError, match="did you mean 'max_steps'"):
        load_config(SFTConfig, path)
    with pytest.raises(ValueError, match="'micro_batch_size' must be int"):
        SFTConfig(micro_batch_size="8")
    assert SFTConfig(lr=1).lr == 1.0 and isinstance(SFTConfig(lr=1).lr, float)  # an int where a float goes


def test_override_values_parse_as_yaml_scalars():
    assert parse_overrides(["a=1e-5", "b=true", "c.d=[1, 2]", "e=null", "f='1e-5'", "g="]) == {
        "a": 1e-5, "b": True, "c": {"d": [1, 2]}, "e": None, "f": "1e-5", "g": ""}


def test_the_module_docstring_example_runs(tmp_path):
    """A run's resolved config.yaml loads back as its config class, with overrides; a recipe's train section
    mistyped the transformers way is named with the atlas field."""
    from atlas.recipes import load_recipe
    from atlas.rl import GRPOConfig

    save_config(GRPOConfig(output_dir=str(tmp_path / "run")), tmp_path / "config.yaml")
    config = load_config(GRPOConfig, tmp_path / "config.yaml", ["lr=1e-5", "temperature=0.8"])
    assert (config.lr, config.temperature, config.output_dir) == (1e-5, 0.8, str(tmp_path / "run"))
    with pytest.raises(ValueError, match="'train.lerning_rate'; did you mean 'train.lr'"):
        load_recipe(None, ["train.lerning_rate=1e-5"], default="grpo")

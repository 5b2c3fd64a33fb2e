"""RIMConfig: defaults, YAML, environment, validation."""

import pytest

from atlas.reward import RIM, RIMConfig

ENV = ("ATLAS_JUDGE_BASE_URL", "ATLAS_JUDGE_MODEL", "ATLAS_ARBITER_MODEL", "ATLAS_REWARD_CONFIG")


@pytest.fixture
def clean_env(monkeypatch):
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_defaults_are_the_originals():
    c = RIMConfig()
    assert c.temperatures == (0.2, 0.5, 0.8) and c.arbiter_temperature == 0.3
    assert (c.variance_threshold, c.uncertainty_threshold) == (0.15, 0.3)
    assert (c.cap_margin, c.cap_gate, c.consistency_caps) == (0.1, 0.5, True)
    assert c.aggregation == "mean" and c.cache


def test_yaml_then_env_then_overrides(tmp_path, clean_env):
    path = tmp_path / "rim.yaml"
    path.write_text(
        "base_url: http://yaml:8000/v1\nsmall_model: yaml-small\nlarge_model: yaml-large\n"
        "temperatures: [0.1, 0.9]\nactive_judges: [session]\naggregation: min_uncertainty\n"
    )
    c = RIMConfig.from_yaml(path)
    assert c.temperatures == (0.1, 0.9) and c.active_judges == ("session",) and c.small_model == "yaml-small"
    clean_env.setenv("ATLAS_REWARD_CONFIG", str(path))
    clean_env.setenv("ATLAS_JUDGE_MODEL", "env-small")
    c = RIMConfig.load(max_workers=3)
    assert (c.base_url, c.small_model, c.large_model) == ("http://yaml:8000/v1", "env-small", "yaml-large")
    assert c.aggregation == "min_uncertainty" and c.max_workers == 3


def test_unknown_yaml_key_lists_the_valid_ones(tmp_path):
    path = tmp_path / "rim.yaml"
    path.write_text("variance_treshold: 0.2\n")
    with pytest.raises(ValueError, match="unknown config key 'variance_treshold'.*variance_threshold"):
        RIMConfig.from_yaml(path)
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        RIMConfig.from_yaml(path)


def test_missing_endpoint_names_what_to_set(clean_env):
    with pytest.raises(ValueError, match="ATLAS_JUDGE_BASE_URL.*'base_url' in the YAML.*ATLAS_ARBITER_MODEL"):
        RIM(RIMConfig.load())
    clean_env.setenv("ATLAS_JUDGE_BASE_URL", "http://127.0.0.1:1/v1")
    clean_env.setenv("ATLAS_JUDGE_MODEL", "m")
    with pytest.raises(ValueError) as err:
        RIM(RIMConfig.load())
    assert "ATLAS_ARBITER_MODEL" in str(err.value) and "ATLAS_JUDGE_MODEL" not in str(err.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"active_judges": ("accuracy", "style")}, "choose one or more of"),
    ({"active_judges": ()}, "choose one or more of"),
    ({"active_judges": ("accuracy", "accuracy")}, "twice"),
    ({"aggregation": "median"}, "'mean' or 'min_uncertainty'"),
    ({"temperatures": ()}, "temperatures"),
    ({"temperatures": (0.5,)}, "two or more"),
    ({"variance_threshold": 1.5}, "variance_threshold"),
    ({"failure_score": -1.0}, "failure_score"),
    ({"max_workers": 0}, ">= 1"),
])
def test_bad_config_is_a_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RIMConfig(**kwargs)


def test_a_custom_backend_still_needs_model_names():
    with pytest.raises(ValueError, match="small_model and large_model"):
        RIM(RIMConfig(), client=object())

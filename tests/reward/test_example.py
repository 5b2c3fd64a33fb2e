"""examples/reward.py against the loopback server, and without an endpoint."""

import importlib.util
from pathlib import Path

import pytest

from tests.reward.server import Reply, ScriptedServer, evaluation

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "reward.py"


@pytest.fixture
def example(monkeypatch):
    for var in ("ATLAS_JUDGE_BASE_URL", "ATLAS_JUDGE_MODEL", "ATLAS_ARBITER_MODEL", "ATLAS_REWARD_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    spec = importlib.util.spec_from_file_location("reward_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prints_each_judges_rationale_escalation_and_caps(example, capsys):
    def script(body, i):
        if body["model"] == "big":
            return Reply(evaluation(0.3, 0.1, "arbiter: the process skips a check"))
        if "You are the accuracy judge" in body["messages"][0]["content"]:
            return Reply(evaluation(0.2, 0.1, "the final answer is wrong"))
        return Reply(evaluation({0.2: 0.2, 0.5: 0.6, 0.8: 0.9}[body["temperature"]], 0.1, "steps"))

    with ScriptedServer(script) as srv:
        code = example.main(["--base-url", srv.base_url, "--model", "small", "--arbiter-model", "big",
                             "--context", "reference=2 hours 30 minutes"])
    out = capsys.readouterr().out
    assert code == 0
    assert "== accuracy: 0.200" in out and "rationale: the final answer is wrong" in out
    assert "escalated to the arbiter: score std" in out and "arbiter: the process skips a check" in out
    assert "== process: 0.300" in out  # 0.3 <= accuracy + 0.1, so the cap does not fire
    assert "principle (0.70) correctness" in out and "T=0.3" in out
    assert "score: 0.250" in out and "7 calls" in out


def test_without_an_endpoint_it_says_what_to_set(example, capsys):
    assert example.main([]) == 2
    err = capsys.readouterr().err
    assert "ATLAS_JUDGE_BASE_URL" in err and "--base-url" in err

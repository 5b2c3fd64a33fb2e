"""`atlas train / eval / plot` as a user runs them: a dry run from a trace file, tiny end-to-end runs from
the JSONL fixture and from the Postgres fixture to an hf/ that transformers loads (with its provenance),
`atlas eval` on the result, `atlas plot` to a PNG."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import atlas.model as am
from atlas.cli import main
from tests import agent
from tests.data.records import FIXTURES, make_record, shop_records, write_jsonl
from tests.tiny import TOOLS_TEMPLATE

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture
def traces(tmp_path):
    return write_jsonl(tmp_path / "traces.jsonl", FIXTURES)


def _atlas(args, cwd):
    out = subprocess.run([sys.executable, "-m", "atlas.cli", *args], cwd=cwd, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_dry_run_from_any_directory_says_what_it_would_train_on(tmp_path, traces):
    stdout = _atlas(["train", str(CONFIGS / "teacher.yaml"), "--dry-run", f"traces={traces}"], tmp_path)
    report = json.loads(stdout)
    assert report["recipe"]["recipe"] == "teacher" and report["recipe"]["data"]["source"] == traces
    sessions = report["data"]["sessions"]
    assert sessions["yielded"] == 8 and sessions["excluded"] == {
        "review_status:missing": 1, "review_status:pending": 1, "review_status:quarantined": 1}
    assert report["data"]["train_examples"] + report["data"]["eval_examples"] == 7  # one duplicate collapsed
    assert "<|im_start|>user" in report["sample_prompt"]
    assert any("eval split" in note for note in report["notes"])  # a small split is said, not hidden
    assert not (tmp_path / "results").exists()  # nothing was trained or written


def test_a_postgres_password_never_reaches_the_report(tmp_path):
    from atlas.recipes import describe, load_recipe

    recipe = load_recipe(CONFIGS / "grpo.yaml", ["data.source=postgresql://reader:s3cret@db:5432/atlas"])
    assert "s3cret" not in json.dumps(describe(recipe))


def tool_recipe(tmp_path) -> Path:
    """configs/sft.yaml with a chat template that renders tools (tests.tiny.TOOLS_TEMPLATE, Hermes-style calls
    over the embedded tokenizer's ChatML tokens): SFT trains on the agent's transcripts, tool calls included."""
    import yaml

    recipe = yaml.safe_load((CONFIGS / "sft.yaml").read_text())
    recipe.update(model=str(ROOT / "atlas" / "embedded" / "models" / "student"),
                  chat_template=TOOLS_TEMPLATE)
    path = tmp_path / "sft_tools.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _train_eval_plot(tmp_path, source, name):
    run = tmp_path / name
    _atlas(["train", str(tool_recipe(tmp_path)), f"traces={source}", "min_reward=null", "status=null",
            "eval_fraction=0.3", "max_steps=2", "batch_size=4", "eval_every=0", f"output_dir={run}"], tmp_path)
    from transformers import AutoModelForCausalLM

    import atlas.model as am

    hf = run / "hf"
    ours = am.from_pretrained(hf)
    theirs = AutoModelForCausalLM.from_pretrained(hf).eval()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert (theirs(ids).logits - ours(ids)).abs().max() <= 1e-5
    provenance = json.loads((hf / "provenance.json").read_text())
    assert provenance["session_ids"]["count"] >= 5 and len(provenance["session_ids"]["sha256"]) == 64
    assert provenance["data"]["sessions"]["excluded"] and provenance["atlas_version"]
    generation = json.loads((hf / "generation_config.json").read_text())
    assert am.Tokenizer.from_pretrained(hf).eos_token_id in generation["eos_token_id"]
    evaluation = json.loads(_atlas(["eval", str(hf), f"traces={source}", "min_reward=null", "status=null",
                                    "eval_fraction=0.3", "--config", str(tool_recipe(tmp_path)), "--json"], tmp_path))
    assert evaluation["n"] >= 1 and 0 <= evaluation["success_rate"] <= 1
    png = _atlas(["plot", str(run)], tmp_path).strip()
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return provenance


def test_jsonl_traces_to_a_servable_checkpoint(tmp_path, traces):
    provenance = _train_eval_plot(tmp_path, traces, "from-jsonl")
    assert provenance["recipe"]["data"]["source"] == traces


@pytest.mark.postgres
def test_postgres_traces_to_a_servable_checkpoint(tmp_path, reader_url):
    provenance = _train_eval_plot(tmp_path, reader_url, "from-postgres")
    assert ":" not in provenance["recipe"]["data"]["source"].split("@")[0].removeprefix("postgresql://") or \
        "***" in provenance["recipe"]["data"]["source"]


def test_bad_recipes_fail_with_one_line(tmp_path, capsys):
    assert main(["train", str(CONFIGS / "grpo.yaml"), "lrr=1", "--dry-run"]) == 2
    assert "did you mean 'train.lr'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2


def test_grpo_with_rim_judges_maps_the_columns_to_context_keys(tmp_path, monkeypatch):
    """--reward rim: the references reach the judges as `reference`; the judges' scores are the rewards."""
    from atlas.cli import main
    from atlas.train.metrics import read_metrics
    from tests.reward.server import Reply, ScriptedServer, evaluation

    with ScriptedServer(lambda body, n: Reply(evaluation(0.25 if n % 2 else 0.75))) as server:
        monkeypatch.setenv("ATLAS_JUDGE_BASE_URL", server.base_url)
        monkeypatch.setenv("ATLAS_JUDGE_MODEL", "small")
        monkeypatch.setenv("ATLAS_ARBITER_MODEL", "large")
        assert main(["train", str(CONFIGS / "grpo.yaml"), "reward=rim", "train.max_steps=1",
                     "train.prompts_per_step=2", "train.num_generations=2", "train.eval_every=0",
                     f"train.output_dir={tmp_path / 'run'}"]) == 0
        judged = [b["messages"][-1]["content"] for b in server.requests]
    row = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert 0.25 <= row["reward_mean"] <= 0.75 and "reward_rim_judges" in row
    # the accuracy judge saw each item's reference answer (answers -> reference): the question's true sum
    import re

    accuracy = [j for j in judged if "as the accuracy judge" in j]
    assert accuracy
    for j in accuracy:
        a, b = map(int, re.findall(r"\d+", j.split("## Question\n", 1)[1].split("\n", 1)[0])[:2])
        assert f"## Reference answer\n{a + b}\n" in j


def test_dry_run_says_when_the_filters_leave_nothing(tmp_path, traces):
    report = json.loads(_atlas(["train", str(CONFIGS / "sft.yaml"), "--dry-run", f"traces={traces}",
                                "min_reward=0.999"], tmp_path))
    assert report["data"]["train_examples"] == 0 and report["sample_prompt"] is None
    assert "the train split is empty (0 examples)" in report["notes"]
    assert report["data"]["sessions"]["excluded"]["reward:below_min"] >= 1


def test_dry_run_shows_what_a_trajectory_dataset_trains(tmp_path):
    """SFT's default data from traces is the agent's transcripts: the dry run reports them (turns, tool calls,
    tools, unreadable ones by reason), the schemas inferred, the first example's text and its trained spans."""
    from tests.data.records import make_record
    from tests.data.test_transcripts import SEVERAL, UNREADABLE

    records = [make_record(1, "Price the order.", traces=[SEVERAL]),
               make_record(2, "Broken.", traces=[UNREADABLE["tool_without_call"]])]
    source = write_jsonl(tmp_path / "agent.jsonl", records)
    report = json.loads(_atlas(["train", str(tool_recipe(tmp_path)), "--dry-run", f"traces={source}",
                                "min_reward=null", "status=null", "eval_fraction=0"], tmp_path))
    data = report["data"]
    assert data["format"] == "trajectory" and data["examples"]["answer_form:unreadable:tool_without_call"] == 1
    assert data["tool_schemas"]["source"] == "inferred from the calls"
    assert [t["function"]["name"] for t in data["tool_schemas"]["tools"]] == ["lookup", "convert"]
    assert data["transcripts"]["tool_names"] == {"lookup": 1, "convert": 1}
    assert data["transcripts"]["unreadable_transcripts"] == {"tool_without_call": 1}
    assert report["sample_trained_spans"] == [
        '<tool_call>{"name": "lookup", "arguments": {"sku": "A-1"}}</tool_call><tool_call>{"name": "convert", '
        '"arguments": {"amount": 12.5, "to": "EUR"}}</tool_call><|im_end|>', "The order costs 11.40 EUR.<|im_end|>"]
    assert "Tools: lookup(sku) convert(amount, to)" in report["sample_example"]


def test_a_grpo_recipe_with_tools_trains_and_evaluates_through_them(tmp_path, taught_agent):
    """tools as file.py:function entries (relative to the recipe), the environment as module:Class (a module
    beside the recipe), prompts from a trace file; the dry run shows the tools and the prompt with them; a
    step runs the tool loop; `atlas eval` evaluates through the same tools and the environment's reward;
    the other recipes refuse tools."""
    helper = ROOT / "tests" / "agent.py"
    (tmp_path / "env.py").write_text(helper.read_text())  # a user's file beside the recipe
    records = [make_record(i, e.prompt[0]["content"], final_answer=e.reference)
               for i, e in enumerate(agent.problems(12), start=1)]
    sessions = write_jsonl(tmp_path / "traces.jsonl", records)
    recipe = tmp_path / "agent.yaml"
    recipe.write_text(f"""recipe: grpo
model: {taught_agent}
data: {{source: {sessions}, eval_fraction: 0.5}}
reward: rule
tools: env.py:add, env.py:multiply
environment: env:Calculator
train: {{output_dir: {tmp_path / 'run'}, max_steps: 1, prompts_per_step: 2, num_generations: 2,
        max_new_tokens: 128, micro_batch_size: 4, tool_timeout_s: 0.2, max_turns: 2, eval_every: 0}}
""")
    report = json.loads(_atlas(["train", str(recipe), "--dry-run"], tmp_path))
    assert any("both define ['add', 'multiply']" in note for note in report["notes"])  # a clash of names, said
    recipe.write_text(recipe.read_text().replace("tools: env.py:add, env.py:multiply\n", ""))
    report = json.loads(_atlas(["train", str(recipe), "--dry-run"], tmp_path))
    assert report["tools"] == {"names": ["add", "multiply", "power", "subtract"], "call_format": "hermes",
                               "environment_reward": "Calculator"}
    assert "Tools: add(a, b) multiply(a, b) power(base, exponent) subtract(a, b)" in report["sample_prompt"]
    _atlas(["train", str(recipe)], tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "reward_Calculator" in rows[0] and rows[0]["turns_mean"] > 1
    evaluation = json.loads(_atlas(["eval", str(tmp_path / "run" / "hf"), "--config", str(recipe), "--json"],
                                   tmp_path))
    assert evaluation["n"] >= 3 and evaluation["turns_mean"] == 2.0 and evaluation["tool_calls_mean"] == 1.0
    # answer_match (0 or 1: the tiny agent's numbers are mostly wrong) + get_reward (greedy calls multiply: 1)
    assert 1.0 <= evaluation["reward_mean"] <= 2.0
    sft = tmp_path / "sft.yaml"
    sft.write_text("recipe: sft\ntools: env.py:multiply\n")
    assert main(["train", str(sft), "--dry-run"]) == 2


def test_sft_and_gkd_train_the_embedded_agent_on_its_recorded_transcripts(tmp_path):
    """The agent task's sessions as the runtime records them (tests/data/records.shop_records: the `price`
    call in the runtime's tool_calls= form): `atlas train configs/sft.yaml traces=...` trains the embedded
    agent on its calls and answers (rendered by its own template, the schema inferred from the calls), and
    GKD distils per assistant turn on the same transcripts; both end in a checkpoint that answers through
    the tool."""
    traces = write_jsonl(tmp_path / "shop.jsonl", shop_records(40))
    common = [f"traces={traces}", "model=embedded:agent", "eval_fraction=0.2"]
    report = json.loads(_atlas(["train", str(CONFIGS / "sft.yaml"), *common, "--dry-run"], tmp_path))
    assert report["data"]["tool_schemas"]["source"] == "inferred from the calls"
    assert report["data"]["transcripts"]["tool_names"] == {"price": 40}
    call, answer = report["sample_trained_spans"]
    assert call.startswith('<tool_call>{"name": "price", "arguments": {"item": "')
    assert answer.startswith("The answer is")
    assert "Tools: price(item)" in report["sample_example"]
    _atlas(["train", str(CONFIGS / "sft.yaml"), *common, "max_steps=4", "batch_size=8", "micro_batch_size=8",
            "eval_every=4", "eval_max_new_tokens=48", f"output_dir={tmp_path / 'sft'}"], tmp_path)
    _atlas(["train", str(CONFIGS / "gkd.yaml"), *common, "teacher=embedded:agent", "max_steps=2", "batch_size=4",
            "micro_batch_size=4", "max_new_tokens=48", "eval_every=0", f"output_dir={tmp_path / 'gkd'}"], tmp_path)
    for run in ("sft", "gkd"):
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert rows and all(math.isfinite(r.get("loss", 0.0)) for r in rows)
        tok = am.Tokenizer.from_pretrained(tmp_path / run / "hf")
        assert tok.tool_call_format == "hermes"  # the export keeps the agent's template
    sft_rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert sft_rows[-1]["eval_success_rate"] >= 0  # evaluated greedily on the held-out sessions

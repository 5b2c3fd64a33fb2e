"""GRPO through a tool on the embedded agent (or your model, tools and traces): an agent learns to use its tool.

    python examples/agent.py                                  # CPU, 2 cores: about three minutes
    torchrun --nproc_per_node=2 examples/agent.py             # the same run on 2 processes (FSDP2)
    python examples/agent.py max_steps=60 eval_every=30       # key=value: the trainer's config (GRPOConfig)
    python examples/agent.py --model PATH --traces traces.jsonl --tools my_tools:search,my_tools:fetch
    python examples/agent.py --environment atlas.embedded.shop:Shop tools=null   # the task as a TRL environment

The settings are configs/agent.yaml's (`atlas train configs/agent.yaml` runs the same recipe): the
embedded agent student (atlas.embedded.model_path("agent")) is asked items' prices, which only its
`price` tool knows (atlas.embedded.shop); it knows how to call the tool and mostly answers from memory
instead. Each trajectory runs turn by turn through the tool (atlas.train.agent), the exact rule reward
pays right prices, and the held-out evaluation runs the same tool loop greedily. `train` below is the
whole run in the API's own calls; the last lines report the reward over the first and last 10% of the
steps, the held-out success, tool calls per rollout and tool errors by reason before and after, and
where the HF checkpoint is.
"""

import sys

from atlas.cli import run_example
from atlas.recipes import agent_tools, load_data, load_model, reward_fns
from atlas.rl import GRPO


def train(recipe):
    train_examples, eval_examples, _ = load_data(recipe)  # the shop's questions, or your traces' tasks
    model, tokenizer = load_model(recipe, recipe.model)  # fp32 master weights; sharded under torchrun
    tools = agent_tools(recipe)  # {"tools": [price]} (or an environment_factory): GRPO's keywords
    return GRPO(model, tokenizer, reward_fns(recipe), recipe.train, **tools).train(train_examples, eval_examples)


FLAGS = {"--model": "model", "--traces": "data.source", "--tools": "tools", "--environment": "environment",
         "--reward": "reward", "--output-dir": "train.output_dir"}

if __name__ == "__main__":
    sys.exit(run_example("agent", train, FLAGS))

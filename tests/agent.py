"""A tiny agent for the tool-rollout tests: the embedded student taught, in a few SFT steps on
demonstrations, to answer "Compute a * b." by making one tool call in Hermes format (tests/tiny.
TOOLS_TEMPLATE), chosen uniformly among six that exercise every outcome of a call:

    multiply(a, b)        returns a * b                          (the tool works)
    add(a, b)             raises                                 -> exception
    subtract(a, b)        sleeps SLEEP_S                         -> timeout (tool_timeout_s < SLEEP_S)
    power(a, b)           power's arguments are base, exponent   -> bad_arguments
    divide(a, b)          not offered                            -> unknown_tool
    a call that is not JSON                                      -> unparseable

then stating the result ("The answer is N.") or that it could not ("I could not compute it."). Sampling
at temperature 1 therefore meets every kind of call in a few dozen trajectories, and only one in six
calls works: GRPO, rewarded for a call that worked, learns to choose multiply.

`taught(directory)` trains it once per directory (about 25 s on 2 cores) and saves it with its tokenizer.
The tiny model learns the calls' shape and the choice, not to copy numbers: its arguments and answers
are mostly wrong, which no test needs. `TOOLS` is in the order an environment's methods are listed
(alphabetical), so `Calculator`'s prompt is the functions' prompt.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from atlas.data.datasets import Example
from atlas.train.tools import function_schema

SLEEP_S = 3.0
CALLS = ("multiply", "add", "subtract", "power", "divide", "not_json")
ERROR_OF = {"add": "exception", "subtract": "timeout", "power": "bad_arguments", "divide": "unknown_tool",
            "not_json": "unparseable"}


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first term.
        b: The second term.
    """
    raise ArithmeticError("add is out of order")


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def power(base: int, exponent: int) -> int:
    """Raise an integer to a power.

    Args:
        base: The base.
        exponent: The exponent.
    """
    return base ** exponent


def subtract(a: int, b: int) -> int:
    """Subtract two integers.

    Args:
        a: The minuend.
        b: The subtrahend.
    """
    time.sleep(SLEEP_S)
    return a - b


TOOLS = [add, multiply, power, subtract]
SCHEMAS = [function_schema(fn) for fn in TOOLS]


class Calculator:
    """The same tools as a TRL-style environment: `reset` sees the example's fields, the tools are methods,
    `get_reward` is 1 when a call returned a value; `_log` and the reserved names are not tools."""

    def reset(self, **fields) -> str | None:
        self.fields, self.calls, self.worked = fields, [], 0
        return None

    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Args:
            a: The first term.
            b: The second term.
        """
        self._log("add", a, b)
        raise ArithmeticError("add is out of order")

    def multiply(self, a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        self._log("multiply", a, b)
        self.worked += 1
        return a * b

    def power(self, base: int, exponent: int) -> int:
        """Raise an integer to a power.

        Args:
            base: The base.
            exponent: The exponent.
        """
        self._log("power", base, exponent)
        return base ** exponent

    def subtract(self, a: int, b: int) -> int:
        """Subtract two integers.

        Args:
            a: The minuend.
            b: The subtrahend.
        """
        self._log("subtract", a, b)
        time.sleep(SLEEP_S)
        return a - b

    def get_reward(self) -> float:
        return float(self.worked > 0)

    def _log(self, *call) -> None:
        self.calls.append(call)


def problems(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    pairs = [(rng.randint(2, 9), rng.randint(2, 9)) for _ in range(n)]
    return [Example(prompt=[{"role": "user", "content": f"Compute {a} * {b}."}], reference=str(a * b))
            for a, b in pairs]


def tool_worked(prompts, completions, trajectories, **_) -> list[float]:
    """1 when a tool returned a value (a tool message that is not an error)."""
    return [float(any(m["role"] == "tool" and not m["content"].startswith('{"error"') for m in t))
            for t in trajectories]


def demonstration(a: int, b: int, choice: str) -> Example:
    """What the agent is taught for one problem: the call, the tool's result as atlas writes it, the answer."""
    user = {"role": "user", "content": f"Compute {a} * {b}."}
    if choice == "not_json":
        call = {"role": "assistant", "content": f'<tool_call>{{"name": "multiply", "arguments": {{a: {a}, b: {b}}}}}'
                                                '</tool_call>'}
        name = "invalid_tool_call"
    else:
        call = {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": choice, "arguments": {"a": a, "b": b}}}]}
        name = choice
    worked = choice == "multiply"
    result = {"role": "tool", "name": name, "content": str(a * b) if worked else json.dumps({"error": "failed"})}
    answer = f"The answer is {a * b}." if worked else "I could not compute it."
    messages = [user, call, result, {"role": "assistant", "content": answer}]
    return Example(prompt=[user], reference=str(a * b), completion=answer, messages=messages, tools=SCHEMAS)


def taught(directory: Path, steps: int = 160) -> Path:
    """The taught agent saved under `directory` (trained on the first call, read back after)."""
    import atlas.model as am
    from atlas.checkpoint import export_hf
    from atlas.distill import SFT, SFTConfig
    from atlas.embedded import model_path
    from tests.tiny import TOOLS_TEMPLATE

    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    rng = random.Random(0)
    data = [demonstration(rng.randint(2, 9), rng.randint(2, 9), CALLS[i % len(CALLS)]) for i in range(384)]
    tokenizer = am.Tokenizer.from_pretrained(model_path("student"), chat_template=TOOLS_TEMPLATE)
    model = am.from_pretrained(model_path("student"))
    SFT(model, tokenizer, SFTConfig(output_dir=str(directory.parent / f"{directory.name}.sft"), max_steps=steps,
                                    lr=3e-3, batch_size=16, micro_batch_size=16, warmup_ratio=0.0,
                                    save_every=0)).train(data)
    export_hf(model, directory, tokenizer)
    return directory

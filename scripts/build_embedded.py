"""Build the embedded default's tokenizer and checkpoints, deterministically, with atlas's own SFT.

    python scripts/build_embedded.py                  # rewrites atlas/embedded/models/ (about 15 minutes on 2 cores)
    python scripts/build_embedded.py --only teaching  # only the teaching task's tokenizer and models
    python scripts/build_embedded.py --only agent     # only the agent's tokenizer and model (about 7 minutes)

Not part of the package: atlas ships what this wrote (atlas/embedded/models/), and the tasks the
checkpoints were trained on (atlas/embedded/task.py); this script is how they were made.

What it makes (all Qwen2-architecture, tied embeddings, fp32 safetensors, a few MB in all):
- the tokenizer: byte-level BPE trained on the task's text (`corpus`) with one token per digit
  (`Digits(individual_digits=True)` before ByteLevel: measured to be what makes addition learnable at
  this size), ChatML specials and a ChatML chat template whose assistant turns sit in `{% generation %}`
  blocks;
- `teacher`: hidden 128, 4 layers, trained until it is strong (the GKD teacher, the ceiling);
- `student`: hidden 96, 3 layers, trained only into the learning transition: the SFT run stops at the
  first evaluation whose held-out greedy success rate reaches STUDENT_TARGET (checked every 5 steps:
  measured, this student goes from 12% to 47% within 25 steps), which lands it at 10-40%: weak but not
  hopeless, where GRPO gets a signal (the share of groups of 8 with mixed rewards is
  1 - p^8 - (1 - p)^8: 57% at p = 0.1, 94% at 0.3). It is GRPO's start point and GKD's student, so the
  GKD-vs-GRPO comparison starts both from one model.
- the teaching task's tokenizer (trained on teaching_data.corpus()) and two models for examples/teacher.py:
  `teaching-student` (hidden 96, 3 layers: the plain, diagnostic and taught prompts, stopped inside the
  transition on the plain questions like the student) and `teaching-teacher` (hidden 128, 4 layers,
  TEACHING_TEACHER_STEPS of SFT on teaching that is useful in 30% of its examples); see teaching_data.py.
- the agent's tokenizer (trained on agent_data.corpus(): the shop task's conversations with its tool, one
  token per digit and per capital letter, so an item's code and a price are copied token by token) and
  `agent` (hidden 128, 4 layers, AGENT_STEPS of SFT on agent_data.sft_examples(): the `price` tool's
  demonstrations for some questions, answers from memory for the others) for examples/agent.py. Its
  chat template renders the tools' signatures and Hermes `<tool_call>` blocks, the assistant's turns in
  `{% generation %}` blocks. Measured while choosing AGENT_STEPS: greedy held-out success through the
  tool is 0% up to ~400 steps (the call's format is right from ~75, the copying comes later) and a third
  from ~500 on (the phrasing that calls the tool); 1500 steps make the copies reliable.
Fixed seeds make a rebuild on the same machine reproduce the files; another CPU may land elsewhere
inside the transition (floating-point reductions differ), which is why the results are committed and
the tests use the committed files. `models/build.json` records each model's steps, held-out figures and
evaluation history from the build that made the committed files.

Left out: a GPU build (nothing here needs one).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import agent_data
import teaching_data as teaching
import torch
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

import atlas.model as am
from atlas.distill import SFT, SFTConfig
from atlas.embedded import MODELS, shop, task
from atlas.reward import answer_match
from atlas.train.agent import Toolbox
from atlas.train.data import DataOrder
from atlas.train.evaluate import greedy_eval

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# the agent's: the tools' signatures in a system turn, Hermes <tool_call> blocks, tool results in their own turns
AGENT_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\nTools:' }}"
    "{%- for tool in tools %}"
    "{{- ' ' + tool.function.name + '(' + (tool.function.parameters.properties | list | join(', ')) + ')' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message.content or '' }}"
    "{%- for call in message.tool_calls or [] %}"
    "{{- '<tool_call>{\"name\": \"' + call.function.name + '\", \"arguments\": ' + (call.function.arguments | tojson)"
    " + '}</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
VOCAB = 384
TEACHER = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2)
STUDENT = dict(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2)
TEACHER_STEPS = 1500
STUDENT_MAX_STEPS = 1500
STUDENT_TARGET = 0.2
TEACHING_TEACHER_STEPS = 600
AGENT_STEPS = 1500
EVAL_EVERY = {"teacher": 100, "student": 5, "teaching-student": 5, "teaching-teacher": 100, "agent": 100}
SFT_SETTINGS = dict(lr=1e-3, batch_size=64, micro_batch_size=64, warmup_ratio=0.03, weight_decay=0.0,
                    max_grad_norm=1.0, seed=0)
EVAL_QUESTIONS = 200  # held-out questions evaluated while building (all 828 for the final figures)


def build_tokenizer(out_dir: Path, corpus: list[str], template: str = CHAT_TEMPLATE,
                    single_letters: bool = False) -> am.Tokenizer:
    tok = HFTokenizer(models.BPE())
    letters = [pre_tokenizers.Split(Regex("[A-Z]"), "isolated")] if single_letters else []
    tok.pre_tokenizer = pre_tokenizers.Sequence([*letters, pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(SPECIALS), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens(SPECIALS)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, "bos_token": None,
              "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": template}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return am.Tokenizer.from_pretrained(out_dir)


def corpus() -> list[str]:
    """Text the embedded tokenizer is trained on: every phrasing and answer of every pair."""
    texts = []
    for a in range(task.LOW, task.HIGH + 1):
        for b in range(task.LOW, task.HIGH + 1):
            texts += [p.format(a=a, b=b) for p in task.PHRASINGS] + [task.completion(a, b)]
    return texts


def fresh_model(tokenizer: am.Tokenizer, shape: dict, seed: int) -> am.Transformer:
    vocab = -(-tokenizer.vocab_size // 64) * 64  # padded past the tokenizer, as real checkpoints are
    config = am.ModelConfig(model_type="qwen2", vocab_size=vocab, head_dim=shape["hidden_size"] //
                            shape["num_attention_heads"], max_position_embeddings=512, rms_norm_eps=1e-6,
                            rope_theta=10000.0, tie_word_embeddings=True, eos_token_id=[tokenizer.eos_token_id],
                            pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(seed)
    return am.Transformer(config)


def accuracy(model, tokenizer, examples, n: int | None = None, max_new_tokens: int = 12, reward=answer_match) -> float:
    """Greedy held-out success rate on (the first n of) `examples`."""
    return greedy_eval(model.eval(), tokenizer, examples[:n], reward, max_new_tokens=max_new_tokens)["success_rate"]


def taught(hint) -> list[dict]:
    """The held-out questions under the taught prompt with `hint(a, b)`."""
    from atlas.rl.teacher import TAUGHT_PROMPT

    return [{"prompt": TAUGHT_PROMPT.format(question=task.question(e.meta["a"], e.meta["b"]),
                                            teaching=hint(e.meta["a"], e.meta["b"])), "answers": e.reference}
            for e in task.examples("eval")]


def useful_teaching_rate(model, tokenizer, n: int | None = None) -> float:
    """Share of held-out teacher prompts whose greedy teaching is the useful, correct partial result."""
    from atlas.rl.teacher import TEACHER_PROMPT, teaching_of

    pairs = [(e.meta["a"], e.meta["b"]) for e in task.examples("eval")][:n]
    prompts = [{"prompt": TEACHER_PROMPT.format(question=task.question(a, b), diagnostic=teaching.DIAGNOSTIC),
                "answers": teaching.useful_hint(a, b)} for a, b in pairs]

    def exact(prompts_, completions, answers, **_):
        return [float(teaching_of(c) == a) for c, a in zip(completions, answers)]

    return accuracy(model, tokenizer, prompts, max_new_tokens=40, reward=exact)


def train(name: str, tokenizer, shape: dict, max_steps: int, stop_at: float | None, examples, score) -> dict:
    """SFT from a fresh init, driving `SFT.step` directly; `score(model)` (a held-out rate) every
    EVAL_EVERY[name] steps; with `stop_at`, stop at the first score at or above it."""
    model = fresh_model(tokenizer, shape, seed=1)
    trainer = SFT(model, tokenizer, SFTConfig(output_dir=f"results/embedded-build/{name}", max_steps=max_steps,
                                              **SFT_SETTINGS))
    data = trainer.prepare(examples)
    order = DataOrder(len(data), SFT_SETTINGS["seed"])
    t0, history, step = time.perf_counter(), [], 0
    while step < max_steps:
        trainer.step([data[i] for i in order.take(trainer.batch_size)])
        step += 1
        if step % EVAL_EVERY[name] and step != max_steps:
            continue
        rate = score(model)
        model.train()
        history.append({"step": step, "held_out": rate})
        print(f"{name}: step {step} held-out {rate:.1%} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if stop_at is not None and rate >= stop_at:
            break
    return {"model": model.eval(), "history": history, "steps": step}


def build_addition(out: Path) -> dict:
    tokenizer = build_tokenizer(out / "tokenizer", corpus())
    results = {}
    plain = task.examples("eval")
    for name, shape, steps, stop in (("teacher", TEACHER, TEACHER_STEPS, None),
                                     ("student", STUDENT, STUDENT_MAX_STEPS, STUDENT_TARGET)):
        result = train(name, tokenizer, shape, steps, stop, task.examples("train"),
                       lambda m: accuracy(m, tokenizer, plain, EVAL_QUESTIONS))
        final = greedy_eval(result["model"], tokenizer, plain, answer_match, max_new_tokens=12)
        am.save_pretrained(result["model"], out / name, tokenizer=tokenizer)
        results[name] = {"sft_steps": result["steps"], "held_out": final, "history": result["history"]}
        print(f"{name}: {result['steps']} steps, held-out {final['success_rate']:.1%} over {final['n']}", flush=True)
    return results


def build_teaching(out: Path) -> dict:
    tokenizer = build_tokenizer(out / "teaching-tokenizer", teaching.corpus())
    plain = task.examples("eval")
    student = train("teaching-student", tokenizer, STUDENT, STUDENT_MAX_STEPS, STUDENT_TARGET,
                    teaching.student_examples(), lambda m: accuracy(m, tokenizer, plain, EVAL_QUESTIONS))
    teacher = train("teaching-teacher", tokenizer, TEACHER, TEACHING_TEACHER_STEPS, None, teaching.teacher_examples(),
                    lambda m: useful_teaching_rate(m, tokenizer, EVAL_QUESTIONS))
    s = student["model"]
    results = {
        "teaching-student": {"sft_steps": student["steps"], "history": student["history"], "held_out": {
            "alone": accuracy(s, tokenizer, plain), "useful_hint": accuracy(s, tokenizer, taught(teaching.useful_hint)),
            "useless_hint": accuracy(s, tokenizer, taught(lambda a, b: teaching.USELESS))}},
        "teaching-teacher": {"sft_steps": teacher["steps"], "history": teacher["history"],
                             "held_out": {"useful_teaching": useful_teaching_rate(teacher["model"], tokenizer)}},
    }
    for name, result in (("teaching-student", student), ("teaching-teacher", teacher)):
        am.save_pretrained(result["model"], out / name, tokenizer=tokenizer)
        print(f"{name}: {results[name]['held_out']}", flush=True)
    return results


def agent_success(model, tokenizer, n: int | None = None) -> dict:
    """Greedy held-out results through the `price` tool (atlas.train.evaluate with a Toolbox)."""
    toolbox = Toolbox(tokenizer, [shop.price], max_turns=3)
    return greedy_eval(model.eval(), tokenizer, shop.examples("eval")[:n], answer_match, max_new_tokens=48,
                       toolbox=toolbox)


def build_agent(out: Path) -> dict:
    renderer = am.Tokenizer.from_pretrained(out / "tokenizer", chat_template=AGENT_TEMPLATE)  # text only

    def render(messages, tools):
        return renderer.apply_chat_template(messages, add_generation_prompt=False, tools=tools)

    tokenizer = build_tokenizer(out / "agent-tokenizer", agent_data.corpus(render), AGENT_TEMPLATE,
                                single_letters=True)
    result = train("agent", tokenizer, TEACHER, AGENT_STEPS, None, agent_data.sft_examples(),
                   lambda m: agent_success(m, tokenizer, EVAL_QUESTIONS)["success_rate"])
    am.save_pretrained(result["model"], out / "agent", tokenizer=tokenizer)
    final = agent_success(result["model"], tokenizer)
    print(f"agent: {result['steps']} steps, held-out {final}", flush=True)
    return {"agent": {"sft_steps": result["steps"], "history": result["history"], "held_out": final,
                      "no_tool_ceiling": shop.no_tool_ceiling()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=MODELS)
    ap.add_argument("--only", choices=["addition", "teaching", "agent"], help="rebuild one part (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    record = args.out / "build.json"
    results = json.loads(record.read_text()) if record.exists() else {}
    if args.only in (None, "addition"):
        results.update(build_addition(args.out))
    if args.only in (None, "teaching"):
        results.update(build_teaching(args.out))
    if args.only in (None, "agent"):
        results.update(build_agent(args.out))
    record.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

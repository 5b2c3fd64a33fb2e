"""Build the embedded default's tokenizer and checkpoints, deterministically, with atlas's own SFT.

    python -m atlas.embedded.build            # rewrites atlas/embedded/models/ (about 10 minutes on 2 cores)

What it makes (all Qwen2-architecture, tied embeddings, fp32 safetensors, a few MB in all):
- the tokenizer: byte-level BPE trained on the task's text (task.corpus) with one token per digit
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

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

import atlas.model as am
from atlas.distill import SFT, SFTConfig
from atlas.embedded import task
from atlas.train.data import DataOrder
from atlas.train.evaluate import greedy_eval

MODELS = Path(__file__).resolve().parent / "models"
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
VOCAB = 384
TEACHER = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2)
STUDENT = dict(hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
               num_key_value_heads=2)
TEACHER_STEPS = 1500
STUDENT_MAX_STEPS = 1500
STUDENT_TARGET = 0.2
EVAL_EVERY = {"teacher": 100, "student": 5}
SFT_SETTINGS = dict(lr=1e-3, batch_size=64, micro_batch_size=64, warmup_ratio=0.03, weight_decay=0.0,
                    max_grad_norm=1.0, seed=0)
EVAL_QUESTIONS = 200  # held-out questions evaluated while building (all 828 for the final figures)


def build_tokenizer(out_dir: Path) -> am.Tokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - len(SPECIALS), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(task.corpus(), trainer)
    tok.add_special_tokens(SPECIALS)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512, "bos_token": None,
              "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return am.Tokenizer.from_pretrained(out_dir)


def fresh_model(tokenizer: am.Tokenizer, shape: dict, seed: int) -> am.Transformer:
    vocab = -(-tokenizer.vocab_size // 64) * 64  # padded past the tokenizer, as real checkpoints are
    config = am.ModelConfig(model_type="qwen2", vocab_size=vocab, head_dim=shape["hidden_size"] //
                            shape["num_attention_heads"], max_position_embeddings=512, rms_norm_eps=1e-6,
                            rope_theta=10000.0, tie_word_embeddings=True, eos_token_id=[tokenizer.eos_token_id],
                            pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(seed)
    return am.Transformer(config)


def held_out(model, tokenizer, n: int | None = None) -> dict[str, float]:
    questions = task.examples("eval")[:n]
    return greedy_eval(model.eval(), tokenizer, questions, task.reward, max_new_tokens=12)


def train(name: str, tokenizer, shape: dict, max_steps: int, stop_at: float | None) -> dict:
    """SFT from a fresh init, driving `SFT.step` directly; with `stop_at`, stop at the first evaluation
    (every EVAL_EVERY[name] steps, on EVAL_QUESTIONS held-out questions) at or above it."""
    model = fresh_model(tokenizer, shape, seed=1)
    trainer = SFT(model, tokenizer, SFTConfig(output_dir=f"results/embedded-build/{name}", max_steps=max_steps,
                                              **SFT_SETTINGS))
    data = trainer.prepare(task.examples("train"))
    order = DataOrder(len(data), SFT_SETTINGS["seed"])
    t0, history, step = time.perf_counter(), [], 0
    while step < max_steps:
        trainer.step([data[i] for i in order.take(trainer.batch_size)])
        step += 1
        if step % EVAL_EVERY[name] and step != max_steps:
            continue
        score = held_out(model, tokenizer, EVAL_QUESTIONS)
        model.train()
        history.append({"step": step, **score})
        print(f"{name}: step {step} held-out {score['success_rate']:.1%} ({time.perf_counter() - t0:.0f} s)",
              flush=True)
        if stop_at is not None and score["success_rate"] >= stop_at:
            break
    return {"model": model, "history": history, "steps": step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=MODELS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    tokenizer = build_tokenizer(args.out / "tokenizer")
    results = {}
    for name, shape, steps, stop in (("teacher", TEACHER, TEACHER_STEPS, None),
                                     ("student", STUDENT, STUDENT_MAX_STEPS, STUDENT_TARGET)):
        result = train(name, tokenizer, shape, steps, stop)
        final = held_out(result["model"], tokenizer)
        am.save_pretrained(result["model"], args.out / name, tokenizer=tokenizer)
        results[name] = {"sft_steps": result["steps"], "held_out": final, "history": result["history"]}
        print(f"{name}: {result['steps']} steps, held-out {final['success_rate']:.1%} over {final['n']}", flush=True)
    (args.out / "build.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

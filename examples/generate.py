"""Generate from chat prompts with atlas's native sampler, on a real checkpoint or the embedded default.

    python examples/generate.py                                   # embedded default (no download)
    python examples/generate.py --model Qwen/Qwen2.5-0.5B-Instruct --device cuda --dtype bfloat16

The embedded default is a small Qwen2-shaped model with random weights and a byte-level BPE tokenizer
trained here on a few paragraphs, so it runs anywhere without a network. Its text is noise; what it shows
is the pipeline every atlas recipe uses: tokenizer + chat template -> prompt ids -> Sampler.generate on
the model object itself (n samples per prompt, prompt-major) -> decoded completions with the per-token
log-probabilities the trainer would recompute. Its checkpoint is written in Hugging Face format (config.json,
safetensors, tokenizer files) and reloaded with `from_pretrained`, as a trained checkpoint would be.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

import atlas.model as am
from atlas.sampler import Sampler, SamplingParams

CORPUS = """\
An agent receives a task, plans its steps, calls tools and writes a final answer. A teacher model
reviews each step, validates the result and, when the student is stuck, gives guidance. Every session is
scored by judges and stored, so the best ones can teach the next checkpoint. Reinforcement learning
samples several answers per task and moves the model toward the ones that scored above their group's
mean. Distillation instead matches the student's next-token distribution to a trusted teacher's, on the
student's own samples. Both need fast sampling, exact log-probabilities and memory-frugal losses.
"""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DEFAULT_PROMPTS = ["What does the teacher do when the student is stuck?",
                   "Explain group-relative advantages in one sentence."]


def build_default(out_dir: Path) -> Path:
    """Write the embedded default checkpoint (random Qwen2-shaped model + trained BPE tokenizer)."""
    hf_tok = HFTokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf_tok.train_from_iterator(CORPUS.splitlines() * 4, trainer)
    tok = am.Tokenizer(hf_tok, {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}, chat_template="chatml")
    config = am.ModelConfig(
        model_type="qwen2", vocab_size=1024, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
        rope_theta=1000000.0, attention_bias=True, tie_word_embeddings=True,
        eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    return am.save_pretrained(am.Transformer(config), out_dir, tokenizer=tok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint directory or hub id (default: the embedded default)")
    ap.add_argument("--prompt", action="append", help="a user message (repeatable)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--n", type=int, default=2, help="samples per prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the checkpoint's")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or build_default(Path(tmp) / "atlas-default")
        model = am.from_pretrained(path, dtype=getattr(torch, args.dtype) if args.dtype else None,
                                   device=args.device)
        tok = am.Tokenizer.from_pretrained(path)
    c = model.config
    print(f"model: {args.model or 'embedded default (random weights: its text is noise)'} | {c.model_type}, "
          f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, vocab {c.vocab_size}, {model.dtype}, {args.device}")

    prompts = args.prompt or DEFAULT_PROMPTS
    prompt_ids = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True) for p in prompts]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                            n=args.n, seed=args.seed)
    start = time.perf_counter()
    outs = Sampler(model, tokenizer=tok).generate(prompt_ids, params)
    seconds = time.perf_counter() - start
    for out in outs:
        text = tok.decode(out.token_ids, skip_special_tokens=True)
        mean_lp = sum(out.logprobs) / len(out.logprobs)
        print(f"\n[prompt {out.prompt_index}] {prompts[out.prompt_index]}\n  -> {text!r}\n"
              f"     {len(out.token_ids)} tokens, finish={out.finish_reason}, mean logprob {mean_lp:.3f}")
    tokens = sum(len(o.token_ids) for o in outs)
    print(f"\n{tokens} tokens in {seconds:.2f} s ({tokens / seconds:,.0f} tokens/s)")


if __name__ == "__main__":
    main()

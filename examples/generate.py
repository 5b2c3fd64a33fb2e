"""Generate from chat prompts with atlas's native sampler, on a real checkpoint or the embedded default.

    python examples/generate.py                                   # the embedded teacher (no download)
    python examples/generate.py --model embedded:student          # the weak student: compare its answers
    python examples/generate.py --model Qwen/Qwen2.5-0.5B-Instruct --device cuda --dtype bfloat16

The embedded checkpoints (atlas/embedded) are tiny Qwen2-architecture models trained on two-digit
addition asked in chat form; they run anywhere without a network. What the script shows is the pipeline
every atlas recipe uses: tokenizer + chat template -> prompt ids -> Sampler.generate on the model object
itself (n samples per prompt, prompt-major) -> decoded completions with the per-token log-probabilities
the trainer would recompute.
"""

from __future__ import annotations

import argparse
import time

import torch

import atlas.model as am
from atlas.recipes import resolve_path
from atlas.sampler import Sampler, SamplingParams

DEFAULT_PROMPTS = ["What is 47 + 38?", "Add 19 and 64.", "Compute 90 + 11."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:teacher",
                    help="checkpoint directory, hub id, or embedded:<name> (default: embedded:teacher)")
    ap.add_argument("--prompt", action="append", help="a user message (repeatable)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--n", type=int, default=2, help="samples per prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: the checkpoint's")
    args = ap.parse_args()

    path = resolve_path(args.model, ".")
    model = am.from_pretrained(path, dtype=getattr(torch, args.dtype) if args.dtype else None, device=args.device)
    tok = am.Tokenizer.from_pretrained(path)
    c = model.config
    print(f"model: {args.model} | {c.model_type}, "
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

"""Sampler vs trainer log-probabilities on the same sequences: the gap a GRPO ratio sees at mu = 1.

    python bench/logprob_gap.py                                  # CPU, fp32 and bf16, T = 1 and 0.7
    python bench/logprob_gap.py --device cuda --preset qwen2.5-0.5b --batch 64 --new 256

The sampler scores each token it draws from its KV-cached decode step's logits; the trainer recomputes
the same tokens with one full forward and `model.token_logprobs` (the chunked LM-head kernel). Both
compute log softmax(fp32(logits) / T)[token]; what differs is the logits, cached decode vs full forward.
Reported per completion token: mean and max |sampler - trainer| (nats), and the mean entropy of the
sampled distributions, since near-uniform random-init distributions hide gaps that peaked ones show:
`--head-scale` multiplies the LM head to make them peakier.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from qwen2_pair import PRESETS, qwen2_pair

from atlas.sampler import Sampler, SamplingParams

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # see bench/sampler.py: bench/kernels.py must not shadow the `kernels` package


def gaps(model, prompts, new, temperature, n):
    outs = Sampler(model).generate(prompts, SamplingParams(max_new_tokens=new, temperature=temperature, n=n,
                                                           seed=0, ignore_eos=True))
    diffs, entropies = [], []
    for o in outs:
        prompt = prompts[o.prompt_index]
        ids = torch.tensor(prompt + o.token_ids, device=model.device)[None]
        with torch.no_grad():
            hidden = model(ids, return_hidden=True)[0, len(prompt) - 1:-1]
            lp, ent = model.token_logprobs(hidden, torch.tensor(o.token_ids, device=model.device), temperature,
                                           return_entropy=True)
        diffs.append((torch.tensor(o.logprobs) - lp.cpu()).abs())
        entropies.append(ent.cpu())
    d = torch.cat(diffs)
    return d.mean().item(), d.max().item(), torch.cat(entropies).mean().item(), d.numel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--head-scale", type=float, nargs="+", default=[1.0, 20.0])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    small = dict(num_hidden_layers=6, vocab_size=8192) if args.preset == "small" else {}
    _, base = qwen2_pair(args.preset, torch.float32, "cpu", **small)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(12, 65, (args.batch,), generator=g).tolist()
    prompts = [torch.randint(1, base.config.vocab_size, (k,), generator=g).tolist() for k in lengths]
    print(f"preset={args.preset} batch={args.batch} x n={args.n} new={args.new} device={args.device}")
    print(f"  {'head scale':>10} {'dtype':>9} {'T':>4} {'mean gap':>10} {'max gap':>10} {'entropy':>8} {'tokens':>7}")
    for scale in args.head_scale:
        for dtype in (torch.float32, torch.bfloat16):
            model = qwen2_pair(args.preset, torch.float32, "cpu", **small)[1]
            with torch.no_grad():
                model.lm_head.weight.mul_(scale)
            model = model.to(device=args.device, dtype=dtype)
            for temperature in (1.0, 0.7):
                mean, worst, ent, count = gaps(model, prompts, args.new, temperature, args.n)
                print(f"  {scale:10.0f} {str(dtype).removeprefix('torch.'):>9} {temperature:4.1f} {mean:10.2e} "
                      f"{worst:10.2e} {ent:8.2f} {count:7d}")


if __name__ == "__main__":
    main()

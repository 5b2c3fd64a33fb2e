"""Forward latency of atlas's Transformer vs transformers' on the same random weights.

    python bench/model_forward.py                       # CPU: hidden 512, 8 layers, vocab 32k, 4 x 256, fp32
    python bench/model_forward.py --preset qwen2.5-0.5b --device cuda --dtype bfloat16 --batch 8 --seq 1024

The two models are timed alternately (interleaved repeats) so drift on a noisy machine hits both alike;
the figure is the ratio of medians. Logits are checked to agree before timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from qwen2_pair import PRESETS, qwen2_pair

# This folder is sys.path[0] when a script here runs, and bench/kernels.py would then shadow the `kernels`
# package that transformers probes for (measured: it made torch.compile's decode step 2x slower here).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="small")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hf, ours = qwen2_pair(args.preset, getattr(torch, args.dtype), args.device)
    ids = torch.randint(0, hf.config.vocab_size, (args.batch, args.seq), device=args.device)

    def run(model, is_hf):
        with torch.inference_mode():
            out = model(ids).logits if is_hf else model(ids)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    diff = (run(hf, True).float() - run(ours, False).float()).abs().max().item()
    times = {"atlas": [], "transformers": []}
    for _ in range(args.repeats):
        for name, model, is_hf in (("atlas", ours, False), ("transformers", hf, True)):
            t0 = time.perf_counter()
            run(model, is_hf)
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = args.batch * args.seq
    print(f"preset={args.preset} batch={args.batch} seq={args.seq} device={args.device} dtype={args.dtype} "
          f"threads={args.threads} max|logit diff|={diff:.2e}")
    for k, v in med.items():
        print(f"  {k:13s} median {v * 1000:8.1f} ms  ({tokens / v:,.0f} tokens/s)")
    print(f"  transformers / atlas time ratio: {med['transformers'] / med['atlas']:.2f}x")


if __name__ == "__main__":
    main()

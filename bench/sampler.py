"""Generation throughput: atlas's Sampler vs transformers' `generate` on the same random weights.

    python bench/sampler.py                                   # CPU, the issue's shape (fp32, 2 threads)
    python bench/sampler.py --preset qwen2.5-0.5b --device cuda --dtype bfloat16 --batch 64 --new 256

Same prompts (ragged, left-padded for transformers), greedy, no early stop, so both produce exactly
batch x new tokens; the two are timed alternately and the ratio of median tokens/s is reported. Greedy
outputs are compared token for token (a mismatch is printed: it means a numerics difference, not a
speed one). On CPU it also reports the GEMM floor: the time one generate spends inside matrix
multiplies (profiler self time of aten::mm and aten::addmm), against half of transformers' time. On CUDA
it reports the memory-bandwidth bound: each decode step must read every weight once plus the live KV
cache, so tokens/s <= batch * HBM bandwidth / (weight bytes + mean KV bytes).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from qwen2_pair import PRESETS, qwen2_pair

from atlas.sampler import Sampler, SamplingParams

# This folder is sys.path[0] when a script here runs, and bench/kernels.py would then shadow the `kernels`
# package that transformers probes for (measured: it made torch.compile's decode step 2x slower here).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)


def hbm_bandwidth(device: str) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write counted)."""
    x = torch.empty(2**28, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 20 / (time.perf_counter() - t0)


def gemm_seconds(fn) -> float:
    """Seconds spent inside matrix multiplies during one call of `fn` (CPU profiler self time)."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm")) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="small")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--min-prompt", type=int, default=12)
    ap.add_argument("--max-prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=96)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    # the shape: 6 layers, vocab 8192 (the 0.5B preset keeps its own)
    small = dict(num_hidden_layers=6, vocab_size=8192) if args.preset == "small" else {}
    hf, model = qwen2_pair(args.preset, dtype, args.device, **small)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.min_prompt, args.max_prompt + 1, (args.batch,), generator=g).tolist()
    prompts = [torch.randint(1, hf.config.vocab_size, (n,), generator=g).tolist() for n in lengths]
    T = max(lengths)
    ids = torch.zeros(args.batch, T, dtype=torch.long)
    mask = torch.zeros(args.batch, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):], mask[i, T - len(p):] = torch.tensor(p), 1
    ids, mask = ids.to(args.device), mask.to(args.device)
    params = SamplingParams(max_new_tokens=args.new, temperature=0, ignore_eos=True)
    samplers = {"atlas": Sampler(model), "atlas compiled": Sampler(model, compile=True)}

    def run_atlas(name="atlas"):
        return [o.token_ids for o in samplers[name].generate(prompts, params)]

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=args.new, min_new_tokens=args.new,
                              do_sample=False, eos_token_id=None, pad_token_id=0)
        return out[:, T:].tolist()

    def timed(fn):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out

    _, ours = timed(run_atlas)  # warm-up, and the outputs to compare
    compile_s, compiled = timed(lambda: run_atlas("atlas compiled"))
    _, theirs = timed(run_hf)
    same = sum(a == b for a, b in zip(ours, theirs))
    same_compiled = sum(a == b for a, b in zip(ours, compiled))
    times = {"atlas": [], "atlas compiled": [], "transformers": []}
    for _ in range(args.repeats):
        times["atlas"].append(timed(run_atlas)[0])
        times["atlas compiled"].append(timed(lambda: run_atlas("atlas compiled"))[0])
        times["transformers"].append(timed(run_hf)[0])
    tokens = args.batch * args.new
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    print(f"preset={args.preset} batch={args.batch} prompts={args.min_prompt}-{args.max_prompt} new={args.new} "
          f"device={args.device} dtype={args.dtype} threads={args.threads}")
    print(f"  greedy outputs identical to transformers for {same}/{args.batch} rows, compiled vs eager "
          f"{same_compiled}/{args.batch}; first compiled call (compiles) {compile_s:.1f} s")
    for k, v in tps.items():
        print(f"  {k:15s} {v:10,.0f} tokens/s  (median of {args.repeats})")
    for k in ("atlas", "atlas compiled"):
        print(f"  {k} / transformers: {tps[k] / tps['transformers']:.2f}x")
    if not args.device.startswith("cuda"):
        # the floor: matmul time is the same GEMM calls for both (same shapes, same BLAS), so if atlas's GEMMs
        # alone take more than half of transformers' time, 2x is out of reach for any schedule around them
        gemm = {"atlas": gemm_seconds(run_atlas), "atlas compiled": gemm_seconds(lambda: run_atlas("atlas compiled")),
                "transformers": gemm_seconds(run_hf)}
        budget = statistics.median(times["transformers"]) / 2
        print("  GEMM time alone per generate (profiler, aten::mm + aten::addmm): " +
              ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in gemm.items()) +
              f"; 2x transformers needs a whole generate in {budget * 1e3:.0f} ms")
    if args.device.startswith("cuda"):
        c = model.config
        weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        mean_len = sum(lengths) / len(lengths) + args.new / 2
        kv_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * mean_len * args.batch * \
            torch.finfo(dtype).bits // 8
        bound = args.batch * hbm_bandwidth(args.device) / (weight_bytes + kv_bytes)
        print(f"  bandwidth bound {bound:,.0f} tokens/s: atlas at {tps['atlas'] / bound:.0%} of it")


if __name__ == "__main__":
    main()

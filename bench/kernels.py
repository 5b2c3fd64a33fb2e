"""Benchmark: peak working memory and time of linear_token_logprobs (forward + backward) vs the naive path.

Claim (issue 4): at Qwen2.5-0.5B's LM-head shapes (N = 4096 tokens, H = 896, V = 151,936) the chunked
`atlas.kernels.linear_token_logprobs` needs <= 10% of the naive path's working memory and is no slower.
Variants, each one forward + backward of sum(logprobs * g) with a random per-token upstream gradient g:
  naive     (hidden @ W.T).log_softmax(-1).gather(-1, targets)           eager torch
  compiled  the same function under torch.compile (timed after a warm-up call that compiles it)
  atlas     atlas.kernels.linear_token_logprobs(hidden, W, targets)      ('auto' backend)
Working memory = peak - (memory held before the step: inputs, parameters) - (the gradients the step
creates and every method must create: dW and dhidden), as docs/algorithms.md counts it.

CPU (default without CUDA), fp32: one subprocess per variant, run one after another, round-robin for
--rounds rounds; peak = VmHWM of the child (reset through /proc/self/clear_refs after the warm-up),
time = wall clock of one step (fastest round), with the process's CPU time beside it.
GPU (--device cuda), bf16: in-process, torch.cuda.max_memory_allocated, median milliseconds over
--repeats steps; plus the achieved bandwidth of token_logprobs on [8192, 151936] bf16 logits (forward reads
the logits once, backward reads them and writes the gradient) as a share of a measured device copy.

Usage: python bench/kernels.py [--device cpu|cuda] [--n 4096] [--h 896] [--v 151936] [--variants ...]
       [--rounds 2] [--repeats 10]
Left out: Liger-Kernel (not a dependency; its published ratios are quoted in docs/algorithms.md).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

import atlas.kernels as K

VARIANTS = ("naive", "compiled", "atlas")


def naive_logprobs(hidden_NH, weight_VH, targets_N):
    return (hidden_NH @ weight_VH.T).log_softmax(-1).gather(-1, targets_N[:, None]).squeeze(-1)


def make_step(variant: str):
    if variant == "naive":
        fn = naive_logprobs
    elif variant == "compiled":
        fn = torch.compile(naive_logprobs)
    elif variant == "atlas":
        fn = K.linear_token_logprobs
    else:
        raise ValueError(f"unknown variant {variant!r}: choose from {VARIANTS}")

    def step(hidden_NH, weight_VH, targets_N, g_N):
        hidden_NH.grad = weight_VH.grad = None
        (fn(hidden_NH, weight_VH, targets_N) * g_N).sum().backward()

    return step


def make_inputs(n: int, h: int, v: int, dtype: torch.dtype, device: str):
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(n, h, generator=gen, device=device, dtype=dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=gen, device=device, dtype=dtype) * h**-0.5).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen, device=device)
    g = torch.randn(n, generator=gen, device=device)
    return hidden, weight, targets, g


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (the CPU benchmark needs Linux)")


def cpu_child(args) -> None:
    """One variant in this process: warm up, reset the RSS high-water mark, time one step, print JSON."""
    torch.set_num_threads(args.threads)
    hidden, weight, targets, g = make_inputs(args.n, args.h, args.v, torch.float32, "cpu")
    step = make_step(args.variant)
    if args.variant == "compiled":
        step(hidden, weight, targets, g)  # compiles; the naive and atlas paths have nothing to warm up
    hidden.grad = weight.grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    before_kb = _status_kb("VmRSS:")
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    step(hidden, weight, targets, g)
    seconds, cpu_seconds = time.perf_counter() - t0, _cpu_seconds() - cpu0
    peak_kb = _status_kb("VmHWM:")
    grads = hidden.grad.nbytes + weight.grad.nbytes
    print(json.dumps(dict(variant=args.variant, seconds=seconds, cpu_seconds=cpu_seconds, peak=peak_kb * 1024,
                          before=before_kb * 1024, grads=grads, working=peak_kb * 1024 - before_kb * 1024 - grads)))


def _cpu_seconds() -> float:
    """User + system time of this process: less sensitive than wall time to other tenants' load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_cpu(args) -> list[dict]:
    """Variants round-robin, one subprocess at a time, --rounds times; per variant the fastest round
    (the one other tenants of a shared machine disturbed least). Memory does not vary between rounds."""
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for variant in args.variants:
            cmd = [sys.executable, __file__, "--device", "cpu", "--child", "--variant", variant, "--n",
                   str(args.n), "--h", str(args.h), "--v", str(args.v), "--threads", str(args.threads)]
            env = dict(os.environ, ATLAS_KERNELS="auto")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            runs[variant].append(json.loads(out.strip().splitlines()[-1]))
            r = runs[variant][-1]
            print(f"  {variant}: {r['seconds']:.1f} s wall, {r['cpu_seconds']:.1f} s CPU, "
                  f"{r['working'] / (1 << 30):.3f} GiB working", file=sys.stderr)
    return [min(runs[v], key=lambda r: r["seconds"]) for v in args.variants]


def _cuda_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run_cuda(args) -> list[dict]:
    hidden, weight, targets, g = make_inputs(args.n, args.h, args.v, torch.bfloat16, "cuda")
    rows = []
    for variant in args.variants:
        step = make_step(variant)
        for _ in range(2):  # compile / autotune / allocator warm-up
            step(hidden, weight, targets, g)
        hidden.grad = weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        ms = _cuda_ms(lambda step=step: step(hidden, weight, targets, g), args.repeats)
        peak = torch.cuda.max_memory_allocated()
        grads = hidden.grad.nbytes + weight.grad.nbytes
        rows.append(dict(variant=variant, seconds=ms / 1e3, peak=peak, before=before, grads=grads,
                         working=peak - before - grads))
    return rows


def cuda_bandwidth(repeats: int, n: int = 8192, v: int = 151936) -> dict:
    """token_logprobs fwd/bwd on [n, v] bf16 logits: achieved GB/s as a share of a device-to-device copy."""
    logits = torch.empty(n, v, dtype=torch.bfloat16, device="cuda").normal_()
    scratch = torch.empty_like(logits)
    copy_ms = _cuda_ms(lambda out=scratch: out.copy_(logits), repeats)
    copy_gbs = 2 * logits.nbytes / copy_ms / 1e6  # a copy reads and writes every byte
    del scratch
    targets = torch.randint(0, v, (n,), device="cuda")
    g = torch.randn(n, device="cuda")
    logits.requires_grad_()
    K.set_backend("triton")
    try:
        lp = K.token_logprobs(logits, targets)
        torch.autograd.grad(lp, logits, g, retain_graph=True)  # compile both kernels before timing
        with torch.no_grad():
            fwd_ms = _cuda_ms(lambda: K.token_logprobs(logits, targets), repeats)
        bwd_ms = _cuda_ms(lambda: torch.autograd.grad(lp, logits, g, retain_graph=True), repeats)
    finally:
        K.set_backend(None)
    with torch.no_grad():
        eager_ms = _cuda_ms(lambda: logits.float().log_softmax(-1).gather(-1, targets[:, None]), repeats)
    nbytes = logits.nbytes  # forward reads the logits once; backward reads them and writes the gradient
    return dict(copy_gbs=copy_gbs, fwd_ms=fwd_ms, fwd_gbs=nbytes / fwd_ms / 1e6, bwd_ms=bwd_ms,
                bwd_gbs=2 * nbytes / bwd_ms / 1e6, eager_fwd_ms=eager_ms)


def report(rows: list[dict], args, device_name: str) -> None:
    gib = 1 << 30
    naive = next((r for r in rows if r["variant"] == "naive"), None)
    print(f"\nmachine: {device_name}; N={args.n} H={args.h} V={args.v} "
          f"{'fp32' if args.device == 'cpu' else 'bf16'}; forward + backward, one step per variant")
    cpu = args.device == "cpu"
    print("| variant | time | " + ("CPU time | " if cpu else "") + "peak | held before | grads | working | "
          "working / naive | time / naive |")
    print("|---|---|" + ("---|" if cpu else "") + "---|---|---|---|---|---|")
    for r in rows:
        ratio_m = f"{r['working'] / naive['working']:.1%}" if naive else "-"
        ratio_t = f"{r['seconds'] / naive['seconds']:.2f}x" if naive else "-"
        t = f"{r['seconds']:.2f} s | {r['cpu_seconds']:.2f} s" if cpu else f"{r['seconds'] * 1e3:.2f} ms"
        print(f"| {r['variant']} | {t} | {r['peak'] / gib:.2f} GiB | {r['before'] / gib:.2f} GiB | "
              f"{r['grads'] / gib:.2f} GiB | {r['working'] / gib:.3f} GiB | {ratio_m} | {ratio_t} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--h", type=int, default=896)
    p.add_argument("--v", type=int, default=151936)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--repeats", type=int, default=10, help="GPU: timed steps per variant (median)")
    p.add_argument("--rounds", type=int, default=2, help="CPU: round-robin repetitions (fastest kept)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="CPU: torch threads")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        cpu_child(args)
        return
    if args.device == "cpu":
        name = f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
        report(run_cpu(args), args, name)
        return
    name = torch.cuda.get_device_name()
    report(run_cuda(args), args, name)
    bw = cuda_bandwidth(args.repeats)
    print(f"\ntoken_logprobs on [8192, 151936] bf16: forward {bw['fwd_ms']:.3f} ms = {bw['fwd_gbs']:.0f} GB/s "
          f"({bw['fwd_gbs'] / bw['copy_gbs']:.0%} of copy), backward {bw['bwd_ms']:.3f} ms = {bw['bwd_gbs']:.0f} GB/s "
          f"({bw['bwd_gbs'] / bw['copy_gbs']:.0%} of copy); device copy {bw['copy_gbs']:.0f} GB/s; "
          f"eager fp32 log_softmax+gather forward {bw['eager_fwd_ms']:.3f} ms")


if __name__ == "__main__":
    main()

"""The GPU check: every path of atlas that only a GPU runs, in one command of at most ~8 minutes on one H100.

    PYTHONPATH=. python bench/gpu.py --out $OUT/gpu.json     # on the lent machine, from the repository root
    python bench/gpu.py --dry-run                            # anywhere: imports, plans, prints the plan
    PYTHONPATH=. python bench/gpu.py --only decode grpo_step # a rerun of some items

Nothing is installed and nothing is fetched: the lent machine has torch (2.11, CUDA 13), triton, pytest,
jinja2, safetensors and tokenizers, and atlas runs on them (psycopg is imported only when a Postgres source
is opened; trl is a test-only reference this script does not use). Each item runs on its own: one that
fails is reported FAIL with its error and the rest still run; the exit code is the number of failed items.
Output: one Markdown table on stdout (item, status, figures, seconds) and the same as JSON (`--out`).

Items (the model shape is Qwen2.5-0.5B's: hidden 896, 24 layers, 14 heads / 2 KV heads, intermediate
4,864, vocab 151,936, tied embeddings; random weights initialised on the GPU):
1. gpu_tests: `pytest -m gpu tests/test_gpu.py`, in a subprocess (a bf16 GRPO step under torchrun: NCCL,
   FSDP2 mixed precision, the Triton kernels);
2. kernels: each Triton kernel against its torch twin on CUDA tensors, fp32 and bf16, vocab 151,936 and
   an odd 1,031, temperature 0.7, an ignored target, upstream gradients != 1: outputs and the gradient of
   every differentiable input, max |triton - torch| / max(1, max |torch|) against 1e-4 (fp32) / 2e-2 (bf16);
3. logprob_gap: the sampler's log-probabilities against the trainer's recomputation (`token_logprobs` on a
   full forward) in bf16, temperature 1: mean and max nats per token (fails above a mean of 0.05);
4. graph_parity: greedy tokens of the compiled decode step (torch.compile with CUDA graphs) against the
   eager one, in fp32 without TF32 on a 4-layer model of that width whose LM head is scaled 20x (argmax
   margins well above fp32 noise): rows identical (fails on any difference);
5. decode: the model in bf16, eager and compiled, B rows x 256 new tokens after 128 prompt tokens:
   tokens/s against the bandwidth bound B * BW / bytes, bytes = the weights plus the KV cache one decode
   step reads at the mean length, BW = a device-to-device copy's measured rate (bytes read + written);
6. grpo_step: one GRPO step at that shape (param_dtype bfloat16, fp32 master weights, FSDP2 on a one-rank
   group, beta 0.04 with a bf16 reference): 8 prompts x 8 generations x exactly 128 completion tokens
   (`ignore_eos`), the second step timed: s/step, completion tokens/s, phases, and MFU = model FLOPs /
   (seconds x the device's dense bf16 peak), model FLOPs = 2 x matmul parameters per token forward (the
   rollout's prefill and decode, the reference and old passes), 3x that for the update; attention FLOPs
   are left out (at 160 tokens they are under 2% of the total).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHAPE = dict(model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
             num_attention_heads=14, num_key_value_heads=2, head_dim=64, max_position_embeddings=32768,
             rope_theta=1000000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)
PROMPT, NEW, DECODE_ROWS = 128, 256, (1, 32)
GRPO_BATCH = dict(prompts_per_step=8, num_generations=8, max_new_tokens=128)
KERNEL_VOCABS, DEVICE = (1031, 151936), "cuda"
# --smoke: the same code on the CPU at a tiny shape (Triton through its interpreter), for a session without
# a GPU to check that every item runs before a lent GPU's minutes are spent on it
SMOKE = dict(SHAPE=dict(SHAPE, vocab_size=1031, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512),
             PROMPT=16, NEW=16, DECODE_ROWS=(1, 4), KERNEL_VOCABS=(1031,), DEVICE="cpu",
             GRPO_BATCH=dict(prompts_per_step=2, num_generations=2, max_new_tokens=8))
# dense bf16 tensor-core peaks (vendor figures), by the name torch reports
PEAK_BF16 = {"H100 80GB HBM3": 989e12, "H100 SXM": 989e12, "H200": 989e12, "H100 PCIe": 756e12, "A100": 312e12}
BUDGET_S = {"gpu_tests": 240, "kernels": 120, "logprob_gap": 60, "graph_parity": 120, "decode": 200,
            "grpo_step": 150}


def model_config(**overrides):
    import atlas.model as am

    return am.ModelConfig(**{**SHAPE, **overrides})


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def random_model(dtype: torch.dtype, **overrides):
    """A random model of SHAPE, initialised where it will run (no CPU copy of 0.5B parameters)."""
    import atlas.model as am

    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = am.Transformer(model_config(**overrides))
    return model.to(dtype).eval()


def matmul_params(config) -> int:
    """Parameters a token's forward multiplies by: all but the embedding lookup, plus the LM head."""
    H, I, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    return L * (H * q + 2 * H * kv + q * H + 3 * H * I) + V * H


def weight_bytes(config, itemsize: int) -> int:
    H, I, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    per_layer = H * q + 2 * H * kv + q * H + 3 * H * I + q + 2 * kv + 2 * H
    heads = 1 if config.tie_word_embeddings else 2
    return (L * per_layer + heads * V * H + H) * itemsize


def kv_bytes_per_step(config, rows: int, length: float, itemsize: int) -> float:
    return 2 * config.num_hidden_layers * rows * config.num_key_value_heads * length * config.head_dim * itemsize


# the items


def item_gpu_tests() -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "test_gpu.py")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=BUDGET_S["gpu_tests"] - 10)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    if proc.returncode != 0:
        raise RuntimeError(f"pytest -m gpu exited {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}")
    return {"pytest": tail[0]}


def kernel_cases(V: int, dtype: torch.dtype, g: torch.Generator) -> dict:
    """name -> (inputs, fn(*inputs) -> outputs) for every public kernel at vocab V (see item 2)."""
    import atlas.kernels as K

    def randn(*shape, dtype=dtype):
        return torch.randn(*shape, generator=g, device=DEVICE, dtype=torch.float32).to(dtype)

    N, H, T = 37, SHAPE["hidden_size"], 0.7
    targets = torch.randint(0, V, (N,), generator=g, device=DEVICE)
    targets[3] = -100
    hidden, weight = randn(N, H) * 0.5, randn(V, H) * 0.05
    t_hidden, t_weight = randn(N, H) * 0.5, randn(V, H) * 0.05
    logits = (hidden.float() @ weight.float().T).to(dtype)
    t_logits = (t_hidden.float() @ t_weight.float().T).to(dtype)
    mask = torch.ones(N, dtype=torch.bool, device=DEVICE)
    mask[5] = False
    return {
        "token_logprobs": ((logits,), lambda x: K.token_logprobs(x, targets, T, return_entropy=True)),
        "linear_token_logprobs": ((hidden, weight), lambda h, w: K.linear_token_logprobs(
            h, w, targets, T, return_entropy=True)),
        "generalized_jsd": ((logits,), lambda x: K.generalized_jsd(x, t_logits, 0.3, T, mask=mask)),
        "linear_generalized_jsd": ((hidden, weight), lambda h, w: K.linear_generalized_jsd(
            h, w, t_hidden, t_weight, 0.3, T, mask=mask)),
        "kl_k3": ((randn(N, dtype=torch.float32) - 2,), lambda lp: K.kl(lp, lp.detach() * 0.9, "k3")),
    }


def item_kernels() -> dict:
    import atlas.kernels as K

    out, worst = {}, {}
    g = torch.Generator(device=DEVICE).manual_seed(0)
    for dtype, bound in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        for V in KERNEL_VOCABS:
            upstream = torch.randn(2, 37, generator=g, device=DEVICE)  # d loss / d output, != 1
            for name, (inputs, fn) in kernel_cases(V, dtype, g).items():
                results = {}
                for backend in ("torch", "triton"):
                    K.set_backend(backend)
                    xs = [x.detach().clone().requires_grad_() for x in inputs]
                    y = fn(*xs)
                    ys = y if isinstance(y, tuple) else (y,)
                    sum((v.float() * upstream[i]).sum() for i, v in enumerate(ys)).backward()
                    results[backend] = [v.detach().float() for v in ys] + [x.grad.float() for x in xs]
                K.set_backend(None)
                err = max(((a - b).abs().max() / b.abs().max().clamp(min=1)).item()
                          for a, b in zip(results["triton"], results["torch"]))
                key = f"{name}/{str(dtype).removeprefix('torch.')}/V{V}"
                out[key] = err
                worst[str(dtype)] = max(worst.get(str(dtype), 0.0), err)
                if not err <= bound:
                    raise AssertionError(f"{key}: triton vs torch twin {err:.2e} > {bound:.0e}; all so far: {out}")
    return {"max_rel_err_fp32": worst["torch.float32"], "max_rel_err_bf16": worst["torch.bfloat16"],
            "cases": len(out)}


def item_logprob_gap() -> dict:
    sys.path.insert(0, str(ROOT / "bench"))
    from logprob_gap import gaps

    model = random_model(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, SHAPE["vocab_size"], (int(k),), generator=g).tolist()
               for k in torch.randint(PROMPT // 8, PROMPT, (16,), generator=g)]
    mean, worst, entropy, count = gaps(model, prompts, min(64, NEW), 1.0, 2)
    if not mean < 0.05:
        raise AssertionError(f"bf16 sampler/trainer gap mean {mean:.3g} nats >= 0.05")
    return {"mean_nats": mean, "max_nats": worst, "entropy": entropy, "tokens": count}


def item_graph_parity() -> dict:
    from atlas.sampler import Sampler, SamplingParams

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = random_model(torch.float32, num_hidden_layers=4)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # tied: the embedding too, which only scales the first hidden state
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, SHAPE["vocab_size"], (int(k),), generator=g).tolist()
               for k in torch.randint(PROMPT // 16, PROMPT // 2, (8,), generator=g)]
    params = SamplingParams(max_new_tokens=min(96, NEW), temperature=0, ignore_eos=True)
    eager = Sampler(model).generate(prompts, params)
    compiled = Sampler(model, compile=True)
    compiled.generate(prompts, params)  # compiles and records the graphs
    again = compiled.generate(prompts, params)  # replays them
    same = sum(a.token_ids == b.token_ids for a, b in zip(eager, again))
    if same != len(prompts):
        first = next(i for i, (a, b) in enumerate(zip(eager, again)) if a.token_ids != b.token_ids)
        raise AssertionError(f"{len(prompts) - same} of {len(prompts)} greedy rows differ (first: row {first})")
    return {"rows_identical": f"{same}/{len(prompts)}", "tokens_per_row": params.max_new_tokens}


def copy_bandwidth() -> float:
    """Bytes per second of a device-to-device copy (read + write), best of 10."""
    x = torch.empty(2**28 if DEVICE == "cuda" else 2**22, dtype=torch.float32, device=DEVICE)
    y = torch.empty_like(x)
    best = math.inf
    for _ in range(12):
        sync()
        t = time.perf_counter()
        y.copy_(x)
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * x.numel() * x.element_size() / best


def item_decode() -> dict:
    from atlas.sampler import Sampler, SamplingParams

    model = random_model(torch.bfloat16)
    config = model.config
    bw = copy_bandwidth()
    out = {"copy_GBps": bw / 1e9}
    g = torch.Generator().manual_seed(2)
    for rows in DECODE_ROWS:
        prompts = [torch.randint(1, config.vocab_size, (PROMPT,), generator=g).tolist() for _ in range(rows)]
        params = SamplingParams(max_new_tokens=NEW, temperature=1.0, ignore_eos=True, seed=0)
        step_bytes = weight_bytes(config, 2) + kv_bytes_per_step(config, rows, PROMPT + NEW / 2, 2)
        bound = rows * bw / step_bytes
        out[f"bound_B{rows}_tok_s"] = bound
        for name, sampler in (("eager", Sampler(model)), ("compiled", Sampler(model, compile=True))):
            sampler.generate(prompts, params)  # warm-up (and the compile)
            sync()
            t = time.perf_counter()
            sampler.generate(prompts, params)
            sync()
            rate = rows * NEW / (time.perf_counter() - t)
            out[f"{name}_B{rows}_tok_s"] = rate
            out[f"{name}_B{rows}_of_bound"] = rate / bound
    return out


def item_grpo_step(output_dir: Path) -> dict:
    import atlas.model as am
    from atlas.embedded import model_path, task
    from atlas.rl import GRPO, GRPOConfig

    tok = am.Tokenizer.from_pretrained(model_path("tokenizer"))
    model = random_model(torch.float32)
    config = GRPOConfig(output_dir=str(output_dir), max_steps=2, lr=1e-6, warmup_ratio=0.0, beta=0.04,
                        param_dtype="bfloat16", micro_batch_size=16, ignore_eos=True, temperature=1.0, **GRPO_BATCH)

    def length_parity(prompts, completions, **_):  # a cheap rule with mixed groups
        return [float(len(c) % 2) for c in completions]

    trainer = GRPO(model, tok, length_parity, config)
    examples = task.examples("train")[:16]
    P = GRPO_BATCH["prompts_per_step"]
    trainer.step(examples[:P])
    sync()
    t = time.perf_counter()
    row = trainer.step(examples[P:2 * P])
    sync()
    seconds = time.perf_counter() - t
    mc = model_config()
    G, new = GRPO_BATCH["num_generations"], GRPO_BATCH["max_new_tokens"]
    prompt_len = sum(len(tok.apply_chat_template(e.prompt, tokenize=True)) for e in examples[P:2 * P]) / P
    fwd = 2 * matmul_params(mc)
    seq_tokens = P * G * (prompt_len + new)
    flops = fwd * (P * prompt_len + P * G * new) + fwd * seq_tokens + 3 * fwd * seq_tokens  # rollout, ref, update
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return {"s_per_step": seconds, "completion_tok_s": row["tokens"] / seconds, "rollout_s": row["rollout_s"],
            "logprob_s": row["logprob_s"], "update_s": row["update_s"], "model_TFLOP": flops / 1e12,
            "MFU": None if peak is None else flops / seconds / peak,
            "peak_TFLOPs": None if peak is None else peak / 1e12, "tokens": row["tokens"],
            "grad_norm": row["grad_norm"]}


ITEMS = ("gpu_tests", "kernels", "logprob_gap", "graph_parity", "decode", "grpo_step")


def plan() -> dict:
    """What each item will run, from the shapes alone (the dry run)."""
    config = model_config()
    return {
        "shape": SHAPE, "matmul_params": matmul_params(config), "weight_bytes_bf16": weight_bytes(config, 2),
        "decode": {f"B{rows}": {"tokens": rows * NEW, "bytes_per_step": weight_bytes(config, 2) + kv_bytes_per_step(
            config, rows, PROMPT + NEW / 2, 2)} for rows in DECODE_ROWS},
        "grpo_step": {**GRPO_BATCH, "completion_tokens": math.prod(GRPO_BATCH.values()),
                      "update_TFLOP_per_1k_tokens": 6 * matmul_params(config) * 1e3 / 1e12},
        "budget_s": BUDGET_S,
    }


class _Timeout(Exception):
    pass


def run_item(name: str, output_dir: Path) -> dict:
    def expire(*_):
        raise _Timeout(f"{name} ran past its {BUDGET_S[name]} s budget")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(BUDGET_S[name])
    t = time.perf_counter()
    try:
        fn = {"grpo_step": lambda: item_grpo_step(output_dir / "grpo")}.get(name, globals()[f"item_{name}"])
        figures = fn()
        status, error = "ok", None
    except BaseException as e:  # noqa: BLE001 (every failure is reported, and the next item still runs)
        figures, status, error = {}, "FAIL", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return {"status": status, "figures": figures, "error": error, "seconds": time.perf_counter() - t}


def table(results: dict) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| item | status | figures | s |", "|---|---|---|---|"]
    for name, r in results.items():
        figures = ", ".join(f"{k} {fmt(v)}" for k, v in r["figures"].items()) or (r["error"] or "").splitlines()[0]
        lines.append(f"| {name} | {r['status']} | {figures} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gpu.json", help="the JSON report")
    ap.add_argument("--only", nargs="+", choices=ITEMS, help="run these items only")
    ap.add_argument("--dry-run", action="store_true", help="plan without a GPU: imports, shapes, budgets")
    ap.add_argument("--smoke", action="store_true", help="every item but gpu_tests on the CPU at a tiny shape")
    args = ap.parse_args()
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when Triton first compiles a kernel
        globals().update(SMOKE)
        args.only = args.only or [i for i in ITEMS if i != "gpu_tests"]
    import atlas.rl  # noqa: F401  (the imports every item needs, checked before anything runs)
    import atlas.sampler  # noqa: F401

    items = args.only or list(ITEMS)
    header = {"torch": torch.__version__, "cuda": torch.version.cuda, "items": items, "plan": plan()}
    if args.dry_run:
        report = {**header, "dry_run": True}
        print(json.dumps(report, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to plan, --smoke to run the items on the CPU, or on the GPU "
              "machine", file=sys.stderr)
        return len(items)
    import triton

    header.update(device=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (--smoke)",
                  triton=triton.__version__)
    output_dir = args.out.parent / "gpu-runs"
    results = {}
    for name in items:
        results[name] = run_item(name, output_dir)
        print(f"{name}: {results[name]['status']} ({results[name]['seconds']:.0f} s)", file=sys.stderr, flush=True)
        args.out.write_text(json.dumps({**header, "results": results}, indent=2, default=str) + "\n")
    print(f"{header['device']}, torch {header['torch']}, CUDA {header['cuda']}, triton {header['triton']}\n")
    print(table(results))
    return sum(r["status"] != "ok" for r in results.values())


if __name__ == "__main__":
    sys.exit(main())

"""Forward latency of atlas's Transformer vs transformers' on the same random weights.

    python bench/model_forward.py                       # CPU: hidden 512, 8 layers, vocab 32k, 4 x 256, fp32
    python bench/model_forward.py --preset qwen2.5-0.5b --device cuda --dtype bfloat16 --batch 8 --seq 1024

The two models are timed alternately (interleaved repeats) so drift on a noisy machine hits both alike;
the figure is the ratio of medians. Logits are checked to agree before timing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import atlas.model as am

PRESETS = {
    # the CPU shape: a Qwen2-style config at hidden 512
    "small": dict(vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096,
                  tie_word_embeddings=False),
    "qwen2.5-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                         tie_word_embeddings=True, rope_theta=1000000.0),
}


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
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(**PRESETS[args.preset])).to(dtype).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = am.from_pretrained(d, device=args.device)
    hf = hf.to(args.device)
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

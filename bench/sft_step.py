"""SFT step: atlas's SFT against TRL's SFTTrainer on the same random Qwen2 weights and the same data (CPU).

    python bench/sft_step.py                             # throughput at vocab 8192 and 151,936, then memory
    python bench/sft_step.py --vocabs 8192 --skip-memory --rounds 5

Both trainers load one checkpoint directory: random Qwen2 weights saved by transformers (hidden 512, 6
layers, 8 heads / 2 KV heads, intermediate 1408, untied head, fp32) and a byte-level BPE tokenizer whose
ChatML template marks the assistant's turn with {% generation %}. Both train on the same conversations
with the loss on the assistant tokens only (atlas: the template's mask; TRL: `assistant_only_loss=True`,
the same mask from the same template); the script checks that both encode identical token ids and loss
masks before timing. Same optimizer step: 8 conversations per step in micro-batches of 4 (two forward/
backward passes, the loss normalised by the step's target-token count in both), torch's AdamW (lr 1e-5,
constant, no warmup, no weight decay, clipping at 1.0), no gradient checkpointing, no eval, no saving, no
logging (TRL: logging/save strategy "no", report_to "none"), data in order (TRL: sequential sampling), so
both run the same micro-batches with the same padding.

Throughput = real (non-padding) tokens of a step / the step's wall time, in steady state. The variants
alternate in rounds; each round runs `--steps` + 1 optimizer steps per variant and keeps the intervals
between consecutive step ends (TRL: its own `train()` loop, timed by a callback at `on_step_end`, so its
dataloader, collation and bookkeeping between steps count; atlas: `trainer.step` in a loop), so the first
step of a round (allocation, TRL's `train()` setup) is never counted. Median over every round. Variants:
`atlas padded` (pack=False: the padded micro-batches TRL runs), `atlas packed` (pack=True, atlas's default:
no compute on padding), `TRL` (its default: padded, no packing).

Memory (`--memory-vocab` 151,936): one fresh subprocess per method, one micro-batch of 8 conversations x
256 tokens = 2,048 tokens, no padding. After a warm-up step (which allocates AdamW's state) the RSS
high-water mark is reset (/proc/self/clear_refs, after malloc_trim; glibc's mmap threshold is fixed so
that freed tensors go back to the OS at once), then one step; the mark is read before the optimizer
step (atlas: wrapping `optimizer.step`; TRL: `on_pre_optimizer_step`) and at the end. Working memory =
peak - RSS before the step (parameters, AdamW state, inputs, the interpreter) - the fp32 parameter
gradients the step creates (every method must): ../shared/docs/algorithms.md, "Kernels and memory".
A third row, `transformers`, is the naive reference: the model's own loss (`model(input_ids, labels=...)`,
the whole [2,048 x vocab] logits), the same AdamW, in a plain loop.

TRL 1.16's loss runs through its own chunked LM head (`trl.kernels.ChunkedLogProbFunction`: tiles of up to
4,096 tokens x 32,768 vocabulary entries; on CPU every position is scored, masked or not); TRL "without
Liger" is its default. atlas scores only the assistant positions (`model.token_logprobs`: tiles of 2^26
logits over the tokens, the vocabulary whole). Left out: GPU and bf16, TRL's padding-free mode (on CPU
it needs the varlen path of flash attention), Liger.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # see bench/sampler.py: bench/kernels.py must not shadow the `kernels` package

# The benches' tiny model (as bench/sampler.py's "small" preset, 6 layers); the vocabulary is set per run.
SHAPE = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=6, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
TOKENIZER_VOCAB = 512
# ChatML with the assistant's reply (and its <|im_end|>) inside {% generation %}: TRL's assistant_only_loss
# needs the markers, and atlas reads the same mask from them.
TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
SYLLABLES = ("ka", "lo", "mi", "ren", "tu", "sa", "ve", "dor", "pi", "ne", "qua", "zi", "mo", "tra", "el", "un",
             "ist", "ber", "gal", "fo")
_rng = random.Random(0)
# made-up words of 1-3 syllables: varied enough that the BPE fills all 512 entries
WORDS = ["".join(_rng.choice(SYLLABLES) for _ in range(_rng.randint(1, 3))) for _ in range(400)]


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def build_checkpoint(directory: Path, vocab_size: int, shape: dict | None = None, seed: int = 0,
                     arch: str = "qwen2") -> Path:
    """A tokenizer (byte-level BPE, 512 entries, ChatML template) and random weights of `arch` ("qwen2" or
    "llama"), saved by transformers: the one directory both trainers load."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    directory.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(seed)
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB - len(specials), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([sentence(rng, 50) for _ in range(200)], trainer)
    tok.add_special_tokens(specials)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "bos_token": None, "chat_template": TEMPLATE, "model_max_length": 1 << 20}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    ids = {t: tok.token_to_id(t) for t in specials}
    name = {"qwen2": "Qwen2", "llama": "Llama"}[arch]
    config = getattr(transformers, f"{name}Config")(vocab_size=vocab_size, **(shape or SHAPE), bos_token_id=None,
                                                    eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    model = getattr(transformers, f"{name}ForCausalLM")(config)
    model.save_pretrained(directory)
    return directory


def ragged_conversations(n: int, seed: int) -> list[dict]:
    """n one-turn conversations: a 10-40 word question, a 30-120 word answer (~100-200 tokens)."""
    rng = random.Random(seed)
    return [{"messages": [{"role": "user", "content": sentence(rng, rng.randint(10, 40))},
                          {"role": "assistant", "content": sentence(rng, rng.randint(30, 120))}]} for _ in range(n)]


def exact_conversations(tokenizer, n: int, length: int, seed: int) -> list[dict]:
    """n conversations that each encode to exactly `length` tokens (a 20-word question, the answer grown
    word by word to fit), so a micro-batch of them has no padding."""
    from atlas.train.data import encode_conversation

    rng = random.Random(seed)
    out = []
    for _ in range(100 * n):
        prompt, words = sentence(rng, 20), []
        while True:
            conv = [{"role": "user", "content": prompt}, {"role": "assistant", "content": " ".join(words)}]
            size = len(encode_conversation(tokenizer, conv)[0][0])
            if size >= length:
                break
            # close to the end, try words until one lands exactly
            pool = WORDS if length - size <= 4 else [rng.choice(WORDS)]
            fits = [w for w in rng.sample(pool, len(pool))
                    if len(encode_conversation(tokenizer, [conv[0], {"role": "assistant", "content": " ".join(
                        [*words, w])}])[0][0]) <= length]
            if not fits:
                break
            words.append(fits[0])
        if size == length:
            out.append({"messages": conv})
            if len(out) == n:
                return out
    raise RuntimeError(f"could not build {n} conversations of exactly {length} tokens")


def status_bytes(key: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status (the memory benchmark needs Linux)")


def reset_peak() -> int:
    """Return freed memory to the OS, reset the RSS high-water mark to the current RSS, return that RSS."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_bytes("VmRSS")


# Children measuring memory: every allocation of 64 KiB or more gets its own mapping and is unmapped on
# free (a fixed threshold turns off glibc's adaptive one, which would keep freed tensors in the heap).
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def run_child(script: str, argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, script, *argv], check=True, capture_output=True, text=True,
                         env={**os.environ, **MEMORY_ENV}).stdout
    return json.loads(out.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def versions() -> str:
    import transformers
    import trl

    import atlas

    return f"transformers {transformers.__version__}, trl {trl.__version__}, atlas from {Path(atlas.__file__).parent}"


def quiet_libraries() -> None:
    """No progress bars from transformers/datasets (saving, loading, tokenizing): the tables stay readable."""
    import datasets
    import transformers

    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def load() -> str:
    """The 1/5/15-minute load averages: other tenants of the 2 cores show up here."""
    with open("/proc/loadavg") as f:
        return "load average " + " ".join(f.read().split()[:3])


# The two trainers

def atlas_sft(directory: Path, out: Path, pack: bool, batch: int, micro: int, lr: float):
    import atlas.model as am
    from atlas.distill import SFT, SFTConfig

    config = SFTConfig(output_dir=str(out), max_steps=10**6, lr=lr, warmup_ratio=0.0, batch_size=batch,
                       micro_batch_size=micro, pack=pack, max_seq_len=1 << 20)
    return SFT(am.from_pretrained(directory), am.Tokenizer.from_pretrained(directory), config)


class TRLRunner:
    """TRL's SFTTrainer over `steps` + 1 copies of the step's conversations, in order; `run()` calls its
    train() and returns the intervals between step ends."""

    def __init__(self, directory: Path, out: Path, conversations: list[dict], steps: int, batch: int, micro: int,
                 lr: float):
        from datasets import Dataset
        from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
        from trl import SFTConfig, SFTTrainer

        config = SFTConfig(
            output_dir=str(out), max_steps=steps + 1, per_device_train_batch_size=micro,
            gradient_accumulation_steps=batch // micro, learning_rate=lr, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", assistant_only_loss=True,
            gradient_checkpointing=False, bf16=False, use_cpu=True, max_length=None,
            train_sampling_strategy="sequential", logging_strategy="no", save_strategy="no", eval_strategy="no",
            report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=0)
        self.marks: dict[str, list[float]] = {"end": [], "pre_optimizer": []}
        marks = self.marks

        class Clock(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                marks["pre_optimizer"].append(time.perf_counter())

            def on_step_end(self, args, state, control, **kwargs):
                marks["end"].append(time.perf_counter())

        self.trainer = SFTTrainer(model=str(directory), args=config,
                                  train_dataset=Dataset.from_list(conversations * (steps + 1)),
                                  processing_class=AutoTokenizer.from_pretrained(directory), callbacks=[Clock()])
        self.trainer.remove_callback(PrinterCallback)  # train()'s closing summary line

    def encoded(self, n: int) -> list[tuple[list[int], list[int]]]:
        """(input ids, 0/1 loss mask on the label positions) of the first n training rows."""
        rows = [self.trainer.train_dataset[i] for i in range(n)]
        return [(r["input_ids"], [int(label != -100) for label in r["labels"]]) for r in rows]

    def run(self) -> list[float]:
        for v in self.marks.values():
            v.clear()
        self.trainer.train()
        ends = self.marks["end"]
        return [b - a for a, b in zip(ends, ends[1:])]


def check_same_data(atlas_batch, trl: TRLRunner) -> None:
    theirs = trl.encoded(len(atlas_batch))
    for i, (e, (ids, mask)) in enumerate(zip(atlas_batch, theirs)):
        if e.ids != ids or e.mask != mask:
            raise AssertionError(f"conversation {i}: atlas and TRL encode different ids or loss masks")


# Throughput

def throughput(args, vocab: int, root: Path) -> dict[str, float]:
    directory = build_checkpoint(root / f"ckpt-{vocab}", vocab)
    conversations = ragged_conversations(args.batch, seed=1)
    variants = {}
    for name, pack in (("atlas padded", False), ("atlas packed", True)):
        variants[name] = atlas_sft(directory, root / name.replace(" ", "-"), pack, args.batch, args.micro, args.lr)
    batch = variants["atlas padded"].prepare(conversations)
    trl = TRLRunner(directory, root / "trl", conversations, args.steps, args.batch, args.micro, args.lr)
    check_same_data(batch, trl)
    tokens = sum(len(e.ids) for e in batch)
    targets = sum(e.targets for e in batch)
    padded = sum(args.micro * max(len(e.ids) for e in batch[s:s + args.micro])
                 for s in range(0, len(batch), args.micro))
    print(f"\nvocab {vocab:,}: {args.batch} conversations per step, micro-batch {args.micro}: {tokens} tokens "
          f"({padded} positions padded), {targets} assistant targets; {load()}", flush=True)
    times: dict[str, list[float]] = {name: [] for name in [*variants, "TRL"]}
    for r in range(args.rounds):
        for name, trainer in variants.items():
            t_prev = time.perf_counter()
            for i in range(args.steps + 1):
                trainer.step(batch)
                now = time.perf_counter()
                if i:
                    times[name].append(now - t_prev)
                t_prev = now
        times["TRL"] += trl.run()
        print(f"  round {r + 1}: " + ", ".join(f"{k} {statistics.median(v[-args.steps:]):.2f} s" for k, v in
                                                times.items()) + f"; {load()}", flush=True)
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    print("| variant | s/step (median) | tokens/s | vs TRL |\n|---|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f}) | {tps[k]:,.0f} | "
              f"{tps[k] / tps['TRL']:.2f}x |")
    return tps


# Memory

def memory_child(args) -> None:
    """One method in this process: a warm-up step, then one measured step; prints JSON."""
    torch.set_num_threads(args.threads)
    root = Path(args.workdir)
    directory = root / f"ckpt-{args.memory_vocab}"
    import atlas.model as am

    conversations = exact_conversations(am.Tokenizer.from_pretrained(directory), args.batch, args.memory_tokens //
                                        args.batch, seed=2)
    marks: dict[str, int] = {}
    if args.method == "atlas":
        # padded rows of equal length, no padding: the [8, 256] batch TRL runs
        trainer = atlas_sft(directory, root / "mem-atlas", False, args.batch, args.batch, args.lr)
        batch = trainer.prepare(conversations)
        model = trainer.model
        step = trainer.optimizer.step

        def measured_step(*a, **k):
            marks.setdefault("fwd_bwd", status_bytes("VmHWM"))
            return step(*a, **k)

        trainer.step(batch)
        trainer.optimizer.step = measured_step
        before = reset_peak()
        trainer.step(batch)
    elif args.method == "transformers":
        # the naive reference: the model's own loss over the whole [tokens x vocab] logits, same AdamW
        from transformers import AutoModelForCausalLM

        from atlas.train.data import encode_conversation

        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        tokenizer = am.Tokenizer.from_pretrained(directory)
        encoded = [encode_conversation(tokenizer, c["messages"])[0] for c in conversations]
        ids = torch.tensor([e[0] for e in encoded])
        labels = ids.masked_fill(torch.tensor([e[1] for e in encoded]) == 0, -100)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)

        def hf_step():
            model(input_ids=ids, labels=labels).loss.backward()
            marks["fwd_bwd"] = status_bytes("VmHWM")
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        hf_step()
        before = reset_peak()
        hf_step()
    else:
        from transformers import TrainerCallback

        class Mark(TrainerCallback):
            def on_step_begin(self, a, state, control, **kwargs):
                if state.global_step == 1:  # after the warm-up step
                    marks["before"] = reset_peak()

            def on_pre_optimizer_step(self, a, state, control, **kwargs):
                if state.global_step == 1:
                    marks["fwd_bwd"] = status_bytes("VmHWM")

        runner = TRLRunner(directory, root / "mem-trl", conversations, 1, args.batch, args.batch, args.lr)
        runner.trainer.add_callback(Mark())
        model = runner.trainer.model
        runner.run()
        before = marks["before"]
    peak = status_bytes("VmHWM")
    grads = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    print(json.dumps(dict(method=args.method, before=before, peak=peak, fwd_bwd=marks["fwd_bwd"], grads=grads)))


def memory(args, root: Path) -> None:
    build_checkpoint(root / f"ckpt-{args.memory_vocab}", args.memory_vocab)
    rows = []
    for method in ("atlas", "trl", "transformers"):
        rows.append(run_child(__file__, ["--child", "--method", method, "--workdir", str(root), "--memory-vocab",
                                         str(args.memory_vocab), "--memory-tokens", str(args.memory_tokens),
                                         "--batch", str(args.batch), "--threads", str(args.threads)]))
    mib = 1 << 20
    print(f"\nmemory: vocab {args.memory_vocab:,}, one micro-batch of {args.batch} x "
          f"{args.memory_tokens // args.batch} = {args.memory_tokens} tokens, fp32; one subprocess per method")
    print("| method | held before | peak (fwd+bwd / step) | param grads | working fwd+bwd | working step |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        r["working_fwd_bwd"] = r["fwd_bwd"] - r["before"] - r["grads"]
        r["working"] = r["peak"] - r["before"] - r["grads"]
        print(f"| {r['method']} | {r['before'] / mib:,.0f} MiB | {r['fwd_bwd'] / mib:,.0f} / {r['peak'] / mib:,.0f} "
              f"MiB | {r['grads'] / mib:,.0f} MiB | {r['working_fwd_bwd'] / mib:,.0f} MiB | "
              f"{r['working'] / mib:,.0f} MiB |")
    a, t = rows[:2]
    print(f"atlas / TRL working memory: forward+backward {a['working_fwd_bwd'] / t['working_fwd_bwd']:.1%}, "
          f"whole step {a['working'] / t['working']:.1%} (target <= 25%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocabs", type=int, nargs="*", default=[8192, 151936], help="throughput runs")
    ap.add_argument("--batch", type=int, default=8, help="conversations per optimizer step")
    ap.add_argument("--micro", type=int, default=4, help="micro-batch size (throughput runs)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--memory-vocab", type=int, default=151936)
    ap.add_argument("--memory-tokens", type=int, default=2048)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    quiet_libraries()
    if args.child:
        memory_child(args)
        return
    print(f"machine: {machine()}, {args.threads} threads; {versions()}; {load()}")
    with tempfile.TemporaryDirectory() as d:
        for vocab in args.vocabs:
            throughput(args, vocab, Path(d))
        if not args.skip_memory:
            memory(args, Path(d))
    print(f"done; {load()}")


if __name__ == "__main__":
    main()

"""GRPO step: atlas's GRPO against TRL's GRPOTrainer on the same random checkpoint and tokenizer (CPU).

    python bench/grpo_step.py                            # tiny shape: s/step, tokens/s, phases; memory
    python bench/grpo_step.py --shape real --rounds 2 --steps 2 --skip-memory
    python bench/grpo_step.py --shape real --prompt-tokens 512 --rounds 2 --steps 2 --skip-memory
    python bench/grpo_step.py --profile                  # also the top ops (torch.profiler) of one step of each

Both trainers load one checkpoint directory (bench/sft_step.py's tokenizer: a 512-entry byte-level BPE
with a ChatML template; random weights saved by transformers, fp32). `--shape tiny` (the default) is the
shape ../shared/docs/embedded-default-notes.md timed TRL on: Qwen2, hidden 128, 4 layers, 4 heads / 2 KV
heads, intermediate 384, vocab 512, tied, 1 prompt per step. `--shape real` is a real 135M-parameter chat
model's: Llama, 30 layers, hidden 576, 9 heads / 3 KV heads, intermediate 1536, vocab 49,152, tied, 2
prompts per step. Each prompt gets 8 generations of exactly 64 completion tokens (atlas: `ignore_eos`;
TRL: `min_new_tokens=64`, which masks the end-of-turn token until then; both checked every step),
temperature 1, no top-k/top-p, beta 0.04 (a reference model scored every step), one optimizer step per
rollout batch (mu = 1: old log-probs are the detached current ones in both), all sequences in one
micro-batch, DAPO-style token-mean loss (atlas `token_mean`, TRL `dapo`), torch's AdamW at lr 1e-6
(constant, no warmup, clipping at 1.0), no gradient checkpointing, fp32, no logging or saving (TRL:
logging/save strategy "no", report_to "none"), atlas's default config (no compile lever). Prompt i is one
user message of 12 made-up words; `--prompt-tokens N` puts a long system context before it (made-up
words up to N prompt tokens in all: an agent's system prompt and playbook). Both render the same prompt
ids (checked). The reward is a cheap rule (the completion's length mod 7), so groups have mixed rewards.

Timing: the methods alternate in rounds; each round runs `--steps` + 1 steps per method and keeps the
intervals between consecutive step ends (TRL: its own `train()` loop timed at `on_step_end`; atlas:
`trainer.step` in a loop), so no round's first step counts. Median s/step over every round; completion
tokens/s = completion tokens per step / that. Phases: atlas's own (`rollout_s`, `reward_s`, `logprob_s`:
the reference model's no-grad pass, `update_s`: forward/backward/optimizer); TRL's by wrapping its methods
on the instance (rollout: `_generate`, prompt rendering + `generate` + decoding; reward:
`_calculate_rewards`; logprob: its no-grad `_get_per_token_logps_and_entropies` calls, the reference
pass; update: the rest of the step).

Decode step against the floor (atlas's sampler, the timed shape, P x 8 rows): the step is (time of 33
new tokens - time of 1) / 32 through `Sampler.generate`; the floors, measured here: reading the weights'
bytes once (a sum over a buffer of their size: the memory bandwidth), and the matmul FLOPs of one step
(2 x rows x the parameters of every linear layer) at the best rate this machine's GEMMs reach on the
model's own matrices (256 rows at once). Also the step without prepacked weights (`atlas.model.prepack`
off: MKL's GEMM, as before it), alternating with the default, and the step's matmuls alone through MKL
(every linear layer at the decode's rows).

`--compiled` also times atlas with its Sampler replaced by `Sampler(model, tokenizer, compile=True)` (a
torch.compile'd decode step; GRPOConfig has no switch for it): a lever, not the default.

Memory (`--memory-vocab` 151,936, the tiny shape otherwise): one fresh subprocess per method, a warm-up
step, then two phases of the next step measured in place: the logprob phase (the reference model's no-grad
pass over the 8 sequences of 35 + 64 tokens) and the update (atlas: `_update`, forward + backward + AdamW;
TRL: from the end of `_prepare_inputs`, which samples and scores, to `on_step_end`, after its optimizer
step). RSS high-water mark reset at the phase's entry (after malloc_trim; glibc's mmap threshold fixed, see
bench/sft_step.py), read at its exit; working memory = peak - RSS at entry. Left out: GPU runs (bf16,
Qwen2.5-0.5B shape, MFU), vLLM generation for TRL.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from sft_step import (
    build_checkpoint,
    load,
    machine,
    quiet_libraries,
    reset_peak,
    run_child,
    sentence,
    status_bytes,
    versions,
)

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # see bench/sampler.py: bench/kernels.py must not shadow the `kernels` package

SHAPES = {  # name: (architecture, shape, vocabulary, prompts per step, prompt tokens without a system context)
    "tiny": ("qwen2", dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True), 512, 1,
             None),
    "real": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                           num_key_value_heads=3, max_position_embeddings=4096, tie_word_embeddings=True), 49152, 2,
             45),
}
G, NEW = 8, 64
PHASES = ("rollout_s", "reward_s", "logprob_s", "update_s")


def length_reward(prompts, completions, **columns) -> list[float]:
    """A cheap rule with spread: the completion's length mod 7 (TRL passes chat completions as messages)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [float(len(t) % 7) for t in texts]


def prompt_messages(tokenizer, prompts: int, user_tokens: int | None, prompt_tokens: int | None) -> list[list[dict]]:
    """`prompts` one-message prompts of made-up words: 12 words, or as many as make `user_tokens` prompt
    tokens; with `prompt_tokens`, after a system context of made-up words that brings the first prompt to
    that many tokens."""
    import random

    def grown(messages: list[dict], target: int, rng) -> list[dict]:  # words added to the first message
        first, *rest = messages
        words = first["content"].split()
        while len(tokenizer.apply_chat_template([{**first, "content": " ".join(words)}, *rest],
                                                add_generation_prompt=True, tokenize=True)) < target:
            words.append(sentence(rng, 1))
        return [{**first, "content": " ".join(words)}, *rest]

    users = [[{"role": "user", "content": sentence(random.Random(3 + i), 12)}] for i in range(prompts)]
    if user_tokens is not None:
        users = [grown([{"role": "user", "content": ""}], user_tokens, random.Random(3 + i)) for i in range(prompts)]
    if prompt_tokens is None:
        return users
    system = grown([{"role": "system", "content": ""}, *users[0]], prompt_tokens, random.Random(11))
    return [[system[0], *user] for user in users]


class AtlasRunner:
    def __init__(self, directory: Path, out: Path, args, messages: list[list[dict]], compiled: bool = False):
        import atlas.model as am
        from atlas.rl import GRPO, GRPOConfig
        from atlas.sampler import Sampler

        self.tokenizer = am.Tokenizer.from_pretrained(directory)
        self.messages = messages
        P = len(messages)
        config = GRPOConfig(output_dir=str(out), max_steps=10**6, prompts_per_step=P, num_generations=G,
                            max_new_tokens=NEW, beta=args.beta, temperature=1.0, lr=1e-6, warmup_ratio=0.0,
                            micro_batch_size=P * G, ignore_eos=True)  # every completion exactly 64 tokens
        self.trainer = GRPO(am.from_pretrained(directory), self.tokenizer, length_reward, config)
        if compiled:  # GRPOConfig has no switch for it either: the lever measured, not a default
            self.trainer.sampler = Sampler(self.trainer.model, self.tokenizer, compile=True)
        self.batch = [{"prompt": m} for m in messages]

    def prompt_ids(self) -> list[list[int]]:
        return [self.tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True)
                for m in self.messages]

    def run(self, steps: int) -> list[dict]:
        rows, t_prev = [], time.perf_counter()
        n = len(self.messages) * G * NEW
        for i in range(steps + 1):
            row = self.trainer.step(self.batch)
            now = time.perf_counter()
            assert row["tokens"] == n, f"atlas sampled {row['tokens']} completion tokens, not {n}"
            if i:
                rows.append({"step_s": now - t_prev, **{k: row[k] for k in PHASES}})
            t_prev = now
        return rows


class TRLRunner:
    """TRL's GRPOTrainer; `run()` calls its train() for steps + 1 steps and returns per-step intervals with
    the phases timed inside each."""

    def __init__(self, directory: Path, out: Path, args, steps: int, messages: list[list[dict]]):
        from datasets import Dataset
        from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        self.messages = messages
        config = GRPOConfig(
            output_dir=str(out), max_steps=steps + 1, per_device_train_batch_size=len(messages) * G,
            num_generations=G,
            gradient_accumulation_steps=1, max_completion_length=NEW, generation_kwargs={"min_new_tokens": NEW},
            beta=args.beta, temperature=1.0, top_p=1.0, top_k=0, learning_rate=1e-6, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", loss_type="dapo",
            gradient_checkpointing=False, bf16=False, use_cpu=True, logging_strategy="no", save_strategy="no",
            eval_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, seed=0)
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.acc: dict[str, float] = {}
        self.ends: list[tuple[float, dict]] = []
        runner = self

        class Clock(TrainerCallback):
            def on_step_end(self, a, state, control, **kwargs):
                runner.ends.append((time.perf_counter(), dict(runner.acc)))
                runner.acc.clear()

        dataset = Dataset.from_list([{"prompt": m} for m in messages] * (steps + 1))
        self.trainer = GRPOTrainer(model=str(directory), reward_funcs=length_reward, args=config,
                                   train_dataset=dataset, processing_class=self.tokenizer, callbacks=[Clock()])
        self.trainer.remove_callback(PrinterCallback)  # train()'s closing summary line
        t = self.trainer
        t._generate = self._timed(t._generate, "rollout_s")
        t._calculate_rewards = self._timed(t._calculate_rewards, "reward_s")
        t._get_per_token_logps_and_entropies = self._timed(t._get_per_token_logps_and_entropies, "logprob_s",
                                                           no_grad_only=True)

    def _timed(self, fn, phase: str, no_grad_only: bool = False):
        def wrapper(*a, **k):
            if no_grad_only and torch.is_grad_enabled():  # the policy's pass inside the loss: the update
                return fn(*a, **k)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.acc[phase] = self.acc.get(phase, 0.0) + time.perf_counter() - t0
        return wrapper

    def prompt_ids(self) -> list[list[int]]:
        return [ids_of(self.tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True))
                for m in self.messages]

    def run(self) -> list[dict]:
        self.ends.clear()
        self.acc.clear()
        self.trainer.train()
        lengths = self.trainer._metrics["train"]["completions/mean_length"]
        assert all(n == NEW for n in lengths), f"TRL completions were not all {NEW} tokens long: {lengths}"
        lengths.clear()
        rows = []
        for (a, _), (b, phases) in zip(self.ends, self.ends[1:]):
            row = {"step_s": b - a, **{k: phases.get(k, 0.0) for k in PHASES[:3]}}
            row["update_s"] = row["step_s"] - sum(row[k] for k in PHASES[:3])
            rows.append(row)
        return rows


def ids_of(x) -> list[int]:
    return list(x["input_ids"] if isinstance(x, dict) or hasattr(x, "keys") else x)


def profile_steps(atlas: AtlasRunner, trl: TRLRunner) -> None:
    """torch.profiler over one steady-state step of each: the top ops by self time, and the share of the
    step's wall time spent inside any op (the rest is Python: loops, bookkeeping, framework layers)."""
    from torch.profiler import profile
    from transformers import TrainerCallback

    atlas.run(1)
    with profile() as prof:
        t0 = time.perf_counter()
        atlas.trainer.step(atlas.batch)
        wall = time.perf_counter() - t0
    report_profile("atlas", prof, wall)

    holder: dict = {}

    class Window(TrainerCallback):  # profiles from the end of step 1 to the end of step 2
        def on_step_end(self, a, state, control, **kwargs):
            if state.global_step == 1:
                holder["prof"] = profile()
                holder["prof"].start()
                holder["t0"] = time.perf_counter()
            elif state.global_step == 2:
                holder["wall"] = time.perf_counter() - holder["t0"]
                holder["prof"].stop()

    window = Window()
    trl.trainer.add_callback(window)
    trl.run()
    trl.trainer.remove_callback(window)
    report_profile("TRL", holder["prof"], holder["wall"])


def report_profile(name: str, prof, wall: float) -> None:
    events = prof.key_averages()
    # top-level ops only (self time of every op sums to the time spent in ops)
    in_ops = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"\n{name}: one step {wall:.3f} s wall, {in_ops:.3f} s inside torch ops ({in_ops / wall:.0%})")
    print(events.table(sort_by="self_cpu_time_total", row_limit=10))


def timing(args, root: Path) -> None:
    arch, shape, vocab, P, user_tokens = SHAPES[args.shape]
    vocab = args.vocab or vocab
    directory = build_checkpoint(root / "ckpt", vocab, shape, arch=arch)
    import atlas.model as am

    messages = prompt_messages(am.Tokenizer.from_pretrained(directory), P, user_tokens, args.prompt_tokens)
    atlas = AtlasRunner(directory, root / "atlas", args, messages)
    compiled = AtlasRunner(directory, root / "atlas-compiled", args, messages, compiled=True) if args.compiled else None
    trl = TRLRunner(directory, root / "trl", args, args.steps, messages)
    a_ids, t_ids = atlas.prompt_ids(), trl.prompt_ids()
    assert a_ids == t_ids, f"the two render different prompt ids:\n{a_ids}\n{t_ids}"
    print(f"\n{args.shape} shape ({arch}, {sum(p.numel() for p in atlas.trainer.model.parameters()) / 1e6:.0f}M "
          f"parameters), vocab {vocab}: {P} prompt(s) ({', '.join(str(len(x)) for x in a_ids)} tokens) x {G} "
          f"generations x {NEW} new tokens, beta {args.beta}; {load()}", flush=True)
    rows: dict[str, list[dict]] = {"atlas": [], "TRL": []}
    if compiled is not None:
        t0 = time.perf_counter()
        compiled.run(0)
        print(f"  atlas compiled sampler: first step (compiles the decode step) {time.perf_counter() - t0:.1f} s")
        rows["atlas, compiled sampler"] = []
    for r in range(args.rounds):
        rows["atlas"] += atlas.run(args.steps)
        if compiled is not None:
            rows["atlas, compiled sampler"] += compiled.run(args.steps)
        rows["TRL"] += trl.run()
        print(f"  round {r + 1}: " + ", ".join(f"{k} {statistics.median(x['step_s'] for x in v[-args.steps:]):.3f} "
                                                f"s/step" for k, v in rows.items()) + f"; {load()}", flush=True)
    med = {k: {p: statistics.median(x[p] for x in v) for p in ("step_s", *PHASES)} for k, v in rows.items()}
    print("| method | s/step (median, min-max) | completion tok/s | rollout | reward | logprob | update |\n"
          "|---|---|---|---|---|---|---|")
    for k, v in rows.items():
        steps = [x["step_s"] for x in v]
        m = med[k]
        print(f"| {k} | {m['step_s']:.3f} ({min(steps):.3f}-{max(steps):.3f}) | {P * G * NEW / m['step_s']:,.0f} | "
              + " | ".join(f"{m[p]:.3f}" for p in PHASES) + " |")
    for k in rows:
        if k != "TRL":
            print(f"{k} / TRL completion tokens/s: {med['TRL']['step_s'] / med[k]['step_s']:.2f}x")
    if args.profile:
        profile_steps(atlas, trl)
    if args.decode:
        decode_floor(atlas.trainer.model, atlas.tokenizer, a_ids)


def decode_floor(model, tokenizer, prompt_ids: list[list[int]]) -> None:
    """atlas's decode step at len(prompt_ids) x G rows against the floors (the module docstring)."""
    import atlas.model.prepack as prepack
    from atlas.sampler import Sampler, SamplingParams

    def best(fn, repeats=5) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    rows = len(prompt_ids) * G
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer = torch.randn(weight_bytes // 4)
    read = best(buffer.sum)
    del buffer
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    flops = 2 * rows * sum(w.numel() for w in weights)

    def matmuls(n):
        inputs = {w.shape[1]: torch.randn(n, w.shape[1]) for w in weights}
        return lambda: [inputs[w.shape[1]] @ w.T for w in weights]

    with torch.no_grad():
        rate = 256 / rows * flops / best(matmuls(256), 3)
        at_rows = best(matmuls(rows), 3)
    sampler = Sampler(model, tokenizer)

    def step_s() -> float:
        def new(k):
            params = SamplingParams(n=G, max_new_tokens=k, temperature=1.0, ignore_eos=True, seed=0)
            return lambda: sampler.generate(prompt_ids, params)
        return statistics.median((best(new(33), 1) - best(new(1), 1)) / 32 for _ in range(3))

    steps: dict[str, list[float]] = {"prepacked": [], "plain": []}
    packable = prepack.PACK_MIN_ELEMENTS
    for _ in range(2):  # alternating: the machine drifts
        for name, size in (("prepacked", packable), ("plain", 1 << 62)):
            prepack.PACK_MIN_ELEMENTS = size
            steps[name].append(step_s())
    prepack.PACK_MIN_ELEMENTS = packable
    step, plain = (statistics.median(steps[k]) for k in ("prepacked", "plain"))
    floor = max(read, flops / rate)
    print(f"\ndecode step at {rows} rows: {step * 1e3:.1f} ms ({floor / step:.0%} of the floor's rate); without "
          f"prepacked weights (MKL's GEMM): {plain * 1e3:.1f} ms")
    print(f"  floor: the weights' {weight_bytes / 1e9:.2f} GB read once {read * 1e3:.1f} ms "
          f"({weight_bytes / read / 1e9:.0f} GB/s); the step's {flops / 1e9:.2f} GFLOP of matmuls at the best GEMM "
          f"rate measured ({rate / 1e9:.0f} GFLOP/s, 256 rows) {flops / rate * 1e3:.1f} ms")
    print(f"  the step's matmuls alone, at {rows} rows: {at_rows * 1e3:.1f} ms ({flops / at_rows / 1e9:.0f} GFLOP/s)")


def memory_child(args) -> None:
    """The logprob phase and the update of one method's second step, measured in place; prints JSON."""
    from transformers import TrainerCallback

    torch.set_num_threads(args.threads)
    directory = Path(args.workdir) / f"ckpt-{args.memory_vocab}"
    records: dict[str, list[tuple[int, int]]] = {"logprob": [], "update": []}
    opened: list[int] = []

    def measured(fn, phase: str, no_grad_only: bool = False):
        def wrapper(*a, **k):
            if no_grad_only and torch.is_grad_enabled():
                return fn(*a, **k)
            start = reset_peak()
            out = fn(*a, **k)
            records[phase].append((start, status_bytes("VmHWM")))
            return out
        return wrapper

    _, _, _, P, user_tokens = SHAPES["tiny"]
    if args.method == "atlas":
        import atlas.model as am

        messages = prompt_messages(am.Tokenizer.from_pretrained(directory), P, user_tokens, None)
        runner = AtlasRunner(directory, Path(args.workdir) / "mem-atlas", args, messages)
        runner.trainer._logprobs = measured(runner.trainer._logprobs, "logprob")
        runner.trainer._update = measured(runner.trainer._update, "update")
        runner.run(1)
    else:
        from transformers import AutoTokenizer

        messages = prompt_messages(AutoTokenizer.from_pretrained(directory), P, user_tokens, None)
        runner = TRLRunner(directory, Path(args.workdir) / "mem-trl", args, 1, messages)
        t = runner.trainer
        t._get_per_token_logps_and_entropies = measured(t._get_per_token_logps_and_entropies, "logprob", True)
        prepare = t._prepare_inputs

        def prepared(*a, **k):  # sampled and scored: the update starts here...
            out = prepare(*a, **k)
            opened.append(reset_peak())
            return out

        class StepEnd(TrainerCallback):  # ...and ends after the optimizer step
            def on_step_end(self, a, state, control, **kwargs):
                records["update"].append((opened[-1], status_bytes("VmHWM")))

        t._prepare_inputs = prepared
        t.add_callback(StepEnd())
        runner.run()
    assert all(len(v) == 2 for v in records.values()), f"expected one of each phase per step, got {records}"
    print(json.dumps({"method": args.method, **{k: v[-1] for k, v in records.items()}}))


def memory(args, root: Path) -> None:
    arch, shape, _, _, _ = SHAPES["tiny"]
    build_checkpoint(root / f"ckpt-{args.memory_vocab}", args.memory_vocab, shape, arch=arch)
    mib = 1 << 20
    rows = [run_child(__file__, ["--child", "--method", m, "--workdir", str(root), "--memory-vocab",
                                 str(args.memory_vocab), "--beta", str(args.beta), "--threads", str(args.threads)])
            for m in ("atlas", "trl")]
    print(f"\nmemory: vocab {args.memory_vocab:,}, the tiny shape otherwise, {G} x (prompt + {NEW}) tokens, fp32; "
          "one subprocess per method")
    print("| method | phase | RSS at entry | peak | working |\n|---|---|---|---|---|")
    for phase in ("logprob", "update"):
        for r in rows:
            start, peak = r[phase]
            r[f"{phase}_working"] = peak - start
            print(f"| {r['method']} | {phase} | {start / mib:,.0f} MiB | {peak / mib:,.0f} MiB | "
                  f"{(peak - start) / mib:,.1f} MiB |")
        print(f"atlas / TRL {phase} working memory: {rows[0][f'{phase}_working'] / rows[1][f'{phase}_working']:.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--vocab", type=int, default=None, help="model vocabulary of the timed runs (default: the shape's)")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="a system context bringing prompts to N tokens")
    ap.add_argument("--decode", action=argparse.BooleanOptionalAction, default=True,
                    help="the decode step against the measured floor")
    ap.add_argument("--beta", type=float, default=0.04)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per method and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--memory-vocab", type=int, default=151936)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                    help="also time atlas with Sampler(compile=True) swapped in")
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
        timing(args, Path(d))
        if not args.skip_memory:
            memory(args, Path(d))
    print(f"done; {load()}")


if __name__ == "__main__":
    main()

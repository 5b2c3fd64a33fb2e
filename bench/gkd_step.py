"""GKD step: atlas's GKD against TRL's GKDTrainer on the same tiny random student and teacher (CPU), and the
loss's working memory at a Qwen-sized vocabulary. GKD vs GRPO time to a held-out target: bench/gkd_vs_grpo.py.

    python bench/gkd_step.py                                   # both parts
    python bench/gkd_step.py --parts timing --profile          # s/step and phases, then each side's top ops

timing (`--vocabs`, default 512). One tokenizer (bench/sft_step.py's 512-entry byte-level BPE, ChatML) and
two random Qwen2 checkpoints saved by transformers, shaped like the embedded models: student hidden 96,
3 layers, intermediate 256; teacher hidden 128, 4 layers, intermediate 384; 4 heads / 2 KV heads, tied
embeddings, fp32. Both trainers load those directories and run the issue's step: 8 prompts (a user
message of 8-16 made-up words each, the same 8 every step; both render the same ids, checked), one
on-policy completion each of exactly 32 tokens (atlas: GKDConfig's `ignore_eos`;
TRL: `min_new_tokens=32`, which masks the end-of-turn token until then; both checked: 256 completion
tokens per step), sampling temperature 0.9, no top-k/top-p, lmbda 1, beta 0.5, loss temperature 1, one
micro-batch, torch's AdamW at lr 1e-5 (constant, no warmup or weight decay, clipping at 1.0), no gradient
checkpointing, no eval, saving or logging (TRL: strategies "no", report_to "none"), data in order. Past
vocab 512 the heads have rows the tokenizer lacks: atlas is told to score them all (`trainer.vocab`), as
TRL does. Methods alternate in rounds of `--steps` + 1 steps each, keeping the intervals between step
ends (TRL: its own `train()` loop, timed at `on_step_end`, so its collator and bookkeeping count; atlas:
`trainer.step` in a loop), so no round's first step counts; median over all rounds. Each round line says
how much CPU other processes took meanwhile (/proc/stat minus this process tree) and the hypervisor's
steal. Phases, the same stages wrapped on both sides: rollout (atlas `_sequences`, TRL
`generate_on_policy_outputs`), teacher and student forward (forward hooks, outside the rollout; TRL's
include the full logits), loss forward (atlas `generalized_jsd` from hidden states in chunks, TRL
`generalized_jsd_loss` on full logits), backward, optimizer (clipping included), other. `atlas, compiled
sampler` swaps in one persistent `Sampler(compile=True)` (GKD builds an eager one per step and has no
switch for it): a lever, not the default.

memory (`--memory-vocab` 151,936, `--memory-new` 32 and 96 new tokens, the shapes otherwise as above): one
fresh subprocess per method; after a warm-up step (AdamW's state) the next step's loss phase, from the
rollout's end to the optimizer step (both forwards, the loss, its backward), is measured in place: RSS
high-water mark reset as the rollout returns (after malloc_trim; glibc's mmap threshold fixed, see
bench/sft_step.py), read at the optimizer step. Working memory = peak - RSS at the reset - the student's
fp32 parameter gradients (every method creates them): ../shared/docs/algorithms.md, "Kernels and memory".
`--chunk-elements` sets atlas's logits-tile budget (atlas.kernels.common.CHUNK_ELEMENTS, 2^26).

Left out: GPU runs (bf16, Qwen2.5-sized models), vLLM generation for TRL, Liger's fused JSD, TRL's
DistillationTrainer (chunked loss; the issue compares against GKDTrainer).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from sft_step import build_checkpoint, load, machine, reset_peak, run_child, sentence, status_bytes, versions

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # see bench/sampler.py: bench/kernels.py must not shadow the `kernels` package

COMMON = dict(num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
STUDENT = dict(hidden_size=96, intermediate_size=256, num_hidden_layers=3, **COMMON)
TEACHER = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, **COMMON)
B, NEW, LR = 8, 32, 1e-5
PHASES = ("rollout", "teacher_fwd", "student_fwd", "loss_fwd", "backward", "optimizer")


def checkpoints(root: Path, vocab: int) -> tuple[Path, Path]:
    """Student and teacher directories sharing one tokenizer (same seed: the same BPE, checked)."""
    student = build_checkpoint(root / f"student-{vocab}", vocab, STUDENT)
    teacher = build_checkpoint(root / f"teacher-{vocab}", vocab, TEACHER)
    assert (student / "tokenizer.json").read_text() == (teacher / "tokenizer.json").read_text()
    return student, teacher


def conversations() -> list[dict]:
    """The step's 8 prompts; the assistant turn is TRL's collator input, never trained on (lmbda = 1)."""
    rng = random.Random(4)
    return [{"messages": [{"role": "user", "content": sentence(rng, rng.randint(8, 16))},
                          {"role": "assistant", "content": sentence(rng, 10)}]} for _ in range(B)]


def rendered_prompts(tokenizer) -> list[list[int]]:
    from atlas.train.data import prompt_ids

    return [prompt_ids(tokenizer, e) for e in conversations()]


class Tenants:
    """Other processes' CPU between two marks (cores on average: the machine's busy time in /proc/stat minus
    this process tree's) and the hypervisor's steal: what disturbs a run on shared cores."""

    def __init__(self):
        self.mark = self._now()

    @staticmethod
    def _now() -> tuple[float, float, float, float]:
        with open("/proc/stat") as f:
            user, nice, system, _, _, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
        hz = os.sysconf("SC_CLK_TCK")
        own = sum(getattr(resource.getrusage(w), k) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for k in ("ru_utime", "ru_stime"))
        return time.perf_counter(), (user + nice + system + irq + softirq) / hz, steal / hz, own

    def since(self) -> str:
        (t0, busy0, steal0, own0), now = self.mark, self._now()
        self.mark, wall = now, max(now[0] - t0, 1e-9)
        others = max(0.0, (now[1] - busy0) - (now[3] - own0)) / wall
        return f"others {others:.2f} cores, steal {(now[2] - steal0) / wall:.2f}"


class Clock:
    """Per-step phase seconds: `wrap` times a callable, `hooks` a module's forward (outside the rollout)."""

    def __init__(self):
        self.acc: dict[str, float] = {}
        self.in_rollout, self.opt_t0 = False, 0.0

    def add(self, phase: str, seconds: float) -> None:
        self.acc[phase] = self.acc.get(phase, 0.0) + seconds

    def wrap(self, fn, phase: str, rollout: bool = False):
        def timed(*a, **k):
            self.in_rollout, t0 = rollout, time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.add(phase, time.perf_counter() - t0)
                self.in_rollout = False
        return timed

    def hooks(self, module: torch.nn.Module, phase: str) -> None:
        start: list[float] = []
        module.register_forward_pre_hook(lambda *_: start.append(time.perf_counter()))

        def post(*_):
            t0 = start.pop()
            if not self.in_rollout:  # TRL's generate calls the student's forward too
                self.add(phase, time.perf_counter() - t0)
        module.register_forward_hook(post)

    def row(self, step_s: float) -> dict[str, float]:
        row = {"step_s": step_s, **{p: self.acc.get(p, 0.0) for p in PHASES}}
        row["other"] = step_s - sum(row[p] for p in PHASES)
        self.acc.clear()
        return row


# The two trainers

class AtlasRunner:
    def __init__(self, student: Path, teacher: Path, out: Path, timed: bool = True, compiled: bool = False,
                 new: int = NEW):
        import atlas.distill.gkd as gkd
        import atlas.model as am
        from atlas.sampler import Sampler

        self.tokenizer = am.Tokenizer.from_pretrained(student)
        config = gkd.GKDConfig(output_dir=str(out), max_steps=10**6, lr=LR, warmup_ratio=0.0, batch_size=B,
                               micro_batch_size=B, lmbda=1.0, beta=0.5, temperature=0.9, max_new_tokens=new,
                               eval_every=0, ignore_eos=True)  # every completion exactly `new` tokens
        self.trainer = t = gkd.GKD(am.from_pretrained(student), am.from_pretrained(teacher), self.tokenizer, config)
        t.vocab = t.model.config.vocab_size  # every head row, as TRL (the tokenizer has 512 entries)
        self.patches = []
        if compiled:
            rollouts = functools.partial(gkd.sample_rollouts, sampler=Sampler(t.model, self.tokenizer, compile=True))
            self.patches.append(mock.patch.object(gkd, "sample_rollouts", rollouts))
        self.batch, self.new, self.clock = conversations(), new, Clock()
        if timed:
            c = self.clock
            t._sequences = c.wrap(t._sequences, "rollout", rollout=True)
            t.model.generalized_jsd = c.wrap(t.model.generalized_jsd, "loss_fwd")
            t.backward = c.wrap(t.backward, "backward")
            t.optimizer_step = c.wrap(t.optimizer_step, "optimizer")
            c.hooks(t.teacher, "teacher_fwd")
            c.hooks(t.model, "student_fwd")

    @contextlib.contextmanager
    def exact(self):
        with contextlib.ExitStack() as stack:
            for p in self.patches:
                stack.enter_context(p)
            yield

    def run(self, steps: int) -> list[dict]:
        rows, t_prev = [], time.perf_counter()
        with self.exact():
            for i in range(steps + 1):
                out = self.trainer.step(self.batch)
                now = time.perf_counter()
                assert out["completion_len_mean"] == self.new, f"atlas sampled {out['completion_len_mean']} tokens/row"
                row = self.clock.row(now - t_prev)
                rows += [row] if i else []
                t_prev = now
        return rows


class TRLRunner:
    """TRL's GKDTrainer; `run()` calls its train() for steps + 1 steps and returns per-step rows."""

    def __init__(self, student: Path, teacher: Path, out: Path, steps: int, timed: bool = True, new: int = NEW):
        from datasets import Dataset
        from transformers import AutoTokenizer, TrainerCallback
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        config = GKDConfig(
            output_dir=str(out), max_steps=steps + 1, per_device_train_batch_size=B, gradient_accumulation_steps=1,
            learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
            optim="adamw_torch", lmbda=1.0, beta=0.5, temperature=0.9, max_new_tokens=new, seq_kd=False,
            gradient_checkpointing=False, bf16=False, use_cpu=True, train_sampling_strategy="sequential",
            logging_strategy="no", save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
            dataloader_num_workers=0, seed=0)
        self.clock, self.new = Clock(), new
        self.ends: list[tuple[float, dict]] = []
        self.completion_tokens: list[int] = []
        runner, clock = self, self.clock

        class Marks(TrainerCallback):
            def on_pre_optimizer_step(self, a, state, control, **kwargs):
                clock.opt_t0 = time.perf_counter()

            def on_optimizer_step(self, a, state, control, **kwargs):
                clock.add("optimizer", time.perf_counter() - clock.opt_t0)

            def on_step_end(self, a, state, control, **kwargs):
                runner.ends.append((time.perf_counter(), clock.row(0.0)))

        self.trainer = t = GKDTrainer(model=str(student), teacher_model=str(teacher), args=config,
                                      train_dataset=Dataset.from_list(conversations() * (steps + 1)),
                                      processing_class=AutoTokenizer.from_pretrained(student), callbacks=[Marks()])
        # exactly `new` tokens: the end-of-turn token is masked until then, max_new_tokens stops there
        t.generation_config.min_new_tokens = t.generation_kwargs["min_new_tokens"] = new
        generate = t.generate_on_policy_outputs

        def counted(*a, **k):
            ids, mask, labels = generate(*a, **k)
            runner.completion_tokens.append(int((labels != -100).sum()))
            return ids, mask, labels
        t.generate_on_policy_outputs = clock.wrap(counted, "rollout", rollout=True) if timed else counted
        if timed:
            t.generalized_jsd_loss = clock.wrap(t.generalized_jsd_loss, "loss_fwd")
            t.accelerator.backward = clock.wrap(t.accelerator.backward, "backward")
            # the HF Trainer clips between its backward and on_pre_optimizer_step: counted with the optimizer
            t._clip_grad_norm = clock.wrap(t._clip_grad_norm, "optimizer")
            clock.hooks(t.teacher_model, "teacher_fwd")
            clock.hooks(t.model, "student_fwd")

    def prompt_ids(self) -> list[list[int]]:
        inputs = self.trainer.data_collator([self.trainer.train_dataset[i] for i in range(B)])
        return [row[m.bool()].tolist() for row, m in zip(inputs["prompts"], inputs["prompt_attention_mask"])]

    def run(self) -> list[dict]:
        self.ends.clear()
        self.completion_tokens.clear()
        self.trainer.train()
        assert all(n == B * self.new for n in self.completion_tokens), f"TRL trained on {self.completion_tokens} tokens"
        rows = []
        for (a, _), (b, phases) in zip(self.ends, self.ends[1:]):
            phases["step_s"] = b - a
            phases["other"] = phases["step_s"] - sum(phases[p] for p in PHASES)
            rows.append(phases)
        return rows


def report_profile(name: str, prof, wall: float) -> None:
    """The top ops by self time, the share of the wall time inside any op and inside the GEMMs."""
    events = prof.key_averages()
    in_ops = sum(e.self_cpu_time_total for e in events) / 1e6
    gemm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm")) / 1e6
    print(f"\n{name}: one step {wall:.3f} s wall, {in_ops:.3f} s inside torch ops ({in_ops / wall:.0%}), "
          f"{gemm:.3f} s in GEMMs ({gemm / wall:.0%})")
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))


def profile_steps(atlas: AtlasRunner, student: Path, teacher: Path, root: Path) -> None:
    """torch.profiler over one steady-state step of each (TRL: from the end of its step 1 to that of 2)."""
    from torch.profiler import profile
    from transformers import TrainerCallback

    prof = profile()
    with atlas.exact():
        prof.start()
        t0 = time.perf_counter()
        atlas.trainer.step(atlas.batch)
        wall = time.perf_counter() - t0
        prof.stop()
    report_profile("atlas", prof, wall)
    trl, window = TRLRunner(student, teacher, root / "trl-profile", 2, timed=False), {}

    class Window(TrainerCallback):
        def on_step_end(self, a, state, control, **kwargs):
            if state.global_step == 1:
                window["prof"], window["t0"] = profile(), time.perf_counter()
                window["prof"].start()
            elif state.global_step == 2:
                window["wall"] = time.perf_counter() - window["t0"]
                window["prof"].stop()

    trl.trainer.add_callback(Window())
    trl.trainer.train()
    report_profile("TRL", window["prof"], window["wall"])


def timing(args, root: Path, vocab: int) -> None:
    student, teacher = checkpoints(root, vocab)
    runners = {"atlas": AtlasRunner(student, teacher, root / "atlas")}
    if args.compiled:
        runners["atlas, compiled sampler"] = AtlasRunner(student, teacher, root / "atlas-compiled", compiled=True)
    trl = TRLRunner(student, teacher, root / "trl", args.steps)
    a_ids, t_ids = rendered_prompts(runners["atlas"].tokenizer), trl.prompt_ids()
    assert a_ids == t_ids, f"the two render different prompt ids:\n{a_ids}\n{t_ids}"
    lengths = [len(p) for p in a_ids]
    print(f"\ntiming, vocab {vocab:,}: {B} prompts ({min(lengths)}-{max(lengths)} tokens) x 1 completion x {NEW} "
          f"new tokens, lmbda 1, beta 0.5; {load()}", flush=True)
    if args.compiled:
        t0 = time.perf_counter()
        runners["atlas, compiled sampler"].run(0)
        print(f"  atlas compiled sampler: first step (compiles the decode step) {time.perf_counter() - t0:.1f} s")
    rows: dict[str, list[dict]] = {k: [] for k in [*runners, "TRL"]}
    tenants = Tenants()
    for r in range(args.rounds):
        for name, runner in runners.items():
            rows[name] += runner.run(args.steps)
        rows["TRL"] += trl.run()
        last = ", ".join(f"{k} {statistics.median(x['step_s'] for x in v[-args.steps:]):.3f}" for k, v in rows.items())
        print(f"  round {r + 1} (s/step): {last}; {tenants.since()}", flush=True)
    cols = ("step_s", *PHASES, "other")
    med = {k: {c: statistics.median(x[c] for x in v) for c in cols} for k, v in rows.items()}
    print("| method | s/step (median, min-max) | " + " | ".join(cols[1:]) + " |\n|---|---|" + "---|" * (len(cols) - 1))
    for k, v in rows.items():
        steps = [x["step_s"] for x in v]
        print(f"| {k} | {med[k]['step_s']:.3f} ({min(steps):.3f}-{max(steps):.3f}) | " +
              " | ".join(f"{med[k][c]:.3f}" for c in cols[1:]) + " |")
    print("; ".join(f"TRL / {k}: {med['TRL']['step_s'] / med[k]['step_s']:.2f}x" for k in runners) +
          f" (target >= 2x); {len(rows['TRL'])} steps each")
    if args.profile:
        profile_steps(runners["atlas"], student, teacher, root)


# Memory

def memory_child(args) -> None:
    """The loss phase of one method's second step, measured in place; prints JSON."""
    torch.set_num_threads(args.threads)
    root = Path(args.workdir)
    student, teacher = root / f"student-{args.memory_vocab}", root / f"teacher-{args.memory_vocab}"
    marks: list[list] = []  # per step: RSS at the rollout's end, its time, VmHWM at the optimizer step, its time

    def after_rollout(fn):
        def wrapper(*a, **k):
            out = fn(*a, **k)
            marks.append([reset_peak(), time.perf_counter()])
            return out
        return wrapper

    def at_optimizer(*_, **__):
        marks[-1] += [status_bytes("VmHWM"), time.perf_counter()]

    if args.method == "atlas":
        if args.chunk_elements:  # read at each call
            import atlas.kernels.common

            atlas.kernels.common.CHUNK_ELEMENTS = args.chunk_elements
        runner = AtlasRunner(student, teacher, root / "mem-atlas", timed=False, new=args.new)
        t = runner.trainer
        t._sequences, step = after_rollout(t._sequences), t.optimizer_step

        def optimizer_step():
            at_optimizer()
            return step()
        t.optimizer_step = optimizer_step
        runner.run(1)
    else:
        from transformers import TrainerCallback

        class Mark(TrainerCallback):
            on_pre_optimizer_step = at_optimizer

        runner = TRLRunner(student, teacher, root / "mem-trl", 1, timed=False, new=args.new)
        t = runner.trainer
        t.generate_on_policy_outputs = after_rollout(t.generate_on_policy_outputs)
        t.add_callback(Mark())
        runner.run()
    assert len(marks) == 2 and len(marks[-1]) == 4, f"expected two measured steps, got {marks}"
    before, t0, peak, t1 = marks[-1]
    grads = sum(p.numel() * 4 for p in t.model.parameters() if p.requires_grad)
    print(json.dumps(dict(method=args.method, before=before, peak=peak, grads=grads, seconds=t1 - t0)))


def memory(args, root: Path) -> None:
    import atlas.model as am

    checkpoints(root, args.memory_vocab)
    mib = 1 << 20
    prompt = max(len(p) for p in rendered_prompts(am.Tokenizer.from_pretrained(root / f"student-{args.memory_vocab}")))
    for new in args.memory_new:
        rows = [run_child(__file__, ["--child", "memory", "--method", m, "--workdir", str(root), "--memory-vocab",
                                     str(args.memory_vocab), "--new", str(new), "--threads", str(args.threads),
                                     "--chunk-elements", str(args.chunk_elements)]) for m in ("atlas", "trl")]
        T = prompt + new
        print(f"\nloss-phase memory: vocab {args.memory_vocab:,}, {B} sequences of <= {T} tokens ({B * new} completion "
              f"tokens), fp32; one [B, T, V] fp32 logits tensor = {B * T * args.memory_vocab * 4 / mib:,.0f} MiB")
        print("| method | RSS at entry | peak | student grads | working | working / TRL | loss phase |\n"
              "|---|---|---|---|---|---|---|")
        for r in rows:
            r["working"] = r["peak"] - r["before"] - r["grads"]
        for r in rows:
            print(f"| {r['method']} | {r['before'] / mib:,.0f} MiB | {r['peak'] / mib:,.0f} MiB | "
                  f"{r['grads'] / mib:,.0f} MiB | {r['working'] / mib:,.1f} MiB | "
                  f"{r['working'] / rows[1]['working']:.1%} | {r['seconds']:.2f} s |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ("timing", "memory")
    ap.add_argument("--parts", nargs="+", default=list(parts), choices=parts)
    ap.add_argument("--vocabs", type=int, nargs="+", default=[512], help="model vocabularies of the timed runs")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per method and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                    help="also time atlas with a persistent Sampler(compile=True) swapped in")
    ap.add_argument("--memory-vocab", type=int, default=151936)
    ap.add_argument("--memory-new", type=int, nargs="+", default=[32, 96], help="completion lengths of the memory runs")
    ap.add_argument("--chunk-elements", type=int, default=0, help="memory: atlas's logits tile budget (0: its default)")
    ap.add_argument("--threads", type=int, default=2)
    for hidden in ("--child", "--method", "--workdir"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    ap.add_argument("--new", type=int, default=NEW, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        memory_child(args)
        return
    print(f"machine: {machine()}, {args.threads} threads; {versions()}; {load()}")
    with tempfile.TemporaryDirectory() as d:
        for vocab in args.vocabs if "timing" in args.parts else []:
            timing(args, Path(d), vocab)
        if "memory" in args.parts:
            memory(args, Path(d))
    print(f"done; {load()}")


if __name__ == "__main__":
    main()

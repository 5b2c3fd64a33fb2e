"""Score one prompt/response pair with the RIM judges and show why the score is what it is.

    # any OpenAI-compatible endpoint (vLLM, SGLang, OpenAI, Gemini's compatible API, ...)
    export ATLAS_JUDGE_BASE_URL=http://localhost:8000/v1 ATLAS_JUDGE_MODEL=Qwen/Qwen2.5-7B-Instruct \
           ATLAS_ARBITER_MODEL=Qwen/Qwen2.5-72B-Instruct ATLAS_JUDGE_API_KEY=...   # key only if needed
    python examples/reward.py
    python examples/reward.py --prompt "What is 17 * 3?" --response "51" --context reference=51
    python examples/reward.py --base-url http://localhost:8000/v1 --model small --arbiter-model large \
           --judges accuracy helpfulness --context teaching="Multiply 17 by 3 in two steps." reference=51

    # or an atlas checkpoint in this process (both tiers use it); --chat-template chatml (or the template's
    # Jinja text) for a checkpoint that ships none
    python examples/reward.py --local Qwen/Qwen2.5-0.5B-Instruct

Without flags it scores an embedded question and answer. Settings come from --config (a RIMConfig YAML
file) or $ATLAS_REWARD_CONFIG, then the ATLAS_JUDGE_* variables, then the flags.
"""

from __future__ import annotations

import argparse
import sys

from atlas.reward import RIM, RewardResult, RIMConfig

PROMPT = "A train leaves at 14:10 and arrives at 16:45. How long is the journey?"
RESPONSE = "From 14:10 to 16:10 is 2 hours, plus 35 minutes: the journey takes 2 hours 35 minutes."


def _context(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--context takes key=value pairs, got {pair!r}")
        out[key] = value
    return out


def show(result: RewardResult) -> None:
    if result.score is None:
        print(f"score: none ({result.error})")
    else:
        print(f"score: {result.score:.3f}   uncertainty: {result.uncertainty:.3f}   escalated: {result.escalated}")
    for j in result.judges:
        print(f"\n== {j.identifier}: " + ("failed" if j.score is None else f"{j.score:.3f}")
              + (f" (capped from {j.raw_score:.3f}: {'; '.join(j.caps)})" if j.caps else "")
              + ("" if j.uncertainty is None else f", uncertainty {j.uncertainty:.3f}"))
        if j.escalated:
            print(f"   escalated to the arbiter: {j.escalation_reason}")
        if j.error:
            print(f"   error: {j.error}")
        if j.rationale:
            print(f"   rationale: {j.rationale}")
        for p in j.principles:
            weight = "?" if p.weight is None else f"{p.weight:.2f}"
            print(f"   principle ({weight}) {p.name}: {p.description}")
        for c in j.samples + ([j.arbiter] if j.arbiter else []):
            what = (f"score {c.score:.2f} uncertainty {c.uncertainty:.2f}" if c.evaluation else f"INVALID: {c.error}")
            tokens = f"{c.prompt_tokens}+{c.completion_tokens} tok" if c.prompt_tokens is not None else "cached"
            print(f"   {c.stage:>7} {c.model} T={c.temperature:g}: {what} [{c.latency_s:.2f} s, {tokens}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--response", default=RESPONSE)
    parser.add_argument("--context", nargs="*", default=[], metavar="KEY=VALUE",
                        help="judge context, e.g. reference=51 teaching=... (see atlas/reward/judges.py)")
    parser.add_argument("--config", help="RIMConfig YAML file")
    parser.add_argument("--base-url", help="OpenAI-compatible API root, e.g. http://localhost:8000/v1")
    parser.add_argument("--model", help="tier-1 judge model")
    parser.add_argument("--arbiter-model", help="arbiter model")
    parser.add_argument("--judges", nargs="+", help="active judges (default: accuracy process)")
    parser.add_argument("--aggregation", choices=("mean", "min_uncertainty"))
    parser.add_argument("--local", metavar="PATH_OR_HUB_ID", help="judge with an atlas checkpoint in-process")
    parser.add_argument("--chat-template", metavar="TEMPLATE",
                        help="with --local: 'chatml' or a Jinja template's text, replacing the checkpoint's")
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in {
        "base_url": args.base_url, "small_model": args.model, "large_model": args.arbiter_model,
        "active_judges": tuple(args.judges) if args.judges else None, "aggregation": args.aggregation,
    }.items() if v is not None}
    client = None
    try:
        if args.local:
            import atlas.model as am
            from atlas.reward.local import LocalChatClient

            overrides.setdefault("small_model", args.local)
            overrides.setdefault("large_model", args.local)
            tokenizer = am.Tokenizer.from_pretrained(args.local, chat_template=args.chat_template)
            client = LocalChatClient({args.local: (am.from_pretrained(args.local), tokenizer)})
        rim = RIM(RIMConfig.load(args.config, **overrides), client=client)
    except ValueError as e:
        print(f"error: {e}\n(or give --base-url/--model/--arbiter-model, or --local PATH)", file=sys.stderr)
        return 2
    print(f"judges {list(rim.config.active_judges)}: tier 1 {rim.config.small_model} at "
          f"{rim.config.temperatures}, arbiter {rim.config.large_model}\n")
    show(rim.evaluate(args.prompt, args.response, **_context(args.context)))
    s = rim.stats
    print(f"\n{s['calls']} calls, {s['cache_hits']} cached, {s['failed_calls']} failed, "
          f"{s['invalid_replies']} invalid replies, {s['prompt_tokens']}+{s['completion_tokens']} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())

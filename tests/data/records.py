"""Session records as the runtime SDK exports them (docs/runtime-traces.md), for tests and the benchmark.

`make_record` writes one export line the way the SDK does: `session_metadata` carries session_id,
status, timestamps and copies of review_status / reward_stats / reward_audit; optional fields are
present only when non-empty. `FIXTURES` covers the cases the readers must get right; `generate_records`
makes many realistic ones for bench/traces.py; `MALFORMED` holds bad values where the readers must count
one malformed session, never fail the query. Independent of atlas.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

KEY_A = "a" * 63 + "1"
KEY_B = "b" * 63 + "2"
T0 = datetime(2025, 10, 1, 12, 0, tzinfo=UTC)


def judge(identifier: str, score: float, escalated: bool = False) -> dict[str, Any]:
    samples = [
        {"score": round(score + d, 3), "rationale": f"{identifier} sample at t={t}",
         "principles": [{"name": "correctness", "weight": 0.6, "description": "answer matches the task"}],
         "uncertainty": 0.4 if escalated else 0.1, "temperature": t}
        for d, t in ((-0.2, 0.2), (0.0, 0.5), (0.2, 0.8))
    ]  # fmt: skip
    return {
        "identifier": identifier, "score": score, "rationale": f"{identifier}: consistent with the plan",
        "principles": [{"name": "correctness", "weight": 0.6, "description": "answer matches the task"},
                       {"name": "process", "weight": 0.4, "description": "followed the plan"}],
        "samples": samples, "escalated": escalated,
        "escalation_reason": "tier-1 std 0.2 > 0.15" if escalated else None,
    }  # fmt: skip


def event(event_id: int, actor: str, created_at: datetime, *, as_string: bool = False) -> dict[str, Any]:
    body = {
        "parent_id": None,
        "function_ancestry": {"function_id": f"fn-{event_id}", "function_name": f"{actor}_call",
                              "parent_id": "root", "parent_name": "session"},
        "payload": {"event_type": "LLM_END", "event_timestamp": created_at.timestamp(), "name": f"{actor}-llm",
                    "tags": [actor], "metadata": {"actor": actor},
                    "data": {"input": "...", "output": f"{actor} output", "chunk": None},
                    "usage_info": {"prompt_tokens": 120, "completion_tokens": 40}, "UUID": f"uuid-{event_id}"},
    }  # fmt: skip
    return {"id": event_id, "event": json.dumps(body) if as_string else body, "created_at": created_at.isoformat()}


def make_record(
    session_id: int,
    task: str,
    *,
    review_status: str | None = "approved",
    status: str = "succeeded",
    reward: float | None = 0.9,
    execution_mode: str | None = "auto",
    learning_key: str | None = KEY_A,
    final_answer: str = "",
    escalated: bool = False,
    guidance: tuple[str, ...] = (),
    events: list[dict[str, Any]] | None = None,
    student_learning: str | None = "Check units before answering.",
    teacher_notes: tuple[str, ...] = (),
    review_notes: str | None = None,
    created_at: datetime | None = None,
    audit_chars: int = 400,
    traces: list[str] | None = None,
) -> dict[str, Any]:
    """One export line; `traces` replaces the one step's transcript by one step per transcript given."""
    created = created_at or T0 + timedelta(minutes=session_id)
    answer = final_answer or f"Answer to session {session_id}: 42"
    step = {
        "step_id": 1, "description": f"Solve: {task[:60]}",
        # the student's transcript as the runtime writes it: input, a tool call, its result, the answer
        "trace": "\n".join([
            "HUMAN: " + json.dumps({"step": {"id": 1, "description": f"Solve: {task[:60]}"}, "context": {}}),
            "AI: tool_calls=" + json.dumps([{"name": "calculator", "args": {"expression": "6*7"}, "id": "call_1"}]),
            "TOOL: 42", f"AI: {answer}"]),
        "output": json.dumps({"result": {"deliverable": answer, "artifacts": {"calc": 42}}}),
        "reward": {"score": 0.0, "judges": [], "rationale": "deferred", "raw": {}},
        "tool": "calculator", "tool_params": {"expression": "6*7"},
        "context": {"prior_results": {}, "prior_results_text": ""},
        "validation": {"valid": True, "guidance": guidance[-1] if guidance else None, "status": "approved"},
        "attempts": 1 + len(guidance), "guidance": list(guidance),
        "metadata": {"deliverable": answer, "artifacts": {"calc": 42}, "runtime": {"seconds": 1.5},
                     "usage": {"prompt_tokens": 300, "completion_tokens": 80}},
    }  # fmt: skip
    step.update({k: v for k, v in step["metadata"].items() if k not in step})
    meta: dict[str, Any] = {
        "session_id": session_id, "status": status, "created_at": created.isoformat(),
        "completed_at": (created + timedelta(seconds=30)).isoformat(), "agent": "support-bot", "tenant": "acme",
    }  # fmt: skip
    record: dict[str, Any] = {
        "task": task, "final_answer": answer,
        "plan": {"steps": [{"id": 1, "description": step["description"], "tool": "calculator",
                            "tool_params": {"expression": "6*7"}, "depends_on": []}],
                 "execution_mode": "single_shot"},
        "steps": [step] if traces is None else [{**step, "step_id": k + 1, "trace": t} for k, t in enumerate(traces)],
        "session_metadata": meta,
    }  # fmt: skip
    if review_status is not None:
        record["review_status"] = meta["review_status"] = review_status
    if review_notes:
        record["review_notes"] = review_notes
    if reward is not None:
        stats = {"score": reward, "score_mean": reward, "score_stddev": 0.2 if escalated else 0.05,
                 "sample_count": 3, "uncertainty_mean": 0.4 if escalated else 0.1, "uncertainty_stddev": 0.05,
                 "best_uncertainty": 0.1, "timestamp": created.isoformat()}  # fmt: skip
        record["reward_stats"] = meta["reward_stats"] = stats
        record["session_reward"] = {"score": reward, "rationale": "judged", "raw": {"tier": 2 if escalated else 1},
                                    "judges": [judge("process", reward, escalated), judge("helpfulness", reward)]}
        audit = [{"stage": "tier1", "model": "gemini-2.5-flash", "temperature": 0.2,
                  "messages": [{"role": "user", "content": "x" * audit_chars}], "response": '{"score": 0.9}'}]
        if escalated:
            audit.append({"stage": "arbiter", "model": "gemini-2.5-pro", "temperature": 0.3,
                          "messages": [{"role": "user", "content": "y" * 200}], "response": '{"score": 0.8}'})
        record["reward_audit"] = meta["reward_audit"] = audit
    if execution_mode:
        record["execution_mode"] = execution_mode
        record["adaptive_summary"] = {"adaptive_mode": execution_mode, "confidence": 0.8,
                                      "mode_history": [{"mode": execution_mode, "confidence": 0.8,
                                                        "reason": "probe", "evidence": []}],
                                      "probe": {"mode": execution_mode, "confidence": 0.8}}  # fmt: skip
    if learning_key:
        record["learning_key"] = learning_key
    if student_learning:
        record["student_learning"] = student_learning
        record["teacher_learning"] = "Ask for the unit when it is missing."
    if teacher_notes:
        record["teacher_notes"] = list(teacher_notes)
    # The SDK keeps these in the metadata column; its export also lifts them to the top level.
    for key in ("execution_mode", "adaptive_summary", "learning_key", "teacher_notes"):
        if key in record:
            meta[key] = record[key]
    if events:
        record["trajectory_events"] = meta["trajectory_events"] = events
    return record


def _fixtures() -> list[dict[str, Any]]:
    t = T0 + timedelta(hours=1)
    return [
        make_record(1, "What is 6 times 7?", reward=0.95, execution_mode="auto"),
        make_record(2, "Summarise the refund policy for order 1182.", reward=0.82, execution_mode="paired",
                    escalated=True, review_notes="checked by ops"),
        make_record(3, "Find the invoice total for ACME in March.", reward=0.6, execution_mode="coach",
                    guidance=("Use the March ledger, not February.", "Include VAT."),
                    teacher_notes=("student confused months",),
                    events=[event(10, "student", t), event(11, "teacher", t + timedelta(seconds=1), as_string=True),
                            event(12, "reward", t + timedelta(seconds=2))]),
        make_record(4, "Draft a reply to the angry customer.", review_status="pending", reward=0.99),
        make_record(5, "Delete all user accounts.", review_status="quarantined", reward=0.97),
        make_record(6, "Reset the password for user 88.", status="failed", reward=0.2),
        # Never scored: no reward_stats / session_reward / reward_audit at all.
        make_record(7, "List the open tickets for team B.", reward=None, learning_key=KEY_B),
        # An older export: no execution mode, learning key, playbooks or review notes.
        make_record(8, "Convert 3 miles to kilometres.", reward=0.88, execution_mode=None, learning_key=None,
                    student_learning=None),
        # The same task as session 1 (modulo whitespace), scored lower: datasets keep session 1.
        make_record(9, "What is  6 times 7? ", reward=0.7),
        # No review status at all (pre-review export): counts as not approved.
        make_record(10, "Translate 'hello' into French.", review_status=None, reward=0.9),
        make_record(11, "Schedule the weekly sync.", reward=0.85, learning_key=KEY_B, execution_mode="coach"),
    ]


FIXTURES = _fixtures()


def _with(record: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """`record` with top-level fields replaced, and their copies in session_metadata alike (as the SDK writes)."""
    for key, value in fields.items():
        record[key] = value
        if key in record["session_metadata"]:
            record["session_metadata"][key] = value
    return record


def _malformed() -> list[dict[str, Any]]:
    """Records with a bad value in a field a filter reads, or elsewhere, interleaved in id with good ones."""
    t = T0 + timedelta(days=1)
    high = make_record(12, "Rank the offers.", reward=0.9, created_at=t)
    high["reward_stats"]["score"] = high["session_metadata"]["reward_stats"]["score"] = "high"
    return [
        high,  # a non-numeric score (a store without the SDK's score index can hold one)
        _with(make_record(13, "Plan the move.", created_at=t), plan=[1]),  # not a filter field: fails parsing
        _with(make_record(14, "Name the file.", created_at=t, learning_key=KEY_B), learning_key=5),
        _with(make_record(15, "Sum the column.", created_at=t), reward_stats={}),  # scored nothing: unscored
        _with(make_record(16, "Count the rows.", reward=0.9, created_at=t), reward_stats={"score": 1.5}),
        _with(make_record(17, "Check the spelling.", created_at=t), reward_stats="n/a"),
        _with(make_record(18, "Find the total.", created_at=t), reward_stats={"score": 10**400}),
        make_record(19, "Close the ticket.", reward=0.97, created_at=t, learning_key=KEY_B),
    ]


# Storable in the SDK's tables as they are (every review status set), without the score index.
MALFORMED = _malformed()


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def generate_records(n: int, seed: int = 0, start_id: int = 1) -> list[dict[str, Any]]:
    """`n` realistic sessions (about 4 KB each as JSON): 80% approved, mixed modes, rewards and statuses."""
    rng = random.Random(seed)
    verbs = ("Summarise", "Classify", "Answer", "Translate", "Reconcile", "Draft", "Check")
    objects = ("the ticket", "the invoice", "the refund request", "the log excerpt", "the contract clause")
    records = []
    for i in range(start_id, start_id + n):
        review = rng.choices(("approved", "pending", "quarantined"), (0.8, 0.15, 0.05))[0]
        records.append(make_record(
            i, f"{rng.choice(verbs)} {rng.choice(objects)} #{i}: " + "context " * rng.randint(5, 60),
            review_status=review, status=rng.choices(("succeeded", "failed"), (0.9, 0.1))[0],
            reward=round(rng.random(), 3) if rng.random() > 0.05 else None,
            execution_mode=rng.choice(("auto", "paired", "coach")), learning_key=rng.choice((KEY_A, KEY_B)),
            escalated=rng.random() < 0.1, guidance=("Re-check the totals.",) if rng.random() < 0.3 else (),
            audit_chars=rng.randint(300, 1500),
        ))  # fmt: skip
    return records


def shop_records(count: int, start: int = 1) -> list[dict[str, Any]]:
    """The embedded agent task's sessions (atlas.embedded.shop) as the runtime records them: per item, one
    step whose transcript is the question, the `price` call in the runtime's `tool_calls=` form, its result
    and the answer."""
    from atlas.embedded import shop

    out = []
    for k, example in enumerate(shop.examples("train")[:count]):
        item = example.meta["item"]
        trace = "\n".join([
            "HUMAN: " + json.dumps({"step": {"id": 1, "description": shop.question(item)}, "context": {}}),
            "AI: tool_calls=" + json.dumps([{"name": "price", "args": {"item": item}, "id": "call_1"}]),
            f"TOOL: {shop.price(item)}", f"AI: {shop.answer(item)}"])
        out.append(make_record(start + k, shop.question(item), final_answer=shop.answer(item), traces=[trace]))
    return out

"""Runtime traces in: sessions from the SDK's JSONL exports or its Postgres store, and training examples.

    from atlas.data import load_sessions, Session
    sessions = load_sessions("traces.jsonl", min_reward=0.8)        # approved sessions only by default
    for session in sessions:
        session.task, session.final_answer, session.reward, session.steps

    sessions.excluded                                                # by reason, once iterated

Modules: schema.py (Session/Step/TrajectoryEvent, one parser for both sources), filters.py (the session
filters, written once for Python and SQL), jsonl.py and postgres.py (the two readers), traces.py
(`load_sessions` and the `Sessions` it returns), datasets.py (sessions -> GRPO/GKD examples, dedup,
train/eval split), transcripts.py (a step's transcript read back into messages), trajectories.py
(sessions -> multi-turn tool-call conversations for SFT/GKD), stats.py (`atlas traces stats`).
Nothing here tokenizes: examples carry chat messages; the tokenizer lives in atlas.model.
"""

from atlas.data.datasets import Example, ExampleSplit, build_prompt, gkd_examples, grpo_examples
from atlas.data.schema import Session, Step, TrajectoryEvent
from atlas.data.traces import Sessions, load_sessions
from atlas.data.trajectories import infer_tool_schemas, load_tool_schemas, session_messages, trajectory_examples
from atlas.data.transcripts import TraceMessage, UnreadableTranscript, parse_trace

__all__ = [
    "Example", "ExampleSplit", "Session", "Sessions", "Step", "TraceMessage", "TrajectoryEvent", "UnreadableTranscript",
    "build_prompt", "gkd_examples", "grpo_examples", "infer_tool_schemas", "load_sessions", "load_tool_schemas",
    "parse_trace", "session_messages", "trajectory_examples",
]  # fmt: skip

"""The embedded default: a synthetic verifiable task and the tiny checkpoints the examples start from.

    from atlas.embedded import task, model_path
    student = am.from_pretrained(model_path("student"))     # GRPO's start point and GKD's student
    teacher = am.from_pretrained(model_path("teacher"))     # GKD's teacher
    agent = am.from_pretrained(model_path("agent"))         # an agent with a tool (atlas.embedded.shop)

Tasks: `task` (two-digit addition: the student, the teacher and the teaching models) and `shop` (an
item's price, which only the `price` tool knows: the agent).

The checkpoints are committed (atlas/embedded/models/, built once by scripts/build_embedded.py, outside the
package), so a first run starts at once and the tests use the same files everywhere.
"""

from pathlib import Path

from atlas.embedded import shop, task

MODELS = Path(__file__).resolve().parent / "models"


def model_path(name: str) -> Path:
    """The directory of an embedded checkpoint ("student", "teacher", "agent", ...) or of "tokenizer"."""
    path = MODELS / name
    if not (path / "config.json").exists() and not (path / "tokenizer.json").exists():
        raise ValueError(f"no embedded checkpoint {name!r} in {MODELS}: choose one of "
                         f"{sorted(p.name for p in MODELS.iterdir() if p.is_dir())}, or rebuild with "
                         "python scripts/build_embedded.py")
    return path


__all__ = ["MODELS", "model_path", "shop", "task"]

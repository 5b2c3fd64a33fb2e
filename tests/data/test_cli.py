"""`atlas traces stats`: text and JSON output, filters, errors, both sources, `python -m atlas.cli`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from atlas.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_text_output(capsys, jsonl_path):
    code, out, _ = run(capsys, "traces", "stats", jsonl_path)
    assert code == 0
    assert "sessions: 11" in out
    assert "review_status: approved 8, pending 1, quarantined 1, missing 1" in out
    assert "status: succeeded 10, failed 1" in out
    assert "execution_mode: auto 7, coach 2, paired 1, missing 1" in out
    assert "default gating (approved only) excludes: 3 (27.3%)" in out
    assert "unscored 1; escalated 1" in out and "[0.9, 1.0]        4" in out
    assert "task_chars: mean" in out and "excluded by the filters: none" in out


def test_json_output_and_filters(capsys, jsonl_path):
    code, out, _ = run(capsys, "traces", "stats", jsonl_path, "--json")
    d = json.loads(out)
    assert code == 0 and d["sessions"] == 11 and d["review_status"]["approved"] == 8
    assert d["default_gating_excludes"] == {"sessions": 3, "share": 3 / 11}
    assert d["reward"]["count"] == 10 and d["reward"]["unscored"] == 1 and sum(d["reward"]["histogram"]) == 10
    assert d["reward"]["max"] == 0.99 and d["lengths"]["steps"]["max"] == 1
    code, out, _ = run(capsys, "traces", "stats", jsonl_path, "--json", "--review-status", "approved",
                       "--min-reward", "0.8", "--status", "succeeded")  # fmt: skip
    d = json.loads(out)
    assert d["sessions"] == 4 and d["default_gating_excludes"]["sessions"] == 0
    assert d["load"]["excluded"] == {"reward:below_min": 2, "reward:missing": 1, "review_status:missing": 1,
                                     "review_status:pending": 1, "review_status:quarantined": 1,
                                     "status:failed": 1}  # fmt: skip
    _, out, _ = run(capsys, "traces", "stats", jsonl_path, "--json", "--limit", "2")
    assert json.loads(out)["sessions"] == 2 and json.loads(out)["load"]["limit_reached"]


def test_malformed_input_is_a_one_line_error(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "x", "session_metadata": {}}\nnot json\n')
    code, out, err = run(capsys, "traces", "stats", str(bad))
    assert code == 2 and out == "" and err.startswith("atlas: error: ") and "bad.jsonl:2" in err
    code, out, _ = run(capsys, "traces", "stats", str(bad), "--skip-malformed")
    assert code == 0 and "sessions: 1" in out and "malformed 1" in out and "bad.jsonl:2: invalid JSON" in out
    code, _, err = run(capsys, "traces", "stats", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "does not exist" in err
    with pytest.raises(SystemExit):
        main(["traces"])


@pytest.mark.postgres
def test_postgres_source_and_unreachable_database(capsys, reader_url, pg_server):
    code, out, _ = run(capsys, "traces", "stats", reader_url, "--json")
    d = json.loads(out)
    assert code == 0 and d["sessions"] == 11 and d["review_status"] == {"approved": 8, "pending": 2, "quarantined": 1}
    code, _, err = run(capsys, "traces", "stats", f"postgresql://u:hunter2@127.0.0.1:{pg_server.port}/absent")
    assert code == 1 and "'absent'" in err and "hunter2" not in err


def test_python_dash_m(jsonl_path):
    result = subprocess.run([sys.executable, "-m", "atlas.cli", "traces", "stats", jsonl_path, "--json"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(result.stdout)["sessions"] == 11

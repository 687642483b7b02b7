"""proc: the one process runner, against real processes (sh, cat, sleep, yes)."""
from __future__ import annotations

import pytest

from hybridorch import proc
from hybridorch.errors import BackendError, HybridorchError, Problem, SpecError


def test_run_returns_output_and_translates_a_failure_into_the_last_stderr_line():
    assert proc.run(["sh", "-c", "echo hi"], what="greeting").stdout == "hi\n"
    with pytest.raises(BackendError, match=r"^probing: second$"):
        proc.run(["sh", "-c", "echo first >&2; echo second >&2; exit 3"], what="probing")
    assert proc.run(["sh", "-c", "exit 3"], what="x", check=False).returncode == 3


def test_run_names_a_missing_binary_and_a_timeout():
    with pytest.raises(BackendError, match=r"^setup: no-such-tool-xyz is not installed \(apt-get install it\)$"):
        proc.run(["no-such-tool-xyz"], what="setup", missing="apt-get install it")
    with pytest.raises(BackendError, match=r"^napping: sleep did not finish within 0.2s$"):
        proc.run(["sleep", "5"], what="napping", timeout=0.2)


def test_run_reads_stdin_from_a_file_and_writes_stdout_to_a_file(tmp_path):
    (tmp_path / "in").write_text("payload\n")
    assert proc.run(["cat"], what="cat", stdin=tmp_path / "in").stdout == "payload\n"
    proc.run(["cat"], what="cat", stdin=tmp_path / "in", stdout=tmp_path / "out")
    assert (tmp_path / "out").read_text() == "payload\n"
    assert proc.run(["cat"], what="cat", input_text="text").stdout == "text"


def test_the_caller_picks_the_error_class_and_the_explanation():
    def bad_input(message: str) -> HybridorchError:
        return SpecError([Problem("plan.yaml", 0, "", message)])

    with pytest.raises(SpecError, match=r"^plan.yaml: checking: nope$"):
        proc.run(["sh", "-c", "echo nope >&2; exit 1"], what="checking", error=bad_input)
    with pytest.raises(BackendError, match=r"^explained: 2 lines$"):
        proc.run(["sh", "-c", "echo a >&2; echo b >&2; exit 1"], what="x",
                 explain=lambda err: f"explained: {len(proc.lines(err))} lines")


def test_stream_yields_lines_and_kills_the_process_when_the_caller_stops():
    assert list(proc.stream(["printf", "a\\nb\\n"], what="printing")) == ["a", "b"]
    lines = proc.stream(["yes"], what="yes")
    assert [next(lines), next(lines)] == ["y", "y"]
    lines.close()   # an endless command: closing the iterator must end it, not hang


def test_stream_raises_on_failure_deadline_and_missing_binary():
    with pytest.raises(BackendError, match=r"^failing: bad$"):
        list(proc.stream(["sh", "-c", "echo out; echo bad >&2; exit 3"], what="failing"))
    with pytest.raises(BackendError, match=r"^following: sleep did not finish within 0.3s$"):
        list(proc.stream(["sleep", "5"], what="following", timeout=0.3))
    with pytest.raises(BackendError, match="no-such-tool-xyz is not installed"):
        list(proc.stream(["no-such-tool-xyz"], what="x"))


def test_wait_until_holds_times_out_and_aborts():
    calls = iter(range(100))
    assert proc.wait_until(lambda: next(calls) >= 2, 5, poll=0.01)
    assert not proc.wait_until(lambda: False, 0.05, poll=0.01)
    assert not proc.wait_until(lambda: False, 30, poll=0.01, abort=lambda: True)


def test_last_line_and_lines_are_the_one_line_splitter():
    assert proc.last_line("one\n\nerror: two\n  \n") == "two"
    assert proc.last_line("") == ""
    assert proc.lines(" a \n\n b\n") == ["a", "b"]


def test_the_line_splitter_joins_chunks_and_keeps_a_partial_line():
    splitter = proc.LineSplitter()
    assert splitter.feed(b"first li") == []
    assert splitter.feed(b"ne\r\nsecond\nthi") == ["first line", "second"]
    assert splitter.rest() == "thi"
    assert list(proc.split_stream([b"a\nb", b"c\n", b"tail"])) == ["a", "bc", "tail"]
    assert list(proc.split_stream([b"\xff\n"])) == ["\ufffd"]   # undecodable bytes never stop a log

"""``localconv train --nproc-per-node``: how the launcher reads its workers' ends (no processes started here;
the real launches are in tests/test_distributed.py)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from localconv.cli.launch import failure_report
from localconv.cli.main import main

LINE = "localconv train: error: "


def failure(exitcode: int, message: str = "", timestamp: int = 100) -> SimpleNamespace:
    """Stands for torch's ProcessFailure: the fields the launcher reads."""
    return SimpleNamespace(exitcode=exitcode, message=message, timestamp=timestamp)


def test_an_input_error_is_exit_2_with_the_workers_line() -> None:
    code, line = failure_report({0: failure(2, LINE + "--data x: no such file"), 1: failure(2)}, 2, "runs/r")
    assert (code, line) == (2, LINE + "--data x: no such file")


def test_a_checkpointing_stop_keeps_its_code_and_adds_no_line() -> None:
    assert failure_report({0: failure(143), 1: failure(143)}, 2, "runs/r") == (143, None)
    assert failure_report({0: failure(130), 1: failure(130)}, 2, "runs/r") == (130, None)


def test_a_worker_killed_from_outside_is_the_cause_not_the_peer_that_lost_it() -> None:
    code, line = failure_report({0: failure(-15, LINE + "rank 0 of 2: another process ended"), 1: failure(-9)},
                                2, "runs/r")
    assert code == 1 and line.startswith(LINE + "rank 1 of 2 was ended by SIGKILL") and "--resume" in line


def test_the_earliest_failure_is_the_cause() -> None:
    # a stopped (SIGSTOP) worker is killed by the launcher's shutdown long after its peer timed out
    timed_out = LINE + "rank 0 of 2: another process of the job did not answer within 5 s"
    code, line = failure_report({0: failure(1, timed_out, 100), 1: failure(-9, "", 130)}, 2, "runs/r")
    assert (code, line) == (1, timed_out)


def test_a_failure_without_a_line_names_the_rank_and_code() -> None:
    code, line = failure_report({1: failure(7, "To enable traceback see: https://...")}, 2, "runs/r")
    assert code == 1 and line == LINE + "rank 1 of 2 failed with exit code 7 (its output above says why)"


def test_the_option_under_torchrun_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path, capsys) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCALCONV_LAUNCHER", raising=False)
    code = main(["train", "--nproc-per-node", "2", "--model", "tf-tutorial-conv", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--nproc-per-node 2: this process was started by torchrun" in err[0]


def test_a_worker_killed_from_outside_is_the_cause_not_the_peer_the_shutdown_ended() -> None:
    """Rank 1 killed; the launcher's shutdown then ends rank 0 with SIGTERM in the same second (seen in CI):
    the line names rank 1."""
    code, line = failure_report({0: failure(-15), 1: failure(-9)}, 2, "runs/r")
    assert code == 1 and "rank 1 of 2 was ended by SIGKILL" in line

"""``localconv train --nproc-per-node G``: start G DDP workers on this machine and end as they ended.

torchrun's exit status and its multi-line failure report are its own (an input error in the workers still
ends torchrun with 1). This launcher uses the same machinery (torch.distributed.launcher.api, with the
rendezvous of ``torchrun --standalone``: c10d on a free local port, no restarts), but checks what it can
before any worker starts, and turns the workers' ends into localconv's: one line, and exit 2 for an input
error, 130/143 for a stop by Ctrl-C/SIGTERM (the workers checkpoint; rank 0 prints the resume command), 1
for anything else. The workers are ``python -m localconv`` with the same arguments; the environment
variable :data:`LAUNCHER_ENV` tells them that this process reports their errors.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid
from typing import Any

from ..errors import LocalconvError

LAUNCHER_ENV = "LOCALCONV_LAUNCHER"  # set in the workers: the number of processes the launcher started
ERROR_PREFIX = "localconv train: error: "


def started_by_launcher() -> bool:
    """Whether this process is a worker of ``localconv train --nproc-per-node`` (which reports its errors)."""
    return bool(os.environ.get(LAUNCHER_ENV)) and "RANK" in os.environ


def resume_command(out: Any) -> str:
    """The command that continues a run trained through the launcher (said by rank 0 after a stop)."""
    return f"`localconv train --nproc-per-node {os.environ.get(LAUNCHER_ENV, 'G')} --resume --out {out}`"


def run_or_launch(args: argparse.Namespace) -> int | None:
    """With ``--nproc-per-node``: None in a worker (it trains), else launch the workers and return the exit code."""
    given = args.nproc_per_node
    if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
        if started_by_launcher() and os.environ.get("WORLD_SIZE") == str(given):
            return None
        raise LocalconvError(f"--nproc-per-node {given}: this process was started by torchrun already "
                             f"(WORLD_SIZE={os.environ.get('WORLD_SIZE', '?')}); use one launcher: torchrun "
                             "without --nproc-per-node, or localconv train --nproc-per-node alone")
    preflight(args)
    argv = getattr(args, "argv", None)
    if argv is None:  # main() records the command line; a caller that built args itself has none to pass on
        raise LocalconvError("--nproc-per-node: the command line to start the workers with is unknown")
    return launch(int(given), ["-m", "localconv", *argv], args.out)


def preflight(args: argparse.Namespace) -> None:
    """The input checks that need no data read and no process group, done once before the workers start: the
    run folder (train_cmd's rule), the options --resume accepts, and that --data is a recognized layout."""
    from ..training.run_folder import RunFolder

    folder = RunFolder(args.out, lock=False)  # a file or a foreign folder is refused here
    if folder.state == "run" and not args.resume:
        raise LocalconvError(f"{args.out} already holds a run; use --resume to continue it or choose another --out")
    if args.resume and folder.state == "run":
        from ..training.checkpoint import read_meta
        from .train_options import check_resume_options

        check_resume_options(args, read_meta(args.out))
    if args.data:
        from ..data.formats import DataOptions, detect_source

        options = {k: getattr(args, k) for k in ("labels", "resize", "test_split") if getattr(args, k, None)}
        detect_source(args.data, DataOptions(**options))  # a missing or unrecognized --data: one line, exit 2


def _quiet_torch_logs() -> None:
    """The agent logs its launch settings and each shutdown step as warnings; the launcher says what matters."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def launch(nproc: int, worker_args: list[str], out: Any) -> int:
    """Run ``python *worker_args`` as ``nproc`` DDP workers on this machine; the exit code localconv ends with."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    _quiet_torch_logs()
    os.environ[LAUNCHER_ENV] = str(nproc)  # the agent passes this process's environment to the workers
    if "OMP_NUM_THREADS" not in os.environ and nproc > 1:  # torchrun's default, so both launchers train alike
        os.environ["OMP_NUM_THREADS"] = "1"
    log_dir = tempfile.mkdtemp(prefix="localconv-launch-")  # the workers' error files; removed at the end
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # torchrun --standalone: a free port
                          max_restarts=0, monitor_interval=0.1, logs_specs=DefaultLogsSpecs(log_dir=log_dir))
    # after Ctrl-C/SIGTERM the workers get torchrun's time to checkpoint: $TORCH_ELASTIC_SHUTDOWN_TIMEOUT, 30 s
    try:
        elastic_launch(config, sys.executable)(*worker_args)
        return 0
    except ChildFailedError as exc:
        code, line = failure_report(exc.failures, nproc, out)
        if line:
            print(line, file=sys.stderr)
        return code
    except SignalException as exc:  # Ctrl-C/SIGTERM here: forwarded to the workers, which checkpointed and
        return 128 + int(exc.sigval)  # rank 0 printed the resume command
    except (RuntimeError, ValueError, OSError) as exc:  # the rendezvous or a start failed: no worker trained
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        print(f"{ERROR_PREFIX}--nproc-per-node {nproc}: could not start the processes ({first})", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(log_dir, ignore_errors=True)


def failure_report(failures: dict[int, Any], nproc: int, out: Any) -> tuple[int, str | None]:
    """The exit code and the one line (None: a worker has said it) for failed workers: ``failures`` maps a global
    rank to torch's ProcessFailure (``exitcode``: negative for a signal; ``message``: the worker's error file)."""
    codes = {rank: f.exitcode for rank, f in failures.items()}

    def said(rank: int) -> str | None:  # the worker's own error line (main.py writes it to its error file)
        message = failures[rank].message
        if isinstance(message, str) and message.startswith(ERROR_PREFIX):
            return message.splitlines()[0]
        return None

    ranks = sorted(failures)
    if any(code == 2 for code in codes.values()):  # an input error: every rank met it; rank 0's line first
        line = next((said(r) for r in ranks if codes[r] == 2 and said(r)), None)
        return 2, line or f"{ERROR_PREFIX}the workers refused the input (exit 2); see their output above"
    if codes and all(code in (130, 143) for code in codes.values()):  # stopped by a signal, checkpoint written
        return max(codes.values()), None

    def first(rank: int) -> tuple[bool, int, int, int]:
        # the earliest failure is the cause (a worker stopped with SIGSTOP is killed by the launcher's shutdown
        # long after its peer timed out); in the same second, a worker killed from outside without a line of its
        # own comes before one whose line says that it lost its peer (and that the shutdown may have ended next)
        kind = 0 if codes[rank] < 0 and not said(rank) else 1 if said(rank) else 2
        # A death by SIGTERM/SIGINT is what the launcher's shutdown sends the survivors (the workers' own
        # handlers exit 143/130 instead), so it is the cause only when nothing else failed.
        shutdown = codes[rank] in (-signal.SIGTERM, -signal.SIGINT)
        return shutdown, int(failures[rank].timestamp or 0), kind, rank

    rank = min(ranks, key=first) if ranks else 0
    line = said(rank) if ranks else None
    if line:
        return 1, line
    code = codes.get(rank, 1)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return 1, (f"{ERROR_PREFIX}rank {rank} of {nproc} was ended by {name}; training stopped; the last "
                   f"checkpoint in {out} (if any) is kept: continue with "
                   f"`localconv train --nproc-per-node {nproc} --resume --out {out}`")
    return 1, f"{ERROR_PREFIX}rank {rank} of {nproc} failed with exit code {code} (its output above says why)"

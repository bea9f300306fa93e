"""Ctrl-C and SIGTERM stop ``movielens-benchmark run`` within seconds, training included.

Before this, the terminal's SIGINT reached Prefect's temporary API server (a child in the CLI's process
group) first; the server died and the CLI retried the dead API for minutes while training went on.

- :func:`detached_child` is how :mod:`flows.prefect_api` starts that server: in its own session, so the
  terminal's signals reach the CLI only, and (Linux) with a parent-death signal, so the kernel stops it
  when the CLI dies, even by SIGKILL.
- :func:`interruptible` turns SIGTERM into the same ``KeyboardInterrupt`` as SIGINT (inside a flow run,
  Prefect's engine raises its ``TerminationSignal`` for SIGTERM instead, then re-sends it on the way
  out). The exception is raised in the main thread, where the flow and its train task run, as soon as it
  runs Python again: between two minibatches of every model's epoch (compiled epochs run in chunks of
  minibatches for this, :mod:`recmodels.implicit_mf_cpu`), or at once in a wait for a training
  subprocess (horovodrun, torchrun: killed with it). The train task marks its MLflow run KILLED and
  resumable after flushing the epochs' metrics (:mod:`tasks.checkpoints`), the flow marks the parent run
  KILLED, its ``on_crashed`` hook turns the Prefect flow run's CRASHED into CANCELLED
  (:func:`cancel_interrupted_flow_run`), and the next start of the same
  command resumes from the last checkpoint. A second signal exits at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

PR_SET_PDEATHSIG = 1


def _parent_death_signal() -> Callable[[], Any] | None:
    """Linux: a function for the child, between fork and exec, that asks for SIGTERM when the parent
    dies (resolved here, before the fork, so the child only makes the call)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def detached_child() -> dict[str, Any]:
    """``subprocess.Popen`` keywords for a helper server: its own session (no terminal signals), and on
    Linux SIGTERM when the process that started it dies (from the thread that starts it: the main one)."""
    options: dict[str, Any] = {"start_new_session": True}
    if (die_with_parent := _parent_death_signal()) is not None:
        options["preexec_fn"] = die_with_parent
    return options


@contextmanager
def interruptible() -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread for the block; the list yielded
    receives the signal's number (the exit status is 128 + it). A second signal exits at once."""
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            os._exit(128 + signum)
        received.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def cancel_interrupted_flow_run(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_crashed`` hook of a flow: a local flow run (no deployment) that crashed on Ctrl-C or SIGTERM
    is marked CANCELLED instead, forced (the engine has just reported it CRASHED). Deployment runs keep
    Prefect's handling (their worker cancels them; a killed pod is a crash)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import TerminationSignal
    from prefect.states import Cancelled

    if flow_run.deployment_id is not None or not isinstance(
        state.data, KeyboardInterrupt | TerminationSignal
    ):
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(
            flow_run.id, Cancelled(message="interrupted (Ctrl-C or SIGTERM)"), force=True
        )

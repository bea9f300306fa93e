"""No Prefect flow run stays RUNNING after its process died (issue 15): the flow-run side of
:func:`tasks.checkpoints.fail_dead_runs`.

A ``movielens-benchmark run`` killed with SIGKILL cannot report its end: its flow run stays RUNNING in
``$PREFECT_HOME/prefect.db``, which the temporary servers of later runs share (flows/prefect_api.py).
So every flow run of this flow carries its process as a tag, ``benchmark.owner=<host:pid:start time>``
(:func:`tasks.checkpoints.process_owner`), and each start first marks CRASHED every RUNNING flow run
whose owner on this host has died. (Runs of deployments are also watched by their worker; one that
reports first leaves nothing here to do.)
"""

from __future__ import annotations

from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

from tasks.checkpoints import owner_alive, process_owner

OWNER_TAG = "benchmark.owner="
SCAN_LIMIT = 200  # RUNNING flow runs read per start (the API's largest page)


def owner_of(tags: list[str]) -> str | None:
    """The ``host:pid:start`` of a flow run's owner tag; None for runs without one."""
    return next((tag.removeprefix(OWNER_TAG) for tag in tags if tag.startswith(OWNER_TAG)), None)


def crash_dead_flow_runs(client: SyncPrefectClient) -> list[str]:
    """Mark CRASHED every RUNNING flow run whose owner on this host has died; returns their ids."""
    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    crashed = []
    for run in client.read_flow_runs(flow_run_filter=running, limit=SCAN_LIMIT):
        owner = owner_of(run.tags)
        if owner is not None and not owner_alive(owner):
            message = f"its process ({owner}) died without reporting an end; marked by a later start"
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            crashed.append(str(run.id))
    return crashed


def own_flow_run(flow_run_id: str, tags: list[str]) -> list[str]:
    """At the start of flow run ``flow_run_id`` (with ``tags``): crash dead owners' runs, then tag it with
    this process as its owner; returns the ids crashed. Nothing outside a flow run (no id)."""
    if not flow_run_id:
        return []
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        crashed = crash_dead_flow_runs(client)
        kept = [tag for tag in tags if not tag.startswith(OWNER_TAG)]
        client.update_flow_run(UUID(flow_run_id), tags=[*kept, OWNER_TAG + process_owner()])
    return crashed

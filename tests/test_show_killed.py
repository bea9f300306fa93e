"""``movielens-benchmark show`` on a killed run: the parent's status, and the models that finished."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from tasks.tracking import experiment_id, tracking_client, tracking_uri


def test_show_lists_the_finished_models_of_a_killed_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The store as a SIGKILL leaves it: parent and last child RUNNING, the first child FINISHED."""
    uri = tracking_uri(tmp_path)
    client = tracking_client(uri)
    exp = experiment_id(uri, tmp_path)
    parent = client.create_run(exp, run_name="100k-killed").info.run_id
    done = client.create_run(exp, run_name="popularity", tags={"mlflow.parentRunId": parent}).info.run_id
    client.log_metric(done, "ndcg_at_10", 0.1234)
    client.log_metric(done, "precision_at_10", 0.0987)
    client.set_terminated(done)
    client.create_run(exp, run_name="sar", tags={"mlflow.parentRunId": parent})  # killed while training

    assert main(["show", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "100k-killed (RUNNING" in out
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "FINISHED" in lines["status"] and "RUNNING" in lines["status"]
    assert "0.1234" in lines["ndcg_at_10"] and "0.0987" in lines["precision_at_10"]
    assert lines["ndcg_at_10"].index("0.1234") < lines["ndcg_at_10"].index("None")

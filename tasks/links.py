"""Links between the Prefect UI and the MLflow UI (issue 15), built only when the servers' URLs are known.

MLflow 3's UI has two workflows, "GenAI" (its default: an experiment opens on an Overview of traces and
latency) and "Model training" (an experiment opens on its runs). In MLflow 3.17 the workflow comes from
the page's ``workflowType`` query parameter, else the browser's last choice; the experiment tag
``mlflow.experimentKind`` set by :func:`tasks.tracking.experiment_id` records the kind for the versions
and views that read it. So every MLflow link made here asks for ``workflowType=machine_learning``, and
a benchmark user lands on the training runs. Credentials in a tracking URI never reach a link.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MLFLOW_WORKFLOW = "workflowType=machine_learning"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3's kind of a model-training experiment


def _public(url: str) -> str:
    """``url`` without user-info and query: nothing secret in a link."""
    parts = urlsplit(url)
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path, "", parts.fragment))


def mlflow_ui(uri: str) -> str | None:
    """The MLflow UI's base URL for a tracking ``uri`` that is a server (http/https), without user-info
    or query; None for a local store (SQLite, files), which has no UI."""
    if not uri.startswith(("http://", "https://")):
        return None
    return _public(uri)


def mlflow_experiment_url(uri: str, experiment_id: str) -> str | None:
    """The experiment's page, on its runs (the "Model training" workflow)."""
    base = mlflow_ui(uri)
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?{MLFLOW_WORKFLOW}" if base else None


def mlflow_run_url(uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, or None without a tracking server."""
    base = mlflow_ui(uri)
    return (
        f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{MLFLOW_WORKFLOW}" if base else None
    )


def prefect_flow_run_url(flow_run_id: str) -> str | None:
    """The flow run's page in the Prefect UI (``PREFECT_UI_URL``, else derived from ``PREFECT_API_URL``),
    or None when neither is set (the temporary local API of ``movielens-benchmark run``)."""
    from prefect.utilities.urls import url_for

    url = url_for("flow-run", obj_id=flow_run_id) if flow_run_id else None
    return _public(url) if url else None


def markdown_link(text: str, url: str | None) -> str:
    """``[text](url)``, or ``text`` alone without a URL."""
    return f"[{text}]({url})" if url else text

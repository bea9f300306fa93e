"""VAE-CF training worker: the process ``horovodrun -np N python -m tasks.vae_cf_worker ...`` runs.

Reads a prepared strong-generalisation folder (train, validation_fold_in, validation, test_fold_in,
test ``.parquet``), trains :class:`recmodels.vae_cf.VAECF` (with ``--horovod``: one Horovod worker of
N, TF backend), evaluates the test users, and on rank 0 only writes to ``--output``:

- ``results.json``: test ``ndcg_at_100``, ``recall_at_20``, ``recall_at_50``, ``best_epoch`` (whose
  weights the model keeps), ``epochs_trained`` (fewer than ``epochs`` where early stopping ended it),
  ``fit_seconds``, ``world_size``, the configured parameters, those the small data rule changed
  (``adapted_params``) and the per-epoch history;
- ``recommendations.parquet``: top-``--k`` items of each test user from their fold-in items;
- ``model/`` (TF SavedModel or torch state dict, with the item ids) and ``learning_curve.png``;

and, given a tracking URI, logs the same to MLflow: into ``--run-id`` (e.g. the Prefect task's nested
run) or a new run: parameters, per-epoch metrics with ``step`` as each epoch ends (loss, beta,
epoch_seconds, users_per_second, validation_*), test metrics, the model and the learning curve. With
``--checkpoint URL`` the training state is written there every ``--checkpoint-every`` epochs (rank 0,
with every worker's generator state) and a fit that finds one there resumes from it
(:mod:`tasks.checkpoints`).

:func:`command` builds the command line the Prefect task runs: ``horovodrun -np N --gloo`` for N > 1
(Gloo controller; NCCL does the GPU collectives where Horovod was built with it), plain Python for 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from recmodels.errors import BenchmarkError, EmptySplit
from recmodels.vae_cf import VAECF, VAECFConfig
from tasks import storage
from tasks.redaction import redact

SETS = ("train", "validation_fold_in", "validation", "test_fold_in", "test")


def command(num_workers: int, worker_args: Sequence[str]) -> list[str]:
    """The command line that trains with ``num_workers`` Horovod workers (in one process when 1)."""
    worker = [sys.executable, "-m", "tasks.vae_cf_worker", *worker_args]
    if num_workers <= 1:
        return worker
    hosts = f"localhost:{num_workers}"
    return ["horovodrun", "-np", str(num_workers), "-H", hosts, "--gloo", *worker, "--horovod"]


def read_prepared(folder: str) -> dict[str, pd.DataFrame | None]:
    """The strong-generalisation sets in ``folder`` (a path or URL; None for the validation sets where absent)."""
    frames = {name: _read(storage.join(folder, f"{name}.parquet")) for name in SETS}
    missing = [n for n in ("train", "test_fold_in", "test") if frames[n] is None]
    if missing:
        raise EmptySplit(
            f"{folder} lacks {[f'{n}.parquet' for n in missing]}; VAE-CF needs a strong_generalization split "
            "(split strategy 'strong_generalization')."
        )
    return frames


def _read(url: str) -> pd.DataFrame | None:
    return storage.read_parquet(url) if storage.exists(url) else None


def learning_curve(history: list[dict[str, float]], best_epoch: int | None) -> Figure:
    """Training loss and validation NDCG@100 per epoch, best epoch marked (Liang et al. 2018, Fig. 1)."""
    fig = Figure(figsize=(6, 3.8))
    ax = fig.subplots()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], color="tab:blue", label="training loss (−ELBO_β)")
    ax.set(xlabel="epoch", ylabel="training loss")
    validated = [h for h in history if "validation_ndcg_at_100" in h]
    if validated:
        right = ax.twinx()
        right.plot(
            [h["epoch"] for h in validated],
            [h["validation_ndcg_at_100"] for h in validated],
            color="tab:orange",
            marker=".",
            label="validation NDCG@100",
        )
        right.set_ylabel("validation NDCG@100")
        if best_epoch is not None:
            right.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
        fig.legend(loc="lower center", ncols=3, fontsize="small")
    ax.set_title("VAE-CF learning curve")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def start_run(uri: str, experiment: str, tags: dict[str, str]) -> str:
    """A new MLflow run named ``vae_cf`` in ``experiment`` (created if missing); returns its id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    tags = {"model": "vae_cf", **{key: redact(value) for key, value in tags.items()}}  # no credentials
    return client.create_run(experiment_id, run_name="vae_cf", tags=tags).info.run_id


def log_to_mlflow(
    uri: str, run_id: str, results: dict[str, Any], output: Path, epochs_logged: bool = False
) -> None:
    """Log params, per-epoch metrics (with step; unless ``epochs_logged`` live), test metrics and the
    artifacts under ``output``."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from tasks.tracking import fitted_params

    client = MlflowClient(uri)
    now = int(time.time() * 1000)
    params = {
        **results["params"],
        **fitted_params(results["adapted_params"]),
        "world_size": results["world_size"],
    }
    metrics = [
        Metric(key, float(value), now, int(epoch["epoch"]))
        for epoch in ([] if epochs_logged else results["history"])
        for key, value in epoch.items()
        if key != "epoch"
    ]
    final = ("ndcg_at_100", "recall_at_20", "recall_at_50", "best_epoch", "epochs_trained", "fit_seconds")
    final += ("users_per_second",)
    metrics += [Metric(key, float(results[key]), now, 0) for key in final]
    logged = client.get_run(run_id).data.params  # a resumed run has them already
    fresh = [Param(k, redact(str(v))) for k, v in params.items() if k not in logged]  # no credentials
    client.log_batch(run_id, params=fresh)
    for start in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.log_artifact(run_id, str(output / "learning_curve.png"))
    client.log_artifact(run_id, str(output / "results.json"))
    client.log_artifacts(run_id, str(output / "model"), artifact_path="model")


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Train, evaluate and (rank 0) write and log; returns the results on rank 0, None elsewhere."""
    frames = read_prepared(args.prepared)
    model = VAECF(**json.loads(args.params))
    rank = int(os.environ.get("HOROVOD_RANK", "0")) if args.horovod else 0
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    created = uri is not None and args.run_id is None
    run_id = args.run_id
    if uri and rank == 0 and run_id is None:
        run_id = start_run(uri, args.experiment, dict(t.split("=", 1) for t in args.tag))
    from tasks.checkpoints import EpochRecorder, load_checkpoint, logged_steps

    state = load_checkpoint(args.checkpoint) if args.checkpoint else None  # every worker reads it
    recorder = None
    if (uri and run_id) or args.checkpoint:  # epochs logged as they end (rank 0), checkpoints written
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri) if uri and run_id else None
        skip = logged_steps(client, run_id) if client and state is not None and rank == 0 else {}
        if client and state is not None and rank == 0:
            client.set_tag(run_id, "benchmark.resumed_from_epoch", state["epoch"])
        recorder = EpochRecorder(
            client, run_id or "", args.checkpoint, args.checkpoint_every, skip_steps=skip, write=rank == 0
        )
    start = time.perf_counter()
    try:
        model.fit(
            frames["train"],
            frames["validation_fold_in"],
            frames["validation"],
            horovod=args.horovod,
            on_epoch_end=recorder.callback(model) if recorder else None,
            resume_from=state,
        )
    finally:
        if recorder is not None:
            recorder.close()
    fit_seconds = time.perf_counter() - start
    test = model.evaluate(frames["test_fold_in"], frames["test"])  # every worker: allreduced
    if model.rank != 0:
        return None
    trained = [h["users_per_second"] for h in model.history_[args.warmup_epochs :]] or [
        h["users_per_second"] for h in model.history_
    ]
    results = {
        **test,
        "best_epoch": model.best_epoch_,
        "epochs_trained": model.epochs_trained_,
        "fit_seconds": fit_seconds,
        "users_per_second": sum(trained) / len(trained),
        "world_size": model.world_size,
        "params": model.params(),
        "adapted_params": model.adapted_params(),
        "history": model.history_,
    }
    if uri:
        results["run_id"] = run_id
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    recs = model.recommend_fold_in(frames["test_fold_in"], k=args.k)
    _atomic(output / "recommendations.parquet", lambda p: recs.to_parquet(p, index=False))
    model.save(output / "model")
    learning_curve(model.history_, model.best_epoch_).savefig(output / "learning_curve.png", dpi=120)
    _atomic(output / "results.json", lambda p: p.write_text(json.dumps(results, indent=2, default=str)))
    if uri:
        log_to_mlflow(uri, results["run_id"], results, output, epochs_logged=run_id is not None)
        if created:
            from mlflow.tracking import MlflowClient

            MlflowClient(uri).set_terminated(results["run_id"])
    return results


def _atomic(path: Path, write: Any) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=path.suffix, delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tasks.vae_cf_worker", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--prepared", required=True, help="prepared strong-generalisation folder (path or URL)"
    )
    parser.add_argument("--output", type=Path, required=True, help="folder for results, model, figure")
    parser.add_argument("--params", default="{}", help="VAECFConfig fields as JSON, e.g. '{\"epochs\": 50}'")
    parser.add_argument("--horovod", action="store_true", help="one worker of a horovodrun job")
    parser.add_argument("--k", type=int, default=100, help="recommendations per test user")
    parser.add_argument("--warmup-epochs", type=int, default=1, help="left out of users_per_second")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for TF and torch")
    parser.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI)")
    parser.add_argument("--run-id", default=None, help="existing MLflow run to log into")
    parser.add_argument("--experiment", default="movielens-benchmark", help="experiment of a new run")
    parser.add_argument("--tag", action="append", default=[], help="KEY=VALUE tag of a new run")
    parser.add_argument("--checkpoint", default=None, help="training state URL: resumed from, written to")
    parser.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    return parser.parse_args(argv)


def set_threads(threads: int, backend: str) -> None:
    """Cap the backend's CPU threads (before it runs anything)."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    else:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.threads:
            set_threads(args.threads, VAECFConfig(**json.loads(args.params)).backend)
        results = run(args)
    except BenchmarkError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if results is not None:
        summary = {k: results[k] for k in ("ndcg_at_100", "recall_at_20", "recall_at_50", "best_epoch")}
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

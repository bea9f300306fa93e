"""VAE-CF benchmarks (GitHub issue 6): accuracy against popularity and cornac's VAECF, and throughput.

Both use the strong-generalisation protocol of Liang et al. 2018 (§4.1) on a prepared folder: ratings
≥ 4 as implicit feedback, users with ≥ 5 of them, held-out validation and test users with 20% of their
items to predict (10% of the users each, or 10,000 on ML-20M-sized data, as in the paper).

``quality``: test NDCG@100, Recall@20, Recall@50 on ML-100K and ML-latest-small of popularity, our
Mult-VAE (TF and torch backends, the seed's defaults with the small data rule) and cornac's VAECF
(``cornac.models.VAECF``: a Mult-VAE without input normalisation, dropout, KL annealing or L2), set up
like the paper (encoder [n_items, 600, 200], β = 0.2, Adam 1e-3, batches of 500, same epochs), trained
on the same training users, and folded in the same way: its encoder's mean for the fold-in rows. With
94 and 59 test users one run varies by ~0.02, so each ``--seeds`` value s draws its own split (held-out
users and items, ``split_strong_generalization(seed=s)``) and every model's initialisation; the models
of a seed share its split. Reported per model: each metric's mean ± standard error over seeds, and the
paired difference of NDCG@100 with cornac's (mean ± SE of the per-seed differences).

``throughput``: as the seed's ``--benchmark``, the average training time of an epoch and validation
time after ``--warmup`` epochs, and users per second, for each variant run by the worker
(``tasks.vae_cf_worker``, under ``horovodrun`` for 2 workers): ``tf``, ``tf-amp``, ``tf-2w``,
``tf-amp-2w``, ``torch``, ``torch-amp``. On a GPU machine without TensorFlow, the torch variants check
the goal of ≥ 1M users/s on the ML-20M shape::

    python -m benchmarks.vae_cf_benchmark quality --datasets 100k latest-small --backends torch
    python -m benchmarks.vae_cf_benchmark merge part1.json part2.json  # seeds run in parallel
    python -m benchmarks.vae_cf_benchmark merge fixed.json early.json --reference 'vae_cf[torch] fixed'
    python -m benchmarks.vae_cf_benchmark throughput --dataset 100k
    python -m benchmarks.vae_cf_benchmark throughput --dataset synthetic-136677x20108x10000000 \\
        --variants torch torch-amp --device cuda

Results go to stdout and ``benchmarks/results/vae_cf_<mode>.json``. cornac ≥ 2.3.1 declares numpy > 2
(its compiled parts also load with numpy 1.26; 2.3.0 needs scipy ≤ 1.13.1), so it cannot be a pip
extra of this project; install it beside the venv, as CI does for Recommenders' SAR::

    pip install --no-deps --target .venv/cornac-reference cornac==2.6.0 tqdm powerlaw
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recmodels import preprocessing
from recmodels.base import IdIndex, mask_seen, user_blocks
from recmodels.datasets import load_dataset
from recmodels.errors import MissingExtra
from recmodels.popularity import Popularity
from recmodels.vae_cf import METRICS, VAECF, binary_matrix, metric_sums
from tasks.vae_cf_worker import SETS, command, set_threads

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CORNAC_PATH = ROOT / ".venv" / "cornac-reference"
CORNAC = "cornac VAECF"
SPLIT_SEED = 98765  # preprocessing.split_strong_generalization's default
VARIANTS = {
    "tf": ("tf", False, 1),
    "tf-amp": ("tf", True, 1),
    "tf-2w": ("tf", False, 2),
    "tf-amp-2w": ("tf", True, 2),
    "torch": ("torch", False, 1),
    "torch-amp": ("torch", True, 1),
}


def split(name: str, seed: int = SPLIT_SEED) -> dict[str, pd.DataFrame]:
    """Strong-generalisation split of dataset ``name``; ``seed`` draws the held-out users and items."""
    df = load_dataset(name)
    if not name.startswith("synthetic-"):  # synthetic interactions are all positives already
        df = preprocessing.to_implicit(df)
    df = preprocessing.filter_min_interactions(df, 5, 0)
    n_heldout = 10_000 if df["user_id"].nunique() > 100_000 else None
    return preprocessing.split_strong_generalization(df, n_heldout_users=n_heldout, seed=seed).frames()


def prepare(name: str, folder: Path) -> dict[str, pd.DataFrame]:
    """:func:`split` of dataset ``name`` written to ``folder/<set>.parquet``."""
    frames = split(name)
    folder.mkdir(parents=True, exist_ok=True)
    for set_name in SETS:
        frames[set_name].to_parquet(folder / f"{set_name}.parquet", index=False)
    return frames


def popularity_metrics(frames: dict[str, pd.DataFrame]) -> dict[str, float]:
    from recmodels import metrics

    recs = Popularity().fit(frames["train"]).recommend_fold_in(frames["test_fold_in"], k=100)
    truth = frames["test"]
    return {
        "ndcg_at_100": metrics.ndcg_at_k(recs, truth, 100),
        "recall_at_20": metrics.recall_at_k_vaecf(recs, truth, 20),
        "recall_at_50": metrics.recall_at_k_vaecf(recs, truth, 50),
    }


def fit_cornac(train: pd.DataFrame, epochs: int, seed: int) -> tuple[Any, IdIndex, np.ndarray]:
    """cornac's VAECF set up like the paper, trained on the training users' histories.

    Returns the model, our (sorted) item index, and ``order``: the cornac column of our item position p
    is ``order[p]``.
    """
    sys.path.insert(0, str(CORNAC_PATH))
    try:
        import cornac
    except ModuleNotFoundError as exc:
        raise MissingExtra(
            f"the reference needs cornac ({exc.name} is missing): pip install --no-deps --target "
            f"{CORNAC_PATH} cornac==2.6.0 tqdm powerlaw"
        ) from exc
    triplets = list(
        zip(train["user_id"].astype(str), train["item_id"].astype(str), np.ones(len(train)), strict=True)
    )
    dataset = cornac.data.Dataset.from_uir(triplets, seed=seed)
    model = cornac.models.VAECF(
        k=200,
        autoencoder_structure=[600],
        likelihood="mult",
        n_epochs=epochs,
        batch_size=500,
        learning_rate=1e-3,
        beta=0.2,
        seed=seed,
    ).fit(dataset)
    cornac_ids = np.empty(dataset.num_items, dtype=np.int64)  # raw item id of each cornac column
    for raw, column in dataset.iid_map.items():
        cornac_ids[column] = int(raw)
    order = np.argsort(cornac_ids)
    return model, IdIndex(cornac_ids[order]), order


def cornac_metrics(
    fitted: tuple[Any, IdIndex, np.ndarray], fold_in: pd.DataFrame, heldout: pd.DataFrame
) -> dict[str, float]:
    """Metrics of a :func:`fit_cornac` model for fold-in users: its encoder's mean, decoded."""
    import torch

    model, items, order = fitted
    users = IdIndex.from_values(fold_in["user_id"])
    rows, truth = binary_matrix(fold_in, users, items), binary_matrix(heldout, users, items)
    sums = np.zeros(4)
    with torch.no_grad():
        for block in user_blocks(len(users), 2_000):
            dense = np.zeros((rows[block].shape[0], len(items)), np.float32)
            dense[:, order] = rows[block].toarray()
            x = torch.as_tensor(dense)
            scores = model.vae.decode(model.vae.encode(x)[0]).numpy()[:, order].astype(np.float64)
            mask_seen(scores, rows[block])
            sums += metric_sums(scores, truth[block])
    return dict(zip(METRICS, (sums[:3] / sums[3]).tolist(), strict=True))


def mean_se(values: pd.Series) -> tuple[float, float]:
    """Mean and its standard error (sample std / √n; 0 for one value)."""
    n = len(values)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0


def summarize(runs: pd.DataFrame, reference: str = CORNAC) -> list[dict[str, Any]]:
    """Per dataset and model, each metric's mean ± standard error over seeds; for each other model, the
    paired difference of NDCG@100 with ``reference`` on the same seeds (same split) as mean ± SE."""
    rows = []
    for (dataset, model), group in runs.groupby(["dataset", "model"], sort=False):
        row: dict[str, Any] = {"dataset": dataset, "model": model, "seeds": len(group)}
        for metric in (*METRICS, "best_epoch", "epochs_trained", "fit_seconds"):
            if metric in group and group[metric].notna().all():
                row[metric], row[f"{metric}_se"] = mean_se(group[metric])
        ref = runs[(runs["dataset"] == dataset) & (runs["model"] == reference)]
        if model != reference and len(ref):
            paired = group.set_index("seed")["ndcg_at_100"] - ref.set_index("seed")["ndcg_at_100"]
            row["ndcg_at_100_minus_reference"], row["ndcg_at_100_minus_reference_se"] = mean_se(
                paired.dropna()
            )
            row["seeds_not_below_reference"] = int((paired.dropna() >= 0).sum())
        rows.append(row)
    return rows


def quality(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Test metrics of every model on every seed's split, and their :func:`summarize` over seeds.

    Seed s draws the split (held-out users and items) and every model's initialisation and batches, so
    the models of one seed are compared on the same test users, and seeds differ in both.
    """
    runs = []
    for name in args.datasets:
        for seed in args.seeds:
            frames = split(name, seed)
            base = {"dataset": name, "seed": seed}
            runs.append(base | {"model": "popularity", **popularity_metrics(frames)})
            for backend in args.backends:
                start = time.perf_counter()
                model = VAECF(backend=backend, epochs=args.epochs, seed=seed, **args.params)
                model.fit(frames["train"], frames["validation_fold_in"], frames["validation"])
                test = model.evaluate(frames["test_fold_in"], frames["test"])
                runs.append(
                    base
                    | {"model": f"vae_cf[{backend}]{args.label}", **test, "best_epoch": model.best_epoch_}
                    | {"epochs_trained": model.epochs_trained_, "fit_seconds": time.perf_counter() - start}
                    | {"validation_curve": [h.get("validation_ndcg_at_100") for h in model.history_]}
                )
            if args.reference:
                start = time.perf_counter()
                fitted = fit_cornac(frames["train"], args.epochs, seed)
                test = cornac_metrics(fitted, frames["test_fold_in"], frames["test"])
                runs.append(base | {"model": CORNAC, **test, "fit_seconds": time.perf_counter() - start})
            for run in runs[-1 - len(args.backends) - args.reference :]:
                print({k: v for k, v in run.items() if k != "validation_curve"}, flush=True)
    return {"summary": summarize(pd.DataFrame(runs)), "runs": runs}


def throughput(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared"
        frames = prepare(args.dataset, prepared)
        n_train = frames["train"]["user_id"].nunique()
        for variant in args.variants:
            backend, amp, workers = VARIANTS[variant]
            output = Path(tmp) / variant
            params = {"backend": backend, "use_amp": amp, "epochs": args.epochs, "validation_step": 1}
            if args.device:
                params["device"] = args.device
            worker_args = [
                "--prepared",
                str(prepared),
                "--output",
                str(output),
                "--params",
                json.dumps(params),
            ]
            if args.threads:
                worker_args += ["--threads", str(args.threads)]
            out = subprocess.run(command(workers, worker_args), cwd=ROOT, capture_output=True, text=True)
            if out.returncode != 0:
                rows.append({"variant": variant, "error": (out.stderr or out.stdout)[-2000:]})
                print(rows[-1], flush=True)
                continue
            results = json.loads((output / "results.json").read_text())
            timed_epochs = results["history"][args.warmup :]
            epoch_s = float(np.mean([h["epoch_seconds"] for h in timed_epochs]))
            rows.append(
                {
                    "variant": variant,
                    "dataset": args.dataset,
                    "train_users": n_train,
                    "batch_size": {**results["params"], **results["adapted_params"]}["batch_size"],
                    "workers": workers,
                    "epoch_seconds": epoch_s,
                    "validation_seconds": float(np.mean([h["validation_seconds"] for h in timed_epochs])),
                    "users_per_second": n_train / epoch_s,
                    "ndcg_at_100": results["ndcg_at_100"],
                }
            )
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    q = sub.add_parser("quality", help="test metrics against popularity and cornac's VAECF")
    q.add_argument("--datasets", nargs="+", default=["100k", "latest-small"])
    q.add_argument("--backends", nargs="+", default=["tf", "torch"], choices=["tf", "torch"])
    q.add_argument("--epochs", type=int, default=200)
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="split and model seeds")
    q.add_argument("--params", type=json.loads, default={}, help="VAECF overrides, JSON")
    q.add_argument("--label", default="", help="appended to our models' names, e.g. ' patience=None'")
    q.add_argument("--no-reference", dest="reference", action="store_false")
    q.add_argument("--threads", type=int, default=None, help="CPU threads for TF and torch")
    t = sub.add_parser("throughput", help="epoch and validation time, users/s, per variant")
    t.add_argument("--dataset", default="100k")
    t.add_argument(
        "--variants",
        nargs="+",
        default=["tf", "tf-amp", "tf-2w", "torch", "torch-amp"],
        choices=list(VARIANTS),
    )
    t.add_argument("--epochs", type=int, default=6)
    t.add_argument("--warmup", type=int, default=2, help="epochs left out of the averages")
    t.add_argument("--threads", type=int, default=None, help="CPU threads per worker")
    t.add_argument("--device", default=None, help="torch device, e.g. cuda")
    m = sub.add_parser("merge", help="one quality summary from the runs of several quality JSON files")
    m.add_argument("files", type=Path, nargs="+")
    m.add_argument("--reference", default=CORNAC, help="the model others are paired with")
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON file (default results/vae_cf_<mode>.json)"
    )
    args = parser.parse_args(argv)
    if args.mode == "quality" and args.threads:
        for backend in args.backends:
            set_threads(args.threads, backend)
    if args.mode == "merge":  # e.g. seeds run in parallel processes
        runs = [run for file in args.files for run in json.loads(file.read_text())["runs"]]
        result = {"summary": summarize(pd.DataFrame(runs), args.reference), "runs": runs}
    else:
        result = quality(args) if args.mode == "quality" else throughput(args)
    output = (
        args.output or RESULTS / f"vae_cf_{'throughput' if args.mode == 'throughput' else 'quality'}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    table = result if args.mode == "throughput" else result["summary"]
    print(pd.DataFrame(table).drop(columns="error", errors="ignore").to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

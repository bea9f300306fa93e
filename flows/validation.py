"""Pre-flight checks of the command line: every argument of ``run`` and ``sweep`` is checked here, before
the local Prefect API starts and before anything is written, so that a mistake costs one line
(``<ErrorType>: <problem>; <fix>``, exit status 2) instead of a failed flow run.

Each check raises the :mod:`recmodels.errors` type of its mistake. Model parameters (``--param``) are
checked against the model's own constructor or config dataclass: the name must be one of its fields,
the value must have the field's type, and the model is built with them so that its own range checks run
(e.g. SAR's ``support_threshold >= 1``); a model that runs here must have its extra installed, and a
CUDA device asked for must be visible.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from recmodels.errors import (
    BenchmarkError,
    DownloadFailed,
    GPUUnavailable,
    InvalidConfig,
    MissingExtra,
    StackFailed,
    UnknownModel,
    UnknownSplit,
)
from recmodels.registry import create_model, model_spec

#: Third-party packages each VAE-CF backend imports when it trains (imported lazily by the model).
VAE_CF_BACKEND_PACKAGES = {"tf": ("tensorflow",), "torch": ("torch",)}
#: Parameters the train task reads besides the model's own (tasks/train.py).
TASK_PARAMS = {"vae_cf": {"num_workers": int}}


class HideTracebacks(logging.Filter):
    """Drop the traceback from Prefect's task and flow run logs of a :class:`BenchmarkError`: the CLI
    prints its one-line message (``--debug`` keeps them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], BenchmarkError):
            record.exc_info, record.exc_text = None, None
        return True


def hide_prefect_tracebacks() -> None:
    """Install :class:`HideTracebacks` on the loggers of Prefect's task and flow runs (once)."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, HideTracebacks) for f in logger.filters):
            logger.addFilter(HideTracebacks())


def parse_list(text: str, what: str) -> list[str]:
    """``a,b`` → ["a", "b"]; InvalidConfig if nothing is left."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise InvalidConfig(
            f"{what} {text!r} names nothing; give a comma-separated list, e.g. popularity,sar."
        )
    return values


def parse_ratios(text: str) -> list[float]:
    """``0.75,0.25`` → [0.75, 0.25]: 2 or 3 positive numbers that sum to 1."""
    example = "e.g. --ratios 0.75,0.25 (train, test) or 0.8,0.1,0.1 (train, validation, test)"
    try:
        ratios = [float(r) for r in text.split(",")]
    except ValueError:
        raise UnknownSplit(f"--ratios {text!r} is not comma-separated numbers; {example}.") from None
    if len(ratios) not in (2, 3):
        raise UnknownSplit(f"--ratios {text!r} has {len(ratios)} value(s), not 2 or 3; {example}.")
    if not all(0 < r < 1 for r in ratios):
        raise UnknownSplit(f"--ratios {text!r}: every ratio must be between 0 and 1 (exclusive); {example}.")
    if not math.isclose(math.fsum(ratios), 1.0, abs_tol=1e-6):
        raise UnknownSplit(f"--ratios {text!r} sums to {math.fsum(ratios):g}, not 1; {example}.")
    return ratios


def parse_model_params(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``sar.similarity=lift`` → {"sar": {"similarity": "lift"}}; values are JSON when they parse."""
    params: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        model, dot, name = key.partition(".")
        if not sep or not dot or not model or not name:
            raise InvalidConfig(f"--param {pair!r} is not MODEL.NAME=VALUE, e.g. --param sar.similarity=lift")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        params.setdefault(model, {})[name] = value
    return params


def check_home(home: str | None) -> None:
    """A local home must be a folder, or a path where one can be created (nothing is created here)."""
    from tasks import storage

    root = storage.resolve_home(home)
    if "://" in root:
        storage.filesystem(root)  # MissingExtra names the extra of its protocol
        return
    path = Path(root)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise InvalidConfig(
            f"--home {root}: {existing} is a file, not a folder; point --home (or "
            "$MOVIELENS_BENCHMARK_HOME) at a folder, which is created if missing."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidConfig(f"--home {root}: {existing} is not writable; choose a folder you can write.")


def check_mirror(mirror: str | None) -> None:
    """A local mirror (argument or ``$MOVIELENS_MIRROR``) must be an existing folder."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    value = mirror or os.environ.get("MOVIELENS_MIRROR")
    if not value or value.startswith(("http://", "https://")):
        return
    local = Path(url2pathname(urlparse(value).path) if value.startswith("file:") else value).expanduser()
    if not local.is_dir():
        raise DownloadFailed(
            f"mirror {value} is not a folder; point --mirror (or $MOVIELENS_MIRROR) at a folder holding "
            "GroupLens' zips or extracted release folders, or unset it to download from GroupLens."
        )


def check_numbers(args: Any) -> None:
    """Thresholds, seed and held-out users in their ranges."""
    if args.seed < 0 or args.seed >= 2**32:
        raise InvalidConfig(f"--seed {args.seed} must be between 0 and 2**32 - 1.")
    if args.heldout_users is not None and args.heldout_users < 1:
        raise InvalidConfig(f"--heldout-users {args.heldout_users} must be >= 1, e.g. 10000 on ML-20M.")
    if getattr(args, "min_interactions", 1) < 1:
        raise InvalidConfig(
            f"--min-interactions {args.min_interactions} must be >= 1 (1 keeps every user and item; the "
            "benchmark's default is the 5-core)."
        )
    if (getattr(args, "min_item_interactions", None) or 0) < 0:
        raise InvalidConfig(f"--min-item-interactions {args.min_item_interactions} must be >= 0.")
    threshold = getattr(args, "implicit_threshold", None)
    if threshold is not None and not math.isfinite(threshold):
        raise InvalidConfig(f"--implicit-threshold {threshold} must be a finite rating, e.g. 4.0.")


def gpu_pool_url() -> str | None:
    """The Prefect API a GPU pool could be reached at (``$PREFECT_API_URL``), None for a local run."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def check_gpu(gpu: str, models: list[str], temporary_api: bool = False) -> bool:
    """Whether GPU models go to the ``gpu`` pool; ``--gpu pool`` needs an online worker there. A temporary
    Prefect server this process started (``temporary_api``) has no workers and may still be starting: it is
    not asked."""
    if gpu == "local" or not any(model_spec(m).gpu for m in models):
        return False
    url = None if temporary_api else gpu_pool_url()
    if url is None:
        if gpu == "pool":
            raise GPUUnavailable(
                "--gpu pool needs a Prefect server with a worker of the 'gpu' work pool, but PREFECT_API_URL "
                "is not set; run `movielens-benchmark stack up` and export what it prints, or use --gpu local."
            )
        return False
    from flows.benchmark import gpu_pool_online

    try:
        online = gpu_pool_online()
    except Exception as err:  # httpx errors: nothing answers there
        raise StackFailed(
            f"the Prefect API at {url} (PREFECT_API_URL) does not answer ({type(err).__name__}: {err}); "
            "start it with `movielens-benchmark stack up`, or unset PREFECT_API_URL to run locally."
        ) from None
    if gpu == "pool" and not online:
        raise GPUUnavailable(
            f"--gpu pool, but no worker of the 'gpu' work pool is online at {url}; start one "
            "(`movielens-benchmark stack up` on a GPU machine) or use --gpu local."
        )
    return online


def check_model_params(models: list[str], params: dict[str, dict[str, Any]], remote: set[str]) -> None:
    """Every ``--param`` names a model of the run and one of its fields, with a value of the field's
    type; models that run here are built with their parameters (their own range checks, extras, GPU)."""
    unknown = sorted(set(params) - set(models))
    if unknown:
        raise UnknownModel(
            f"--param names model(s) {unknown} that are not in --models {','.join(models)}; add them to "
            "--models or drop those --param."
        )
    for name in models:
        given = params.get(name, {})
        try:
            model_class = getattr(importlib.import_module(model_spec(name).module), model_spec(name).cls)
        except ModuleNotFoundError as exc:
            if name in remote:
                continue  # it runs on a GPU worker, which has the extra
            extra = model_spec(name).extra
            raise MissingExtra(
                f"{name} needs the {extra!r} extra ({exc.name} is not installed): pip install -e '.[{extra}]'"
            ) from exc
        fields = _fields(model_class)
        own = {k: v for k, v in given.items() if k not in TASK_PARAMS.get(name, {})}
        for key, value in given.items():
            hint = TASK_PARAMS.get(name, {}).get(key) or fields.get(key)
            if hint is None:
                raise UnknownModel(
                    f"--param {name}.{key}: {name} has no parameter {key!r}; it takes {sorted(fields)}."
                )
            _check_type(name, key, value, hint)
        if name in remote:
            continue
        _check_device(name, own)
        model = create_model(name, **own)  # InvalidConfig, GPUUnavailable, MissingExtra with the fix
        _check_backend(name, model)


def _fields(model_class: type) -> dict[str, Any]:
    """Constructor parameter → type of a model: the fields of the model's dataclass, or of the config
    dataclass its constructor takes (VAE-CF), or else its constructor's annotated parameters."""
    import inspect
    import typing

    target: Any = model_class
    if not dataclasses.is_dataclass(model_class):
        config = typing.get_type_hints(model_class.__init__).get("config")
        target = next((a for a in typing.get_args(config) if dataclasses.is_dataclass(a)), model_class)
    if dataclasses.is_dataclass(target):
        annotations = {f.name: f.type for f in dataclasses.fields(target) if f.init}
    else:
        parameters = inspect.signature(target).parameters.values()
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        annotations = {
            p.name: Any if p.annotation is inspect.Parameter.empty else p.annotation
            for p in parameters
            if p.kind not in skip
        }
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            # ``**params`` forwarded to a config dataclass (BERT4Rec, SASRec): read it from a default model
            config = getattr(model_class(), "config", None)
            if dataclasses.is_dataclass(config):
                target = type(config)
                annotations |= {f.name: f.type for f in dataclasses.fields(config) if f.init}
    namespace = vars(importlib.import_module(target.__module__))
    hints: dict[str, Any] = {}
    for name, annotation in annotations.items():
        try:
            hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
        except Exception:  # an annotation naming an optional stack that is not installed
            hints[name] = Any
    return hints


def _check_device(name: str, params: dict[str, Any]) -> None:
    """A CUDA device asked for (``--param <model>.device=cuda``) must be visible here."""
    device = params.get("device")
    if not (isinstance(device, str) and device.startswith("cuda")):
        return
    try:
        import torch

        visible = torch.cuda.device_count()
    except ImportError:
        visible = 0
    if visible == 0:
        raise GPUUnavailable(
            f"--param {name}.device={device} but no CUDA GPU is visible on this machine; use "
            f"{name}.device=auto (or cpu), or run it on a GPU worker (--gpu pool)."
        )


def _check_type(model: str, name: str, value: Any, hint: Any) -> None:
    try:
        TypeAdapter(hint).validate_python(value)
    except ValidationError as err:
        problem = err.errors()[0]["msg"]
        raise InvalidConfig(
            f"--param {model}.{name}={json.dumps(value)} is not a valid {name} ({problem}); give a value "
            f"of type {getattr(hint, '__name__', None) or hint}."
        ) from None


def _check_backend(name: str, model: Any) -> None:
    """VAE-CF imports its backend's stack only when it trains: check that it is installed now."""
    backend = getattr(getattr(model, "config", None), "backend", None)
    for package in VAE_CF_BACKEND_PACKAGES.get(backend, ()):
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):  # a broken or blocked installation
            found = False
        if not found:
            raise MissingExtra(
                f"{name} with backend={backend!r} needs {package}, which is not installed: "
                + ("bash deployments/install_tf_extra.sh" if backend == "tf" else "pip install -e '.[torch]'")
            )


def validate_benchmark_args(
    args: Any, sizes: list[str], models: list[str], temporary_api: bool = False
) -> dict[str, dict[str, Any]]:
    """Every argument of ``run``/``sweep``; returns the parsed ``--param`` values. Models run elsewhere
    (a GPU pool, a sweep's ``--deployment``) get the name and type checks only. ``temporary_api``: the
    Prefect API is a temporary server this process started (:func:`flows.prefect_api.local_api`)."""
    from tasks.data import check_size

    for size in sizes:
        check_size(size)
    for name in models:
        model_spec(name)
    parse_ratios(args.ratios)
    check_numbers(args)
    check_home(args.home)
    check_mirror(args.mirror)
    params = parse_model_params(args.param)
    if getattr(args, "deployment", None):
        remote = set(models)
    elif check_gpu(getattr(args, "gpu", "auto"), models, temporary_api):
        remote = {m for m in models if model_spec(m).gpu}
    else:
        remote = set()
    check_model_params(models, params, remote)
    return params

"""Model names used by the CLI, the flow's ``models`` parameter and MLflow run names (DESIGN.md "Names").

Models are imported lazily, so a missing optional stack only matters for the model that needs it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from recmodels.base import Recommender
from recmodels.errors import MissingExtra, UnknownModel


@dataclass(frozen=True)
class ModelSpec:
    """Where a model lives and which pip extra it needs."""

    module: str
    cls: str
    extra: str | None = None
    gpu: bool = False
    seeded: bool = False  # takes a ``seed``: a run gives it its own seed when none is given (with_run_seed)


MODELS: dict[str, ModelSpec] = {
    "popularity": ModelSpec("recmodels.popularity", "Popularity"),
    "sar": ModelSpec("recmodels.sar", "SAR"),
    "implicit_mf": ModelSpec(
        "recmodels.implicit_mf", "ImplicitFactorization", extra="torch", gpu=True, seeded=True
    ),
    "vae_cf": ModelSpec("recmodels.vae_cf", "VAECF", extra="tf", gpu=True, seeded=True),
    "bert4rec": ModelSpec("recmodels.bert4rec", "BERT4Rec", extra="torchrec", gpu=True, seeded=True),
    "sasrec": ModelSpec("recmodels.sasrec", "SASRec", extra="torchrec", gpu=True, seeded=True),
}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; choose from {sorted(MODELS)}") from None


def with_run_seed(name: str, params: dict[str, Any], seed: int) -> dict[str, Any]:
    """``params`` of model ``name`` with ``seed`` set to the run's ``seed`` when the model takes a seed and
    none is given, so that the same command gives the same model (implicit_mf's own default is None:
    a fresh seed per run)."""
    if model_spec(name).seeded and params.get("seed") is None:
        return {**params, "seed": seed}
    return params


def create_model(name: str, **params: Any) -> Recommender:
    """Instantiate model ``name`` with ``params``; raise UnknownModel or MissingExtra with the fix."""
    spec = model_spec(name)
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if spec.extra is None or exc.name is None or exc.name.startswith("recmodels"):
            raise
        raise MissingExtra(
            f"{name} needs the {spec.extra!r} extra ({exc.name} is not installed): "
            f"pip install -e '.[{spec.extra}]'"
        ) from exc
    try:
        return getattr(module, spec.cls)(**params)
    except TypeError as exc:
        raise UnknownModel(f"bad parameters for {name}: {exc}; see help({spec.module}.{spec.cls})") from exc

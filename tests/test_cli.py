"""The ``movielens-benchmark`` command line: arguments, errors without tracebacks, listings."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from flows.validation import parse_model_params
from recmodels.errors import BenchmarkError


def test_model_params_parse_json_values_and_strings() -> None:
    assert parse_model_params(
        ["sar.similarity=lift", "sar.time_decay_days=null", "implicit_mf.n_iter=3"]
    ) == {
        "sar": {"similarity": "lift", "time_decay_days": None},
        "implicit_mf": {"n_iter": 3},
    }
    with pytest.raises(BenchmarkError, match=r"MODEL\.NAME=VALUE"):
        parse_model_params(["similarity=lift"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--size", "3m"], "UnknownDataset: unknown dataset '3m'"),
        (["run", "--models", "sar,deepfm"], "UnknownModel: unknown model 'deepfm'"),
        (["run", "--top-k", "0"], "InvalidConfig: top_k=[0] is not a list of positive integers"),
        (["run", "--top-k", "10,-5"], "InvalidConfig: top_k=[10, -5] is not a list of positive integers"),
        (["run", "--top-k", "ten"], "InvalidConfig: --top-k 'ten' is not a comma-separated list"),
        (["run", "--top-k", "10,20", "--table-k", "5"], "InvalidConfig: table_k=5 is not one of the cutoffs"),
        (["sweep", "--top-k", "10,20", "--metric", "ndcg_at_5"], "InvalidConfig: metric 'ndcg_at_5'"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(
    argv, message, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--home", str(tmp_path)]) == 2
    out = capsys.readouterr().out
    assert message in " ".join(out.split())
    assert "Traceback" not in out
    assert not list(tmp_path.iterdir()), "refused before the flow started: nothing written"


def test_debug_shows_the_traceback() -> None:
    with pytest.raises(BenchmarkError):
        main(["--debug", "run", "--size", "3m"])


def test_datasets_lists_releases_and_synthetic_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "interactions").mkdir()
    (tmp_path / "interactions" / "100k.parquet").touch()
    (tmp_path / "interactions" / "100k.json").write_text("{}")  # the marker, written last
    (tmp_path / "interactions" / "1m.parquet").touch()  # a parse killed before its marker
    assert main(["datasets", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in ("100k", "1m", "32m", "latest-small", "synthetic-20m"):
        assert name in out
    assert out.count("yes") == 1, "only 100k is parsed in this home"


def test_show_without_runs_says_how_to_make_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["show", "--home", str(tmp_path)]) == 2
    assert "movielens-benchmark run" in capsys.readouterr().out

"""Hostile input through the real command line: each case ends in one line naming the problem and the
fix, exit status 2, no traceback, and nothing half-written in the home.

Bad arguments are refused before the flow starts (no Prefect API is needed: ``PREFECT_API_URL`` is
unset). Bad data can only be seen by the flow's data steps: those cases run the real flow on a temporary
Prefect API, from crafted mirrors in tmp dirs, and also check that a failure that a retry cannot fix is
not retried.
"""

from __future__ import annotations

import contextlib
import logging
import stat
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.cli import main

DATA = "userId,movieId,rating,timestamp\n" + "".join(
    f"{u},{i},{(u + i) % 5 + 1}.0,{978300000 + 7 * u + i}\n" for u in range(1, 13) for i in range(1, 13)
)  # 12 users × 12 items, every user and item 12 ratings: passes the 5-core


def home_files(home: Path) -> list[str]:
    """Files a failed run left in ``home`` (lock files aside)."""
    if not home.exists():
        return []
    return sorted(
        str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and p.parent.name != "locks"
    )


def one_line_error(out: str, error: str, *needles: str, logs: str = "") -> None:
    """The command's last printed line is ``<error>: …`` naming every needle; no traceback anywhere
    (``logs``: what Prefect logged on stderr)."""
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(f"{error}: "), (out + logs)[-3000:]
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    assert "Traceback" not in out + logs, (out + logs)[-3000:]


# --- arguments: refused before the flow starts --------------------------------------------------

ARGUMENT_CASES = [
    (["--size", "3m"], "UnknownDataset", "unknown dataset '3m'", "Valid names"),
    (["--models", "sar,deepfm"], "UnknownModel", "unknown model 'deepfm'", "choose from"),
    (["--models", " , "], "InvalidConfig", "--models", "names nothing"),
    (["--ratios", "a,b"], "UnknownSplit", "'a,b' is not comma-separated numbers", "e.g. --ratios"),
    (["--ratios", "0.9,0.3"], "UnknownSplit", "sums to 1.2, not 1", "e.g. --ratios"),
    (["--ratios=-0.25,1.25"], "UnknownSplit", "between 0 and 1", "e.g. --ratios"),
    (["--ratios", "1"], "UnknownSplit", "has 1 value(s), not 2 or 3", "e.g. --ratios"),
    (["--min-interactions", "-3"], "InvalidConfig", "--min-interactions -3 must be >= 1", "5-core"),
    (["--min-interactions", "0"], "InvalidConfig", "--min-interactions 0 must be >= 1", "5-core"),
    (["--seed", "-1"], "InvalidConfig", "--seed -1", "2**32"),
    (
        ["--split", "strong_generalization", "--heldout-users", "0"],
        "InvalidConfig",
        "--heldout-users 0",
        ">= 1",
    ),
    (["--param", "similarity=lift"], "InvalidConfig", "not MODEL.NAME=VALUE", "--param sar.similarity=lift"),
    (["--param", "sar.support_threshold=1.5"], "InvalidConfig", "sar.support_threshold=1.5", "valid integer"),
    (["--param", "sar.time_decay_days=abc"], "InvalidConfig", 'sar.time_decay_days="abc"', "valid number"),
    (["--param", "sar.support_threshold=0"], "InvalidConfig", "support_threshold=0 must be >= 1", ""),
    (["--param", "sar.similarity=cosinus"], "InvalidConfig", "sar.similarity", "'jaccard'"),
    (["--param", "sar.nope=1"], "UnknownModel", "sar has no parameter 'nope'", "it takes"),
    (["--param", "vae_cf.epochs=3"], "UnknownModel", "['vae_cf'] that are not in --models", "add them"),
    (
        ["--models", "vae_cf", "--gpu", "local", "--param", "vae_cf.keep_prob=2"],
        "InvalidConfig",
        "keep_prob=2 must be in (0, 1]",
        "fix these values",
    ),
    (
        ["--models", "implicit_mf", "--gpu", "pool"],
        "GPUUnavailable",
        "--gpu pool needs a Prefect server",
        "--gpu local",
    ),
    (["--mirror", "/no/such/mirror"], "DownloadFailed", "mirror /no/such/mirror is not a folder", "unset it"),
]


@pytest.mark.parametrize(
    ("argv", "error", "problem", "fix"),
    ARGUMENT_CASES,
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_argument_is_refused_before_the_flow(
    argv: list[str],
    error: str,
    problem: str,
    fix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd,
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    home = tmp_path / "home"
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # no Prefect server configured
        assert main(["run", "--home", str(home), *argv]) == 2
    out, err = capfd.readouterr()
    one_line_error(out, error, problem, fix, logs=err)
    assert "temporary server" not in out + err and "flow run" not in out + err, "refused before the flow"
    assert not home.exists(), "nothing is written before the arguments are valid"


def test_home_that_is_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    (tmp_path / "home").write_text("not a folder")
    assert main(["run", "--home", str(tmp_path / "home" / "sub")]) == 2
    one_line_error(capfd.readouterr().out, "InvalidConfig", "is a file, not a folder", "point --home")


def test_cuda_asked_for_where_none_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    argv = ["run", "--home", str(tmp_path), "--models", "implicit_mf", "--param", "implicit_mf.device=cuda"]
    assert main(argv) == 2
    one_line_error(capfd.readouterr().out, "GPUUnavailable", "implicit_mf.device=cuda", "device=auto")


@pytest.mark.parametrize(
    ("model", "package", "fix"),
    [("vae_cf", "tensorflow", "install_tf_extra.sh"), ("implicit_mf", "torch", ".[torch]")],
)
def test_missing_extra(
    model: str, package: str, fix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """The import system refuses the package (``sys.modules[name] = None``), as when it is not installed."""
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setitem(sys.modules, package, None)
    for name in [m for m in sys.modules if m.startswith(f"recmodels.{model}")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["run", "--home", str(tmp_path / "home"), "--models", model, "--gpu", "local"]) == 2
    one_line_error(capfd.readouterr().out, "MissingExtra", model, fix)


# --- data: refused by the flow's data steps, never retried, nothing cached -----------------------


def write_zip(path: Path, members: dict[str, str], links: dict[str, str] | None = None) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)


def latest_folder(root: Path, text: str) -> None:
    (root / "ml-latest").mkdir(parents=True)
    (root / "ml-latest" / "ratings.csv").write_text(text)


def truncated_zip(root: Path) -> None:
    write_zip(root / "ml-latest.zip", {"ml-latest/ratings.csv": DATA * 20})
    data = (root / "ml-latest.zip").read_bytes()
    (root / "ml-latest.zip").write_bytes(data[: len(data) // 2])


def changed_100k(root: Path, mirror: Path) -> None:
    (root / "ml-100k").mkdir(parents=True)
    text = (mirror / "ml-100k" / "u.data").read_text()
    (root / "ml-100k" / "u.data").write_text(text.replace("\t5\t", "\t4\t", 1))


def with_line(line: str) -> str:
    return DATA + line + "\n"


DATA_CASES = {
    # case: (size, crafted mirror, extra CLI args, error, problem)
    "corrupt archive": (
        "latest",
        lambda r, m: (r / "ml-latest.zip").write_bytes(b"PK\x03\x04 garbage"),
        [],
        "CorruptArchive",
        "not a readable zip",
    ),
    "truncated archive": (
        "latest",
        lambda r, m: truncated_zip(r),
        [],
        "CorruptArchive",
        "not a readable zip",
    ),
    "zip-slip member": (
        "latest",
        lambda r, m: write_zip(
            r / "ml-latest.zip", {"ml-latest/ratings.csv": DATA, "ml-latest/../../evil": "x"}
        ),
        [],
        "UnsafeArchive",
        "would be written outside",
    ),
    "absolute path member": (
        "latest",
        lambda r, m: write_zip(r / "ml-latest.zip", {"ml-latest/ratings.csv": DATA, "/tmp/evil": "x"}),
        [],
        "UnsafeArchive",
        "would be written outside",
    ),
    "symlink member": (
        "latest",
        lambda r, m: write_zip(
            r / "ml-latest.zip", {"ml-latest/ratings.csv": DATA}, {"ml-latest/links.csv": "/etc/passwd"}
        ),
        [],
        "UnsafeArchive",
        "symbolic link",
    ),
    "wrong checksum": ("100k", changed_100k, [], "ChecksumMismatch", "ml-100k/u.data from"),
    "truncated last line": (
        "latest",
        lambda r, m: latest_folder(r, DATA + "3,7,4.0,9783"),
        [],
        "MalformedRatings",
        "truncated",
    ),
    "wrong delimiter": (
        "latest",
        lambda r, m: latest_folder(r, DATA.replace(",", "\t")),
        [],
        "MalformedRatings",
        "header",
    ),
    "non-integer id": (
        "latest",
        lambda r, m: latest_folder(r, with_line("3.5,7,4.0,978300000")),
        [],
        "MalformedRatings",
        "line 146",
    ),
    "NaN rating": (
        "latest",
        lambda r, m: latest_folder(r, with_line("3,7,NaN,978300000")),
        [],
        "MalformedRatings",
        "line 146",
    ),
    "out-of-range rating": (
        "latest",
        lambda r, m: latest_folder(r, with_line("3,7,1e30,978300000")),
        [],
        "MalformedRatings",
        "line 146",
    ),
    "negative timestamp": (
        "latest",
        lambda r, m: latest_folder(r, with_line("3,7,4.0,-5")),
        [],
        "MalformedRatings",
        "line 146",
    ),
    "non-numeric timestamp": (
        "latest",
        lambda r, m: latest_folder(r, with_line("3,7,4.0,yesterday")),
        [],
        "MalformedRatings",
        "line 146",
    ),
    "empty file": ("latest", lambda r, m: latest_folder(r, ""), [], "MalformedRatings", "no ratings"),
    "header only": (
        "latest",
        lambda r, m: latest_folder(r, DATA.splitlines(True)[0]),
        [],
        "MalformedRatings",
        "no ratings",
    ),
    "one-user data set": (
        "latest",
        lambda r, m: latest_folder(
            r, "userId,movieId,rating,timestamp\n" + "".join(f"1,{i},4.0,{i}\n" for i in range(1, 40))
        ),
        ["--min-interactions", "1"],
        "EmptySplit",
        "1 user(s)",
    ),
    "filter that removes everything": (
        "latest",
        lambda r, m: latest_folder(r, DATA),
        ["--min-interactions", "50"],
        "EmptySplit",
        "removed every interaction",
    ),
}


@contextlib.contextmanager
def prefect_console_on_current_stderr() -> Iterator[None]:
    """Prefect's console handlers write to the current ``sys.stderr`` (a test's ``capfd``), then to their
    own stream again: they hold pytest's session capture (tests/conftest.py), which ``capfd`` does not
    see, and ``capfd`` replaces its stream in every test phase, so this is entered in the test's body.

    Not ``setup_logging(incremental=False)``: that closes every logging handler, and absl's (TensorFlow's,
    from an earlier test) closes the stream it holds, pytest's session capture file, so that pytest dies
    later with "lost sys.stderr"."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *map(logging.getLogger, list(logging.root.manager.loggerDict))]
    handlers = {h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)}
    saved = [(h, h.stream, h.console.file) for h in handlers]
    for handler in handlers:
        handler.stream = handler.console.file = sys.stderr
    try:
        yield
    finally:
        for handler, stream, file in saved:
            handler.stream, handler.console.file = stream, file


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_fails_in_one_line_without_retry_or_cache(
    case: str,
    tmp_path: Path,
    mirror: Path,
    prefect_api: None,
    capfd: pytest.CaptureFixture[str],
) -> None:
    size, craft, extra, error, problem = DATA_CASES[case]
    root = tmp_path / "mirror"
    root.mkdir()
    craft(root, mirror)
    home = tmp_path / "home"
    argv = [
        "run",
        "--size",
        size,
        "--models",
        "popularity",
        "--home",
        str(home),
        "--mirror",
        str(root),
        *extra,
    ]
    started = time.perf_counter()
    with prefect_console_on_current_stderr():
        assert main(argv) == 2
    out, logs = capfd.readouterr()
    one_line_error(out, error, problem, logs=logs)
    assert "Retry 1/3" not in out + logs and time.perf_counter() - started < 120, (
        "a data error is not retried"
    )
    left = home_files(home)
    if error == "EmptySplit":  # valid data, verified and cached; the split was never written
        left = [f for f in left if not f.startswith(("raw/latest/", "interactions/latest."))]
    assert left == [], f"{case}: a failed run left {left}"
    assert not (home / "prepared").exists() or not list((home / "prepared").iterdir())

"""One exception type per kind of user mistake; each message names the problem and the fix."""


class BenchmarkError(Exception):
    """Base class of every error caused by input or environment rather than a bug."""


class UnknownDataset(BenchmarkError, ValueError):
    """A dataset size/release name that does not exist."""


class ChecksumMismatch(BenchmarkError):
    """A downloaded or mirrored file whose SHA-256 differs from the published one."""


class CorruptArchive(BenchmarkError):
    """An archive that cannot be read (truncated download, not a zip, ...)."""


class UnsafeArchive(BenchmarkError):
    """An archive member that would be written outside the extraction folder."""


class DownloadFailed(BenchmarkError):
    """A release that could not be fetched from GroupLens or the mirror."""


class NetworkError(DownloadFailed):
    """A download that failed for a reason that may pass (connection, timeout, HTTP 429/5xx): the only
    data error worth retrying."""


class MalformedRatings(BenchmarkError, ValueError):
    """A ratings file line that cannot be parsed (file and line number in the message)."""


class MissingColumns(BenchmarkError, ValueError):
    """A DataFrame that lacks a required column."""


class EmptySplit(BenchmarkError, ValueError):
    """A filter or split that would leave a user, an item or a whole set empty."""


class MissingExtra(BenchmarkError, ImportError):
    """An optional dependency stack (torch, tensorflow, ...) that is not installed."""


class GPUUnavailable(BenchmarkError, RuntimeError):
    """A GPU was asked for explicitly but none is visible."""


class UnknownModel(BenchmarkError, ValueError):
    """A model name that the benchmark does not know."""


class NotFitted(BenchmarkError, RuntimeError):
    """``recommend`` called before ``fit``."""


class UnknownSplit(BenchmarkError, ValueError):
    """A split strategy name that does not exist, or parameters it does not accept."""


class InvalidConfig(BenchmarkError, ValueError):
    """A model or run parameter out of its range, or a combination of them that is not supported."""


class StackFailed(BenchmarkError, RuntimeError):
    """A stack service (Prefect server, MLflow server, worker, deploy) that cannot start or is unhealthy."""


class UnknownFormat(BenchmarkError, ValueError):
    """A ratings-file format name that the parser does not know."""


class UnknownDeployment(BenchmarkError, LookupError):
    """A Prefect deployment name that the Prefect API does not know."""


class TrackingMismatch(BenchmarkError, RuntimeError):
    """MLflow runs of a finished flow run that are not where this process looks (another tracking URI)."""


class EmptyWindow(BenchmarkError, ValueError):
    """A session-protocol time window (or the whole session table) without any session."""


class CheckpointMismatch(BenchmarkError, ValueError):
    """A training checkpoint written by another model, parameters, data or state format."""

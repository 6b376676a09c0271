"""Documents from the hub or from local parquet/jsonl/txt files, read through one ``datasets`` code path.

A corpus is a streamed ``datasets.IterableDataset`` split into *units* (a parquet row group after
``reshard()``, otherwise one file). Every document has a global position ``(unit, row)``; the global
order is units in order, rows in order. Readers (DDP rank x DataLoader worker) get disjoint sets of
positions from :func:`reader_slices`, so the union of their passes is the corpus, each document once.
"""

from __future__ import annotations

import glob
import math
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

SAMPLE_DIR = Path(__file__).parent / "assets" / "sample"
SAMPLE_DATASET = "sample"
DEFAULT_DATASET = "HuggingFaceFW/fineweb"
DEFAULT_NAME = "sample-10BT"

# Whole units go to readers once each reader gets at least this many (the imbalance between readers
# is then at most one unit in eight); with fewer units, rows inside units are dealt out instead.
MIN_UNITS_PER_READER = 8
# Rows per Arrow batch pulled from datasets: large enough that per-batch overhead vanishes next to
# tokenisation, small enough that one batch of FineWeb text (~4 kB per row) stays a few MB.
READ_BATCH_ROWS = 256
# Seconds to wait for a TCP connection to the hub before declaring it unreachable; huggingface_hub's
# own retries take ~25 s here (measured without HF_HUB_OFFLINE on this machine).
HUB_PROBE_TIMEOUT_S = 3.0

_SUFFIX_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}

Position = tuple[int, int]  # (unit, row) of a document in the corpus' global order


class DataSourceError(RuntimeError):
    """A dataset that cannot be reached or a data file that cannot be read."""


@dataclass(frozen=True)
class CorpusSpec:
    """Where documents come from.

    Args:
        dataset: a hub dataset id (default FineWeb), ``"sample"`` for the corpus shipped with the package,
            or a local file, directory or glob of parquet/jsonl/txt files.
        name: the hub config (FineWeb: ``"sample-10BT"``); ignored for local files.
        data_files: local files or globs; when given they are read and ``dataset``/``name`` are ignored.
        split: the split of a hub dataset.
        text_column: the column holding the document text (txt files always use ``"text"``).
    """

    dataset: str = DEFAULT_DATASET
    name: str | None = DEFAULT_NAME
    data_files: tuple[str, ...] | None = None
    split: str = "train"
    text_column: str = "text"

    def __post_init__(self) -> None:
        if isinstance(self.data_files, str):
            object.__setattr__(self, "data_files", (self.data_files,))
        elif self.data_files is not None:
            object.__setattr__(self, "data_files", tuple(str(f) for f in self.data_files))
        if not self.text_column:
            raise ValueError(f"text_column must be a column name, got {self.text_column!r}")

    def local_patterns(self) -> tuple[str, ...] | None:
        """The local file patterns to read, or None for a hub dataset."""
        if self.data_files:
            return self.data_files
        if self.dataset == SAMPLE_DATASET:
            return (str(SAMPLE_DIR / "*.parquet"),)
        if os.path.exists(self.dataset) or glob.has_magic(self.dataset):
            return (self.dataset,)
        return None

    def describe(self) -> str:
        """A short human name, used in errors and progress bars."""
        if self.dataset == SAMPLE_DATASET and not self.data_files:
            return "the sample corpus shipped with polar_lightning"
        patterns = self.local_patterns()
        if patterns is not None:
            return ", ".join(patterns)
        return f"{self.dataset}" + (f" (config {self.name!r})" if self.name else "")


def resolve_local_files(patterns: Sequence[str]) -> list[str]:
    """Expand files, directories and globs into a sorted list of existing files.

    Raises:
        FileNotFoundError: naming a pattern that matches nothing.
        ValueError: for files of an unsupported type or a mix of types.
    """
    files: list[str] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix in _SUFFIX_BUILDERS)
        elif glob.has_magic(str(path)):
            found = sorted(glob.glob(str(path), recursive=True))
        else:
            found = [str(path)] if path.is_file() else []
        if not found:
            raise FileNotFoundError(f"no data file matches {pattern!r}")
        files.extend(os.path.abspath(f) for f in found)
    suffixes = {Path(f).suffix for f in files}
    unknown = suffixes - set(_SUFFIX_BUILDERS)
    if unknown:
        raise ValueError(f"unsupported data file type(s) {sorted(unknown)}; use .parquet, .jsonl or .txt")
    if len({_SUFFIX_BUILDERS[s] for s in suffixes}) > 1:
        raise ValueError(f"data files mix formats {sorted(suffixes)}; give files of one format")
    return files


def _builder_kwargs(files: Sequence[str]) -> tuple[str, dict[str, Any]]:
    builder = _SUFFIX_BUILDERS[Path(files[0]).suffix]
    if builder == "text":
        # One document per file: line-level documents would cut every line's context.
        return builder, {"sample_by": "document", "encoding_errors": "replace"}
    if builder == "json":
        # datasets only re-decodes JSON bytes when the encoding name differs from "utf-8"; "utf_8" is
        # the same codec, so invalid bytes get replaced instead of aborting the parse.
        return builder, {"encoding": "utf_8", "encoding_errors": "replace"}
    return builder, {}


def _check_parquet(files: Sequence[str]) -> None:
    import pyarrow.parquet as pq

    for f in files:
        try:
            pq.read_metadata(f)
        except Exception as err:
            raise DataSourceError(f"cannot read parquet file {f}: {err}") from err


def _offline() -> bool:
    # Read the variables directly (as huggingface_hub does) so the check costs no import.
    return any(os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"}
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_unreachable_reason() -> str | None:
    """Why the hub cannot be reached, found within a few seconds, or None if it may be reachable."""
    if _offline():
        return "offline mode is set (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy decides reachability; let the hub client try
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"{url.hostname}:{port} is unreachable ({err})"
    return None


def _hub_error(spec: CorpusSpec, reason: str) -> DataSourceError:
    return DataSourceError(
        f"cannot load the hub dataset {spec.describe()}: {reason}. To train without the hub, point the "
        f"data module at local files: data_files=['path/to/*.parquet'] (parquet, jsonl or txt), or "
        f"dataset='{SAMPLE_DATASET}' for the corpus shipped with polar_lightning."
    )


def open_dataset(spec: CorpusSpec) -> Any:
    """Open ``spec`` as a streamed ``datasets.IterableDataset`` of one column, resharded by row group.

    Raises:
        DataSourceError: the hub is unreachable (naming the dataset and the local alternative), or a
            data file cannot be read (naming the file).
        FileNotFoundError: a local pattern matches nothing.
        KeyError: the text column is missing (naming the columns that exist).
    """
    patterns = spec.local_patterns()
    if patterns is None:
        reason = _hub_unreachable_reason()
        if reason is not None:
            raise _hub_error(spec, reason)
    import datasets

    column = spec.text_column
    if patterns is not None:
        files = resolve_local_files(patterns)
        builder, kwargs = _builder_kwargs(files)
        if builder == "parquet":
            _check_parquet(files)
        if builder == "text":
            column = "text"
        try:
            ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **kwargs)
        except Exception as err:
            raise DataSourceError(f"cannot read data files {files}: {err}") from err
    else:
        try:
            ds = datasets.load_dataset(spec.dataset, name=spec.name, split=spec.split, streaming=True)
        except Exception as err:
            raise _hub_error(spec, f"{type(err).__name__}: {err}") from err
    try:
        ds = ds.reshard()
    except Exception as err:
        raise DataSourceError(f"cannot read the files of {spec.describe()}: {err}") from err
    columns = list(ds.features) if ds.features is not None else None
    if columns is not None and column not in columns:
        raise KeyError(f"text column {column!r} not in {spec.describe()}; columns are {columns}")
    return ds.select_columns([column])


@dataclass(frozen=True)
class UnitSlice:
    """Rows ``j`` of ``unit`` with ``j % stride == offset``."""

    unit: int
    stride: int = 1
    offset: int = 0


def reader_slices(num_units: int, num_readers: int, reader: int) -> list[UnitSlice]:
    """The part of the corpus that ``reader`` (of ``num_readers``) reads; parts are disjoint and cover it.

    With at least ``MIN_UNITS_PER_READER`` units per reader, units are dealt out whole (each unit is read
    by one reader). Otherwise document ``(u, j)`` goes to reader ``(u + j * num_units) % num_readers``:
    a bijection-based deal that keeps readers balanced to one document and makes each reader open only
    ``num_units / gcd(num_units, num_readers)`` units.
    """
    if num_units < 1:
        raise ValueError(f"num_units must be >= 1, got {num_units}")
    if num_readers < 1 or not 0 <= reader < num_readers:
        raise ValueError(f"reader must be in [0, {num_readers}), got {reader} (num_readers={num_readers})")
    if num_units >= MIN_UNITS_PER_READER * num_readers:
        return [UnitSlice(u) for u in range(reader, num_units, num_readers)]
    g = math.gcd(num_units, num_readers)
    stride = num_readers // g
    inverse = pow(num_units // g, -1, stride) if stride > 1 else 0
    slices = []
    for u in range(reader % g, num_units, g):
        # solve u + j * num_units = reader (mod num_readers) for j (mod stride)
        offset = ((reader - u) // g * inverse) % stride if stride > 1 else 0
        slices.append(UnitSlice(u, stride, offset))
    return slices


def clean_text(value: Any) -> str | None:
    """The text of one document, or None when it should be skipped (missing, empty or whitespace)."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value).decode("utf-8", errors="replace")
    elif not isinstance(value, str):
        value = str(value)
    if not value or value.isspace():
        return None
    return value


@dataclass
class Corpus:
    """A corpus opened once (in the main process) and read by any number of readers (pickles to workers)."""

    spec: CorpusSpec
    _dataset: Any = field(default=None, repr=False)

    @property
    def dataset(self) -> Any:
        if self._dataset is None:
            self._dataset = open_dataset(self.spec)
        return self._dataset

    @property
    def num_units(self) -> int:
        return int(self.dataset.num_shards)

    @property
    def column(self) -> str:
        return next(iter(self.dataset.features)) if self.dataset.features else self.spec.text_column

    def _unit_name(self, part: Any, unit: int) -> str:
        files = getattr(getattr(part, "_ex_iterable", None), "kwargs", {}).get("files")
        where = ", ".join(str(f) for f in files) if files else self.spec.describe()
        return f"unit {unit} ({where})"

    def unit_batches(self, unit: int) -> Iterator[list[Any]]:
        """Raw values of the text column of ``unit``, in row order, in batches."""
        part = self.dataset.shard(num_shards=self.num_units, index=unit, contiguous=True)
        column = self.column
        iterator = part.iter(batch_size=READ_BATCH_ROWS)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except Exception as err:
                raise DataSourceError(f"cannot read {self._unit_name(part, unit)}: {err}") from err
            yield batch[column]

    def documents(
        self, slices: Sequence[UnitSlice], start: Position = (0, 0)
    ) -> Iterator[tuple[list[Position], list[str]]]:
        """Documents of ``slices`` (in the given order) at positions ``>= start``, in batches.

        Yields ``(positions, texts)``; empty and whitespace-only documents are skipped.
        """
        for s in slices:
            if s.unit < start[0]:
                continue
            row = 0
            for values in self.unit_batches(s.unit):
                positions, texts = [], []
                for j, value in enumerate(values, start=row):
                    if j % s.stride != s.offset or (s.unit, j) < start:
                        continue
                    text = clean_text(value)
                    if text is not None:
                        positions.append((s.unit, j))
                        texts.append(text)
                row += len(values)
                if texts:
                    yield positions, texts

    def all_documents(self, start: Position = (0, 0)) -> Iterator[tuple[list[Position], list[str]]]:
        """Every document in the global order."""
        return self.documents([UnitSlice(u) for u in range(self.num_units)], start)


"""Run logs: one CSV per stream (``train.csv``, ``val.csv``) and optional TensorBoard scalars.

CSV rows are keyed by ``step``. When a run resumes from step ``s``, rows with ``step > s`` (written
after that checkpoint by the interrupted process) are dropped first, so the file reads like one
uninterrupted run. TensorBoard is optional: without it a warning is issued once and only CSV is written.
"""
from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Mapping

from vlprop.io.files import atomic_write_text


class CsvLog:
    """Append-only CSV with a fixed header taken from the first row (later new keys are ignored
    with a warning; missing keys are left empty)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fields: list[str] | None = None
        if self.path.is_file():
            with self.path.open(newline="") as f:
                header = next(csv.reader(f), None)
            self.fields = header or None

    def truncate_after(self, step: int) -> None:
        """Drop rows whose ``step`` is greater than ``step`` (rewrites the file atomically)."""
        if not self.path.is_file():
            return
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            return
        keep = [r for r in rows if int(float(r["step"])) <= step]
        if len(keep) == len(rows):
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.fields or list(rows[0]))
        w.writeheader()
        w.writerows(keep)
        atomic_write_text(self.path, buf.getvalue())

    def write(self, row: Mapping[str, object]) -> None:
        new_file = self.fields is None
        if new_file:
            self.fields = list(row)
        extra = [k for k in row if k not in self.fields]
        if extra:
            warnings.warn(f"{self.path.name}: columns {extra} are not in the header and are not logged")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new_file:
                w.writeheader()
            w.writerow({k: _fmt(v) for k, v in row.items()})


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)  # repr: round-trips exactly
    return v


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


class RunLog:
    """Training and validation logs of a run directory (``train.csv``, ``val.csv``, ``tb/``)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.train = CsvLog(self.run_dir / "train.csv")
        self.val = CsvLog(self.run_dir / "val.csv")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # tensorboard is an optional extra
                warnings.warn(f"TensorBoard logging disabled ({exc}); install vlprop[train] to enable it")
            else:
                self.tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))

    def resume_at(self, step: int) -> None:
        self.train.truncate_after(step)
        self.val.truncate_after(step)

    def log_train(self, step: int, values: Mapping[str, float]) -> None:
        self.train.write({"step": step, **values})
        self._tb("train", step, values)

    def log_val(self, step: int, values: Mapping[str, float]) -> None:
        self.val.write({"step": step, **values})
        self._tb("val", step, values)

    def _tb(self, prefix: str, step: int, values: Mapping[str, float]) -> None:
        if self.tb is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None

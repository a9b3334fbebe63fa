"""What a run directory recorded, read once for all three figures and the summary.

Training appends to ``metrics.jsonl`` and ``eval.jsonl``; a resumed run appends again from its
checkpoint's step, so a step may appear twice. The later row wins: it is the history the
finished run actually continued from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpretrain.errors import ReportError
from mmpretrain.storage import by_step, read_jsonl

METRICS_FILE = "metrics.jsonl"
EVAL_HISTORY_FILE = "eval.jsonl"
FINAL_EVAL_FILE = "eval.json"
CONFIG_FILE = "config.yaml"
RECALL_KEY = "_recall@"  # i2t_recall@K, t2i_recall@K (and the *_rerank_recall@K variants)

Row = dict[str, Any]


def read_json(path: Path) -> Any:
    """A JSON file, or a ReportError that names it."""
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON: {exc}") from exc


def is_evaluation(metrics: Any) -> bool:
    """Whether a JSON object holds retrieval results (what ``eval`` and training write)."""
    return isinstance(metrics, dict) and any(RECALL_KEY in str(key) for key in metrics)


@dataclass(frozen=True)
class RunRecords:
    run_dir: Path
    metrics: list[Row]  # metrics.jsonl, by step
    evals: list[Row]  # eval.jsonl plus eval.json, by step
    final_eval: Row | None  # eval.json, else the last periodic evaluation

    @property
    def name(self) -> str:
        return self.run_dir.name


def read_run(run_dir: str | Path) -> RunRecords:
    """A run directory's metrics and evaluations; a clear error when it is not one."""
    folder = Path(run_dir).expanduser().resolve()
    if not folder.is_dir():
        raise ReportError(f"RUN {str(run_dir)!r} is not a directory")
    metrics_path = folder / METRICS_FILE
    if not metrics_path.is_file():
        raise ReportError(
            f"RUN {folder} has no {METRICS_FILE}; point at the run directory `mmpretrain train` "
            "wrote (train.storage_path/train.run_name)"
        )
    metrics = by_step(read_jsonl(metrics_path))
    if not metrics:
        raise ReportError(f"{metrics_path} holds no logged step yet")
    return RunRecords(folder, metrics, *read_evaluations(folder, metrics[-1]["step"]))


def read_evaluations(folder: Path, last_step: int | None = None) -> tuple[list[Row], Row | None]:
    """(every evaluation by step, the final one) of a run directory; empty when it has none.

    ``last_step`` places an ``eval.json`` that records no step of its own on the time axis.
    """
    history_path, final_path = folder / EVAL_HISTORY_FILE, folder / FINAL_EVAL_FILE
    history = read_jsonl(history_path)
    final = read_json(final_path) if final_path.is_file() else None
    if final is not None:
        if not is_evaluation(final):
            raise ReportError(f"{final_path} holds no recall@K results")
        if last_step is not None:
            final = {"step": last_step, **final}
        history.append(final)
    evals = by_step([row for row in history if is_evaluation(row)])
    return evals, final if final is not None else (evals[-1] if evals else None)

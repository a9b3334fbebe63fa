"""``report.md``: the three figures, linked relatively so the run directory can be moved or
served as is, with the numbers a reader would otherwise dig out of the JSON files."""

from __future__ import annotations

from typing import Any

from mmpretrain.config import ConfigError, load_config
from mmpretrain.evaluate.report import format_table
from mmpretrain.report import attention, comparison, convergence
from mmpretrain.report.records import CONFIG_FILE, RunRecords

REPORT_FILE = "report.md"


def _run_line(records: RunRecords) -> str:
    last = records.metrics[-1]
    line = f"Run `{records.name}`: {last['step']} steps"
    try:
        cfg = load_config(records.run_dir / CONFIG_FILE)
    except (ConfigError, FileNotFoundError):
        cfg = None  # a foreign or older config: the numbers below still stand
    if cfg is not None:
        line += (
            f" of train.max_steps={cfg.train.max_steps}; {cfg.model.fusion.type} fusion, "
            f"{cfg.train.num_workers} worker(s), ZeRO-{cfg.train.zero_stage}"
        )
    if "samples_seen" in last:
        line += f"; {int(last['samples_seen'])} samples seen"
    return line + "."


def _loss_table(records: RunRecords) -> str:
    first, last = records.metrics[0], records.metrics[-1]
    lines = [
        f"| loss | step {first['step']} | step {last['step']} (final) |",
        "|---|---|---|",
    ]
    for name in convergence.loss_names(records.metrics):
        label = "total (weighted)" if name == convergence.TOTAL else name.removeprefix("loss_")
        start = f"{first[name]:.3f}" if name in first else "–"
        end = f"{last[name]:.3f}" if name in last else "–"
        lines.append(f"| {label} | {start} | {end} |")
    return "\n".join(lines)


def _final_eval(records: RunRecords) -> str:
    if records.final_eval is None:
        return "The run recorded no held-out evaluation (no eval.json or eval.jsonl)."
    step = records.final_eval.get("step")
    heading = f"Final held-out evaluation (step {step}):" if step else "Final evaluation:"
    return f"{heading}\n\n```text\n{format_table(records.final_eval)}\n```"


def render(
    records: RunRecords,
    attention_facts: dict[str, Any],
    compared: list[comparison.Evaluated],
) -> str:
    facts = attention_facts
    return "\n".join(
        [
            f"# Report: {records.name}",
            "",
            _run_line(records),
            "",
            "## Convergence",
            "",
            f"![Losses and held-out recall by step]({convergence.FILE})",
            "",
            "Each objective's loss is unweighted; the total is the weighted sum the optimiser "
            "minimises. Dashed lines (right axis) are held-out recall at each evaluation.",
            "",
            _loss_table(records),
            "",
            _final_eval(records),
            "",
            "## Cross-modal attention",
            "",
            f"![Text-to-image attention of caption words]({attention.FILE})",
            "",
            f"{facts['pairs']} held-out pairs from `{facts['data']}`, through the run's newest "
            "complete checkpoint. Each map is one caption word's attention in the "
            f"{facts['fusion']} fusion module over the {facts['grid']} grid of ResNet regions, "
            f"averaged over layers and heads and upsampled onto the {facts['image_size']} px "
            f"input; the chosen words also gave {facts['global_share']:.0%} of their attention "
            "to the global image token, which the maps leave out.",
            "",
            "## Comparison",
            "",
            f"![Recall and zero-shot accuracy by evaluation]({comparison.FILE})",
            "",
            comparison.markdown_table(compared),
            "",
            "Black ticks in the figure mark each evaluation's chance level.",
            "",
        ]
    )

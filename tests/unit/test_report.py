"""The report's reading of run files, its comparison table and its figures, on small files
written here (the end-to-end report of a real run is in tests/integration/test_report.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmpretrain.cli import main
from mmpretrain.errors import ReportError
from mmpretrain.report import attention, comparison, convergence, write_report
from mmpretrain.report.records import read_run


def evaluation(step: int, recall: float, zero_shot: bool = True) -> dict[str, float]:
    metrics = {"step": step, "candidates": 96.0, "chance@1": 1 / 96, "chance@5": 5 / 96}
    for way in ("i2t", "t2i"):
        metrics |= {f"{way}_recall@1": recall, f"{way}_recall@5": min(1.0, 3 * recall)}
    if zero_shot:
        metrics |= {"zeroshot_top1": 0.5, "zeroshot_classes": 6.0, "zeroshot_chance@1": 1 / 6}
    return metrics


def write_run(folder: Path, steps: int = 10, evals: tuple[int, ...] = (5, 10)) -> Path:
    folder.mkdir(parents=True)

    def row(step: int) -> dict[str, float]:
        return {
            "step": step,
            "loss": 10 - step / 2,
            "loss_itc": 4 - step / 5,
            "loss_mlm": 5 - step / 4,
        }

    # A run that logged up to step 8, died, and resumed from its step-5 checkpoint.
    lost = [{**row(step), "loss": 99.0} for step in range(6, 9)]
    rows = [*map(row, range(1, 6)), *lost, *map(row, range(6, steps + 1))]
    text = "\n".join(json.dumps(row) for row in rows)
    (folder / "metrics.jsonl").write_text(text + '\n{"step": 11, "lo')  # torn by a kill
    history = [evaluation(step, 0.1 * step / 5) for step in evals]
    (folder / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
    if evals:
        (folder / "eval.json").write_text(json.dumps(history[-1]))
    return folder


def test_records_keep_one_row_per_step_and_skip_a_torn_last_line(tmp_path) -> None:
    records = read_run(write_run(tmp_path / "run"))
    assert [row["step"] for row in records.metrics] == list(range(1, 11))
    assert records.metrics[5]["loss"] == 7.0  # the resumed run's step 6, written last
    assert [row["step"] for row in records.evals] == [5, 10]
    assert records.final_eval is not None and records.final_eval["i2t_recall@1"] == 0.2
    assert convergence.loss_names(records.metrics) == ["loss", "loss_itc", "loss_mlm"]
    assert convergence.recall_names(records.evals) == [
        "i2t_recall@1",
        "t2i_recall@1",
        "i2t_recall@5",
        "t2i_recall@5",
        "zeroshot_top1",
    ]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: root / "absent", "is not a directory"),
        (lambda root: root, "has no metrics.jsonl"),
    ],
)
def test_a_folder_that_is_not_a_run_gets_an_error_naming_what_is_missing(
    tmp_path, capsys, setup, message
) -> None:
    assert main(["report", str(setup(tmp_path))]) == 2
    assert message in capsys.readouterr().err


def test_compare_inputs_that_hold_no_evaluation_are_named(tmp_path, capsys) -> None:
    run = write_run(tmp_path / "run")
    (tmp_path / "losses.json").write_text(json.dumps({"loss": 1.0}))
    with pytest.raises(ReportError, match=r"losses\.json.* holds no recall@K"):
        write_report(run, compare=[tmp_path / "losses.json"])
    with pytest.raises(ReportError, match=r"has no eval\.json or eval\.jsonl"):
        write_report(write_run(tmp_path / "unevaluated", evals=()))
    assert main(["report", str(run), "--compare", str(tmp_path / "nothing")]) == 2
    assert "'" + str(tmp_path / "nothing") + "' is neither" in capsys.readouterr().err


def test_comparison_table_has_a_row_per_evaluation_and_dashes_for_what_is_missing(
    tmp_path,
) -> None:
    run = write_run(tmp_path / "run")
    (tmp_path / "export_eval.json").write_text(json.dumps(evaluation(0, 0.3, zero_shot=False)))
    items = comparison.unique_labels(
        [
            comparison.load_item(run),
            comparison.load_item(run),
            comparison.load_item(tmp_path / "export_eval.json"),
        ]
    )
    assert [item.label for item in items] == ["run", "run #2", f"{tmp_path.name}/export_eval.json"]
    table = comparison.markdown_table(items).splitlines()
    assert table[0].split(" | ")[2:] == [
        "i2t_recall@1",
        "i2t_recall@5",
        "t2i_recall@1",
        "t2i_recall@5",
        "zeroshot_top1 |",
    ]
    assert table[2] == "| run | 96 | 0.200 | 0.600 | 0.200 | 0.600 | 0.500 |"
    assert table[4].endswith("| 0.300 | 0.900 | 0.300 | 0.900 | – |")
    assert comparison.chance(items[0].metrics, "i2t_recall@5") == pytest.approx(5 / 96)
    assert comparison.chance(items[0].metrics, "zeroshot_top1") == pytest.approx(1 / 6)


def test_convergence_and_comparison_figures_have_their_fixed_size(tmp_path) -> None:
    run = write_run(tmp_path / "run")
    records = read_run(run)
    first = convergence.plot_convergence(records, tmp_path / "out")
    items = [comparison.load_item(run)]
    third = comparison.plot_comparison(items, tmp_path / "out")
    for path in (first, third):
        image = Image.open(path)
        assert image.size == (1000, 500)
        assert len(image.convert("RGB").getcolors(maxcolors=100_000)) > 50


def test_attention_words_join_word_pieces_and_leave_out_stopwords() -> None:
    tokens = ["[CLS]", "a", "small", "pur", "##ple", "square", "at", "the", "top", ",", "[SEP]"]
    words = attention.whole_words(tokens)
    assert ("purple", [3, 4]) in words
    content = [word for word, _ in words if attention.is_content_word(word)]
    assert content == ["small", "purple", "square", "top"]

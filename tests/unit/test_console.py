"""The live status line: drawn in place on a terminal, silent elsewhere, fed by metrics.jsonl."""

from __future__ import annotations

import io
import json
import time

from mmpretrain.console import LiveLine, Ticker, TrainingWatch, elapsed_status
from mmpretrain.train.progress import ProgressLog


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_redrawn_and_a_pipe_gets_nothing() -> None:
    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        line = LiveLine(stream)
        line.update("step 1")
        line.update("step 2")
        line.close()
    assert terminal.getvalue() == "\rstep 1\x1b[K\rstep 2\x1b[K\n"
    assert pipe.getvalue() == ""


def test_training_watch_shows_the_newest_row_with_speed_and_eta(tmp_path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    watch = TrainingWatch(metrics, max_steps=100)
    assert watch().startswith("train: starting workers and data")

    # Rank 0 writes rows (the driver reads only whole lines; the last one is being written).
    log = ProgressLog(tmp_path, max_steps=100, start_step=0, print_lines=False)
    log.log(10, 640, {"loss": 5.0, "loss_itc": 3.0, "loss_mlm": 2.0, "lr": 1e-3})
    log.log(20, 1280, {"loss": 4.0, "loss_itc": 2.5, "loss_mlm": 1.5, "lr": 1e-3})
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    rows[1]["time"] = rows[0]["time"] + 10.0  # 1 s a step: 80 steps left
    metrics.write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"step": 3')

    status = watch()
    assert status.startswith("train step 20/100 | loss 4.000 (itc 2.500 mlm 1.500)")
    assert "samples/s" in status and status.endswith("ETA 1m20s")


def test_progress_lines_are_left_to_the_driver_when_it_draws_them(tmp_path, capsys) -> None:
    ProgressLog(tmp_path, 10, 0, print_lines=False).log(1, 8, {"loss": 1.0})
    assert capsys.readouterr().out == ""
    ProgressLog(tmp_path, 10, 0, print_lines=True).log(2, 16, {"loss": 1.0})
    assert capsys.readouterr().out.startswith("step 2/10 | loss 1.000")


def test_ticker_redraws_from_its_thread_until_the_block_ends() -> None:
    terminal = Terminal()
    with Ticker(elapsed_status("eval: 2 shards on 2 workers"), interval=0.05, stream=terminal):
        time.sleep(0.3)
    drawn = terminal.getvalue()
    assert drawn.count("\reval: 2 shards on 2 workers (0m00s)") >= 2
    assert drawn.endswith("\n")
    quiet = io.StringIO()
    with Ticker(elapsed_status("eval"), interval=0.01, stream=quiet):
        time.sleep(0.05)
    assert quiet.getvalue() == ""

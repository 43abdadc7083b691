"""^C during a matrix run keeps the finished cells and names those that did not run."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from migcompat.compat import predict_matrix
from migcompat.lab import matrix


def test_sigint_keeps_finished_cells_and_names_the_rest(tmp_path, monkeypatch):
    preds = [p for p in predict_matrix(["10.0"], ["plain", "cut", "recover"]) if not p.unpredicted]
    assert len(preds) >= 3
    stopped: list[str] = []

    def fake_run_cell(pred, outdir, *, stop, **kw):
        if pred is preds[0]:
            return matrix.CellResult(pred, "pass", [])
        # the second cell is running when ^C arrives; it must be told to stop
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        assert stop.wait(10), "run_cells never told the running cell to stop"
        stopped.append(pred.cell.id)
        return matrix.CellResult(pred, "error", ["lab error: interrupted (SIGINT)"])

    monkeypatch.setattr(matrix, "run_cell", fake_run_cell)
    t0 = time.monotonic()
    with pytest.raises(matrix.MatrixInterrupted) as info:
        matrix.run_cells(preds, tmp_path, jobs=1)
    assert time.monotonic() - t0 < 10
    exc = info.value
    assert [r.prediction.cell.id for r in exc.results] == [preds[0].cell.id]
    assert exc.not_run == [p.cell.id for p in preds[1:]]
    assert stopped == [preds[1].cell.id]  # the rest never started
    assert isinstance(exc, KeyboardInterrupt) and exc.exit_code == 130
    assert "did not run: " + ", ".join(exc.not_run) in str(exc)


def test_a_stall_is_not_retried(tmp_path, monkeypatch):
    preds = [p for p in predict_matrix(["10.0"], ["plain"]) if not p.unpredicted][:1]
    calls = []

    def fake_run_cell(pred, outdir, **kw):
        calls.append(pred.cell.id)
        return matrix.CellResult(pred, "error", ["lab stall (not retried): … state dumped to x"])

    monkeypatch.setattr(matrix, "run_cell", fake_run_cell)
    results = matrix.run_cells(preds, tmp_path, retries=3)
    assert len(calls) == 1 and results[0].outcome == "error"

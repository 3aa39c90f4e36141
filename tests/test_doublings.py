"""`backstory doublings`: a grid's answer against training tokens, read from the compare
reports its passes kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backstory.tools.cli import main

STEP_TOKENS = 4096


def report(steps: int, word: float, excess: dict[str, float], changes: list[float | None],
           tolerance: float = 0.01) -> dict:
    """A compare report of one size, `tiny`: forward and reversed, one run per seed."""
    seeds = list(range(1, len(changes) + 1))
    models, runs = {}, {}
    for variant in ("forward", "reversed"):
        for seed, change in zip(seeds, changes, strict=True):
            name = f"{variant}.tiny.s{seed}"
            models[name] = {"size": "tiny", "steps": steps, "tokens_per_step": STEP_TOKENS}
            runs[name] = {"relative_change": change, "verdict": None if change is None else
                          "converged" if abs(change) < tolerance else "falling"}
    delta = {"variant": "reversed", "partner": "forward", "unit": "bits per byte",
             "delta": word, "low": word - 0.05, "high": word + 0.05,
             "per_seed": [{"seed": s, "delta": word + 0.01 * s} for s in seeds]}
    return {
        "models": models,
        "convergence": {"runs": runs},
        "arrow_of_time": {"sizes": [{"size": "tiny", "deltas": [delta], "levels": {
            v: {"seeds": seeds} for v in ("forward", "reversed")}}]},
        "floor": {"sizes": [{"size": "tiny",
                             "levels": {v: {"excess": e} for v, e in excess.items()},
                             "ratios": [{"variant": "reversed", "partner": "forward",
                                         "ratio": excess["reversed"] / excess["forward"],
                                         "low": 1.0, "high": 2.0}]}]},
    }


def keep(folder: Path, k: int, content: dict | str) -> None:
    (folder / f"pass{k}").mkdir(parents=True)
    text = content if isinstance(content, str) else json.dumps(content)
    (folder / f"pass{k}" / "report.json").write_text(text)


def test_one_row_per_pass_in_pass_order(tmp_path, capsys):
    keep(tmp_path, 0, report(500, 0.15, {"forward": 0.30, "reversed": 0.36}, [None, None]))
    keep(tmp_path, 1, report(1000, 0.20, {"forward": 0.20, "reversed": 0.30}, [-0.25, -0.005]))
    keep(tmp_path, 10, report(512000, 0.10, {"forward": 0.02, "reversed": 0.025},
                              [-0.002, 0.001]))
    assert main(["doublings", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split(" | ")[3:] == [
        "reversed vs forward (bits per byte)", "forward excess", "reversed excess",
        "reversed / forward excess", "runs converged",
        "validation loss moved by this doubling |"]
    rows = [line.strip("| ").split(" | ") for line in lines[2:]]
    assert [row[:3] for row in rows] == [["tiny", "2.0M", "2"], ["tiny", "4.1M", "2"],
                                         ["tiny", "2097.2M", "2"]]  # pass10 after pass1
    assert rows[0][3:] == ["+15.0% [+10.0, +20.0]", "0.300", "0.360", "1.20 [1.00, 2.00]",
                         "not checked"]
    assert rows[1][3:] == ["+20.0% [+15.0, +25.0]", "0.200", "0.300", "1.50 [1.00, 2.00]", "2 of 4",
                           "-25.0% to -0.5%"]
    assert rows[2][-2:] == ["4 of 4", "-0.2% to +0.1%"]


def test_per_seed_each_seed_reads_across_the_lengths(tmp_path, capsys):
    keep(tmp_path, 0, report(500, 0.15, {"forward": 0.30, "reversed": 0.36}, [None, None]))
    keep(tmp_path, 1, report(1000, 0.20, {"forward": 0.20, "reversed": 0.30}, [-0.25]))
    assert main(["doublings", "--per-seed", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "| tiny seed | reversed vs forward (bits per byte) at 2.0M, 4.1M tokens |",
        "|---|---|",
        "| 1 | +16.0%, +21.0% |",
        "| 2 | +17.0%, - |",  # seed 2 was not trained to 4.1M tokens
    ]


def test_a_folder_without_pass_reports_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "passes").mkdir()
    (tmp_path / "passes" / "report.json").write_text("{}")
    assert main(["doublings", str(tmp_path / "passes")]) == 2
    err = capsys.readouterr().err
    assert "passes holds no pass<k>/report.json" in err and "Traceback" not in err


def test_an_unreadable_report_is_named(tmp_path, capsys):
    keep(tmp_path, 0, "{not json")
    assert main(["doublings", str(tmp_path)]) == 2
    assert f"{tmp_path / 'pass0' / 'report.json'} is no readable compare report" in \
        capsys.readouterr().err


def test_a_json_file_that_is_no_compare_report_is_named(tmp_path, capsys):
    keep(tmp_path, 0, {"models": {}})
    assert main(["doublings", str(tmp_path)]) == 2
    assert "is no compare report of this version (no ['arrow_of_time', 'convergence'])" in \
        capsys.readouterr().err


def test_runs_of_one_size_at_different_lengths_are_refused(tmp_path, capsys):
    mixed = report(500, 0.15, {"forward": 0.3, "reversed": 0.36}, [None, None])
    mixed["models"]["reversed.tiny.s2"]["steps"] = 1000
    keep(tmp_path, 0, mixed)
    assert main(["doublings", str(tmp_path)]) == 2
    assert "different numbers of tokens ([2048000, 4096000])" in capsys.readouterr().err


@pytest.mark.parametrize("grid", ["aot_converged_dev/micro", "aot_converged_dev/tiny",
                                  "aot_converged_dev/small", "aot_lr_dev",
                                  "aot_lr_dev/ten_seeds"])
def test_the_published_tables_are_the_kept_reports(grid, capsys):
    """docs/results.md shows each grid's table as the command prints it from the reports."""
    repo = Path(__file__).resolve().parents[1]
    folder = repo / "docs/measurements" / grid
    assert main(["doublings", str(folder)]) == 0
    table = capsys.readouterr().out
    rows = table.splitlines()[2:]
    assert len(rows) == len(list(folder.glob("pass*/report.json")))
    tokens = [float(row.split(" | ")[1].rstrip("M")) for row in rows]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    assert main(["doublings", "--per-seed", str(folder)]) == 0
    seeds = capsys.readouterr().out
    docs = (repo / "docs/results.md").read_text()
    assert table in docs and seeds in docs

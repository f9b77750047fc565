"""The seed runner every experiment shares, on a fake per-seed function: folders, order, mean and
std, table.md, results.json, and what a failing seed leaves behind."""

import json

import pytest
from omegaconf import OmegaConf

from robot_rl.cli import _print_experiment
from robot_rl.errors import ConfigError, DatasetError
from robot_rl.experiments.seeds import Figure, SeedError, run_seeds

FIGURES = (Figure("a", "arm A"), Figure("ratio", "A / B", ".2f"), Figure("seconds", "minutes", ".1f", 1 / 60))
REPORTS = {
    3: {"a": 0.25, "ratio": 1.5, "seconds": 60.0, "other": "kept in report.json"},
    1: {"a": 0.75, "ratio": None, "seconds": 180.0},
    2: {"a": 0.5, "ratio": 0.5, "seconds": 120.0},
}


def fake(calls, fail=None):
    def run_seed(seed, folder):
        calls.append((seed, folder))
        assert folder.is_dir()
        if seed == fail:
            raise fail_with
        (folder / "report.json").write_text(json.dumps(REPORTS[seed]))
        return REPORTS[seed]

    fail_with = DatasetError("no such store: x.zarr")
    return run_seed


def test_every_seed_in_order_in_its_own_folder_with_mean_and_std(tmp_path):
    calls = []
    config = OmegaConf.create({"seeds": [3, 1, 2], "run_dir": str(tmp_path), "lr": "${mul}", "mul": 0.5})
    result = run_seeds(
        "robot-rl fake",
        fake(calls),
        FIGURES,
        seeds=config.seeds,
        run_dir=tmp_path,
        config=config,
        caption="A fake experiment.",
        extra=lambda reports: {"best": max(r["a"] for r in reports.values())},
    )
    assert calls == [(3, tmp_path / "seed3"), (1, tmp_path / "seed1"), (2, tmp_path / "seed2")]
    assert list(result.reports) == [3, 1, 2] and result.reports[3]["other"] == "kept in report.json"
    assert result.files == {"results": tmp_path / "results.json", "table": tmp_path / "table.md"}

    summary = json.loads(result.results.read_text())
    assert summary == result.summary
    assert summary["command"] == "robot-rl fake" and summary["seeds"] == [3, 1, 2]
    assert summary["complete"] is True and summary["failed"] is None
    assert summary["per_seed"] == {
        "3": {"a": 0.25, "ratio": 1.5, "seconds": 60.0},
        "1": {"a": 0.75, "ratio": None, "seconds": 180.0},
        "2": {"a": 0.5, "ratio": 0.5, "seconds": 120.0},
    }
    # numpy's population std (ddof 0), as the sweep's table; a None is left out of both
    assert summary["mean"] == {"a": 0.5, "ratio": 1.0, "seconds": 120.0}
    assert summary["std"]["ratio"] == 0.5 and summary["std"]["a"] == pytest.approx((0.125 / 3) ** 0.5, abs=0)
    assert summary["n"] == {"a": 3, "ratio": 2, "seconds": 3}
    assert summary["figures"]["seconds"] == {"label": "minutes", "fmt": ".1f", "scale": 1 / 60}
    assert summary["folders"] == {s: str(tmp_path / f"seed{s}") for s in ("3", "1", "2")}
    assert summary["best"] == 0.75
    assert summary["config"]["lr"] == 0.5  # resolved

    assert result.table.read_text() == (
        "A fake experiment.\n"
        "\n"
        "| seed | arm A | A / B | minutes |\n"
        "|---|---:|---:|---:|\n"
        "| 3 | 25.0% | 1.50 | 1.0 |\n"
        "| 1 | 75.0% | — | 3.0 |\n"
        "| 2 | 50.0% | 0.50 | 2.0 |\n"
        "| mean ± std | 50.0% ± 20.4% | 1.00 ± 0.50 (n=2) | 2.0 ± 0.8 |\n"
    )


def test_one_seed_in_the_run_folder_itself_also_writes_table_and_results(tmp_path):
    result = run_seeds(
        "robot-rl fake", fake([]), FIGURES[:1], seeds=[2], run_dir=tmp_path, seed_dir=lambda s: tmp_path
    )
    assert (tmp_path / "report.json").exists() and not (tmp_path / "seed2").exists()
    # one seed: no mean ± std row (there is no spread to show)
    assert result.table.read_text().splitlines()[-2:] == ["|---|---:|", "| 2 | 50.0% |"]
    assert json.loads(result.results.read_text())["per_seed"] == {"2": {"a": 0.5}}


def test_a_signed_figure_keeps_its_sign_and_its_std_none(tmp_path):
    reports = {0: {"d": -0.25}, 1: {"d": 0.25}}
    result = run_seeds(
        "robot-rl fake",
        lambda seed, folder: reports[seed],
        [Figure("d", "B - A", "+.1%")],
        seeds=[0, 1],
        run_dir=tmp_path,
    )
    assert result.table.read_text().splitlines()[-3:] == [
        "| 0 | -25.0% |",
        "| 1 | +25.0% |",
        "| mean ± std | +0.0% ± 25.0% |",
    ]


def test_a_failing_seed_stops_the_run_and_keeps_the_seeds_done(tmp_path):
    (tmp_path / "table.md").write_text("an earlier run's table\n")
    calls = []
    with pytest.raises(SeedError) as raised:
        run_seeds("robot-rl fake", fake(calls, fail=2), FIGURES, seeds=[3, 1, 2, 5], run_dir=tmp_path)
    message = str(raised.value)
    assert message.startswith(
        f"robot-rl fake: seed 2 failed ({tmp_path / 'seed2'}); seeds 3, 1 finished, "
        f"their figures are in {tmp_path / 'results.json'}: no such store: x.zarr"
    )
    assert isinstance(raised.value.__cause__, DatasetError)
    assert [s for s, _ in calls] == [3, 1, 2]  # seed 5 is not run

    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["complete"] is False
    assert summary["failed"] == {"seed": 2, "error": "DatasetError: no such store: x.zarr"}
    assert list(summary["per_seed"]) == ["3", "1"] and summary["mean"]["a"] == 0.5
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[2:] == [
        "| 3 | 25.0% | 1.50 | 1.0 |",
        "| 1 | 75.0% | — | 3.0 |",
        "| mean ± std | 50.0% ± 25.0% | 1.50 ± 0.00 (n=1) | 2.0 ± 1.0 |",
        "",
        "seed 2 failed: DatasetError: no such store: x.zarr",
        "not run: 5",
    ]


def test_a_bug_in_a_seed_keeps_its_type_and_traceback_with_a_note(tmp_path):
    def run_seed(seed, folder):
        raise ZeroDivisionError("division by zero")

    with pytest.raises(ZeroDivisionError) as raised:
        run_seeds("robot-rl fake", run_seed, FIGURES, seeds=[0], run_dir=tmp_path)
    note = (
        f"robot-rl fake: seed 0 failed ({tmp_path / 'seed0'}); "
        f"no seed finished (state in {tmp_path / 'results.json'})"
    )
    assert raised.value.__notes__ == [note]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["per_seed"] == {} and summary["failed"]["error"] == "ZeroDivisionError: division by zero"
    assert (
        (tmp_path / "table.md").read_text().endswith("seed 0 failed: ZeroDivisionError: division by zero\n")
    )


def test_a_report_without_a_figure_is_a_failure_of_that_seed(tmp_path):
    with pytest.raises(ValueError, match="seed 0's report has no ratio"):
        run_seeds(
            "robot-rl fake",
            lambda seed, folder: {"a": 1.0, "seconds": 1.0},
            FIGURES,
            seeds=[0],
            run_dir=tmp_path,
        )


@pytest.mark.parametrize(
    "seeds, message", [([], "needs seeds"), (None, "needs seeds"), ([0, 1, 0], "seeds repeat")]
)
def test_seeds_are_checked_before_anything_runs(tmp_path, seeds, message):
    with pytest.raises(ConfigError, match=message):
        run_seeds("robot-rl fake", fake([]), FIGURES, seeds=seeds, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_cli_prints_the_table_then_the_files_the_experiments_own_last(tmp_path, capsys):
    result = run_seeds("robot-rl fake", fake([]), FIGURES, seeds=[3], run_dir=tmp_path)
    _print_experiment(result.with_file("report", tmp_path / "seed3" / "report.json"))
    out = capsys.readouterr().out
    assert out == (
        result.table.read_text() + "\n" + f"{tmp_path / 'results.json'}\n{tmp_path / 'table.md'}\n"
        f"{tmp_path / 'seed3' / 'report.json'}\n"
    )

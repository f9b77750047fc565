import pytest


@pytest.fixture
def printed_files():
    """Checks that an experiment's output ends with its files: results.json, table.md, summary.json."""

    def check(out: str, run) -> None:
        files = ("results.json", "table.md", "summary.json")
        assert out.splitlines()[-3:] == [str(run / name) for name in files]

    return check

"""Round 1's README tables are what its committed logs give (experiments.round1.tables)."""
from experiments.round1 import tables


def test_the_readme_tables_are_generated_from_the_committed_logs():
    text = tables.README.read_text()
    assert text.count(tables.BEGIN) == 1 and text.count(tables.END) == 1
    assert tables.main(["--check"]) == 0


def test_a_changed_number_is_caught(monkeypatch, capsys):
    real = tables.report
    monkeypatch.setattr(tables, "report", lambda log_dir: real(log_dir).replace("0.812", "0.813", 1))
    assert tables.main(["--check"]) == 1 and "differ" in capsys.readouterr().err

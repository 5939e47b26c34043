"""Command-line flags that are not config keys: a misuse is refused before anything runs."""

from __future__ import annotations

from persodpo.cli import main


def test_a_pilot_without_a_dry_run_is_refused_before_any_stage(tmp_path, capsys):
    assert main(["run", "--pilot", "2", "--root", str(tmp_path / "root")]) == 2
    assert "--pilot calibrates a plan: use it with --dry-run" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()


def test_a_pilot_of_no_prompts_is_refused(tmp_path, capsys):
    assert main(["plan", "--pilot", "0", "--root", str(tmp_path / "root")]) == 2
    assert "--pilot must be a number of prompts >= 1, not 0" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()

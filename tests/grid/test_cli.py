"""The CLI: help describes every command; bad input exits 2 with one line naming the field or file."""
import pytest

from cli_helpers import run_cli
from grid.cli import build_parser, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("data", "run", "resume", "submit", "status", "analyze", "evaluate", "predict"):
        assert cmd in out
    with pytest.raises(SystemExit):
        main(["data", "--help"])
    out = capsys.readouterr().out
    assert "phantom" in out and "ingest" in out


def test_config_typo_is_refused_before_anything_runs(tmp_path, capsys):
    exp = tmp_path / "exp"
    assert main(["run", "--exp", str(exp), "--set", "grid.fractoins=[0.5]"]) == 2
    err = capsys.readouterr().err
    assert "grid.fractoins: unknown key; did you mean 'fractions'?" in err
    assert not exp.exists()


def test_config_file_typo_and_bad_value(tmp_path, capsys):
    cfg = tmp_path / "my.yaml"
    cfg.write_text("unet:\n  stepz: 10\n")
    assert main(["run", str(cfg), "--exp", str(tmp_path / "e")]) == 2
    assert "unet.stepz: unknown U-Net config key" in capsys.readouterr().err
    cfg.write_text("grid:\n  fractions: [0.5, 1.5]\n")
    assert main(["run", str(cfg), "--exp", str(tmp_path / "e")]) == 2
    assert "grid.fractions: 1.5 is out of range" in capsys.readouterr().err


def test_missing_paths_are_named(tmp_path, capsys):
    assert main(["data", "ingest", str(tmp_path / "nowhere"), str(tmp_path / "s")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["run", "--data", str(tmp_path / "nochaos"), "--exp", str(tmp_path / "e")]) == 2
    assert "nochaos" in capsys.readouterr().err
    assert main(["resume", str(tmp_path / "noexp")]) == 2
    assert "not an essgrid experiment" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not (tmp_path / "s").exists()


def test_console_script_exit_code():
    proc = run_cli("run", "--set", "ingest.size=33", check=False)
    assert proc.returncode == 2 and "ingest.size" in proc.stderr


def test_parser_has_smoke_mode():
    assert build_parser().parse_args(["run", "--smoke"]).smoke

import subprocess
import sys

import pytest

from clinasr.cli import build_parser


def _subcommands(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _subcommands(sub, prefix + (name,))


@pytest.mark.parametrize("cmd", [()] + list(_subcommands(build_parser())), ids=lambda c: " ".join(c) or "clinasr")
def test_every_subcommand_has_help(cmd):
    r = subprocess.run([sys.executable, "-m", "clinasr.cli", *cmd, "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "usage: clinasr" in r.stdout


def test_bad_input_is_a_message_not_a_traceback(clinasr_home):
    r = subprocess.run([sys.executable, "-m", "clinasr.cli", "data", "build", "--terms", "foo,bar"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "error: none of the priority terms is in the lexicon" in r.stderr
    assert "Traceback" not in r.stderr


def test_data_build_passes_the_voice_set_on_and_refuses_an_unknown_one(monkeypatch, capsys):
    from clinasr import cli

    got = []
    monkeypatch.setattr("clinasr.datasets.build_and_stage", lambda req: got.append(req) or
                        {"snapshot": {}, "dataset": {"card": {"counts": {}}}})
    a = build_parser().parse_args(["data", "build", "--terms", "warfarin", "--synthesis", "kokoro"])
    assert cli.cmd_data_build(a) == 0 and got[0].synthesis == "kokoro"
    assert build_parser().parse_args(["data", "build"]).synthesis == "default"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["data", "build", "--synthesis", "piper"])
    assert "invalid choice: 'piper'" in capsys.readouterr().err


def test_lm_names_a_missing_model_or_text_without_a_traceback(tmp_path):
    (tmp_path / "m.nemo").write_bytes(b"")
    for argv, missing in ((["lm", str(tmp_path / "none.nemo"), "--text", "x.txt", "--out", "o.nemo"], "none.nemo"),
                          (["lm", str(tmp_path / "m.nemo"), "--text", str(tmp_path / "t.txt"), "--out", "o.nemo"], "t.txt")):
        r = subprocess.run([sys.executable, "-m", "clinasr.cli", *argv], capture_output=True, text=True)
        assert r.returncode == 2 and missing in r.stderr and "no such file" in r.stderr
        assert "Traceback" not in r.stderr
    (tmp_path / "t.txt").write_text("a sentence\n")
    r = subprocess.run([sys.executable, "-m", "clinasr.cli", "lm", str(tmp_path / "m.nemo"), "--text", str(tmp_path / "t.txt"),
                        "--out", "o.nemo", "--phantom-guard", "1.5"], capture_output=True, text=True)
    assert r.returncode == 2 and "--phantom-guard in [0, 1]" in r.stderr and "Traceback" not in r.stderr

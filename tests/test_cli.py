import subprocess
import sys

import pytest

from pyengine.cli import main


def test_doctor_lists_every_op_and_backend(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for op in ("hash_encode", "composite", "ray_march", "ray_aabb_intersect"):
        assert f"{op} on cpu: default -> cpu" in out, out
    assert "reference ok" in out and "cuda      no:" in out


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "pyengine", "doctor"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "pyengine._C: loaded" in res.stdout


@pytest.mark.parametrize("argv,message", [
    ([], "the following arguments are required: job"),
    (["no-such-job"], "invalid choice: 'no-such-job'"),
    (["fit-image", "sise=64"], "FitImageConfig: Key 'sise' not in 'FitImageConfig'"),
])
def test_usage_errors_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: pyengine") and message in err, err

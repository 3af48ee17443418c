import subprocess
import sys

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

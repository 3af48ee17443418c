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


def test_yaml_config_cannot_run_code(tmp_path, capsys):
    marker = tmp_path / "code_ran"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'steps: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(SystemExit) as exc:
        main(["fit-nerf", "--config", str(cfg)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"FitNeRFConfig: cannot read {cfg}" in err and "python/object/apply" in err, err
    assert not marker.exists()


def test_yaml_config_sets_keys(tmp_path):
    from pyengine.config import load_config
    from pyengine.engines.nerf import FitNeRFConfig

    cfg = tmp_path / "c.yaml"
    cfg.write_text("shape: torus\nsteps: 7\n")
    got = load_config(FitNeRFConfig, str(cfg), ["steps=9"])
    assert (got.shape, got.steps) == ("torus", 9)

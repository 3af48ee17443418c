from pyengine.engines.image import FitImageConfig, run


def test_fit_image_learns(tmp_path):
    res = run(FitImageConfig(size=64, steps=60, batch=4096, out=str(tmp_path)))
    assert res["psnr"] > 22.0, res
    assert (tmp_path / "reconstruction.png").exists() and (tmp_path / "target.png").exists()

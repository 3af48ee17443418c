import json
import os

import pytest
import torch

from pyengine.cli import main
from pyengine.diffusion.prior import load_prior
from pyengine.engines import image_prior as ip

TINY = dict(size=8, shapes=["cube", "sphere"], colors=["red", "blue"], train_size=8, heldout_size=8, timesteps=20,
            steps=3, batch=2, checkpoint_every=2, sample_steps=2, n_samples=1, eval_prompts=2, eval_per_prompt=2,
            classifier_steps=3, classifier_batch=4, classifier_width=4, warmup_steps=0)
UNET = dict(model_channels=8, channel_mult=[1, 2], num_res_blocks=1, attention_levels=[1], heads=2)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(tmp_path, **kw):
    cfg = ip.ImagePriorConfig(**{**TINY, "out": str(tmp_path / "run"), **kw})
    cfg.model.text_dim = 8
    cfg.model.kwargs = dict(UNET)
    return cfg


def test_train_resume_export_sample_classify_eval(tmp_path):
    cfg = tiny(tmp_path, classifier=str(tmp_path / "clf.safetensors"))
    res = ip.train(cfg)
    assert res["steps"] == 3 and os.path.exists(os.path.join(res["out"], "samples.png"))
    more = ip.train(tiny(tmp_path, steps=5, classifier=cfg.classifier))
    assert more["steps"] == 5 and more["out"] == res["out"]  # resumed the same run
    weights = str(tmp_path / "prior.safetensors")
    ip.export_weights(tiny(tmp_path, weights=weights))
    prior = load_prior(weights)
    assert prior.resolution == 8 and prior.prediction == "v" and prior.step == 5
    run_prior = ip.load_run_prior(cfg, res["out"])
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 15])
    text = prior.encode_text(["a red cube, side view", ""])
    torch.testing.assert_close(prior.predict_noise(x, t, text), run_prior.predict_noise(x, t, text),
                               rtol=2e-2, atol=2e-2)  # float16 weights in the file
    imgs = ip.generate(prior, ["a red cube", "a blue sphere"], steps=2, seed=3)
    assert imgs.shape == (2, 8, 8, 3) and imgs.abs().max() <= 1
    alone = ip.generate(prior, ["a blue sphere"], steps=2, seed=4)  # image k starts from seed + k
    torch.testing.assert_close(imgs[1:], alone, rtol=1e-4, atol=1e-4)
    clf = ip.train_classifier(cfg)
    assert os.path.exists(clf["path"]) and 0.0 <= clf["heldout"]["joint"] <= 1.0
    ev = ip.evaluate(tiny(tmp_path, weights=weights, classifier=cfg.classifier, out=str(tmp_path / "ev")))
    assert ev["generated"]["n"] == 4
    with open(tmp_path / "ev" / "eval.json") as f:
        assert json.load(f)["generated"]["n"] == 4


def test_cli_and_errors(tmp_path, capsys):
    args = [f"{k}={'[' + ','.join(map(str, v)) + ']' if isinstance(v, list) else v}" for k, v in TINY.items()]
    args += [f"model.kwargs.{k}={'[' + ','.join(map(str, v)) + ']' if isinstance(v, list) else v}"
             for k, v in UNET.items()]
    args += ["model.text_dim=8", f"out={tmp_path / 'cli'}", "steps=1"]
    assert main(["train-prior", "images", *args]) == 0
    assert os.path.exists(tmp_path / "cli" / "checkpoint.safetensors")
    assert main(["train-prior", "images", "export", *args]) == 1  # no weights=
    assert "weights=PATH" in capsys.readouterr().err
    with pytest.raises(ValueError, match="shapes"):
        ip._check(ip.ImagePriorConfig(shapes=["dragon"]))
    with pytest.raises(ValueError, match="size"):
        ip._check(ip.ImagePriorConfig(size=30))
    with pytest.raises(ValueError, match="does not exist"):
        load_prior(str(tmp_path / "none.safetensors"))

"""The diffusers priors (Stable Diffusion, DeepFloyd IF stage I) on tiny random-weight pipelines.

Each pipeline folder is built here from configs (diffusers UNet2DConditionModel / AutoencoderKL /
schedulers, transformers CLIP / T5 text encoders and tokenizers made from a small vocabulary),
saved with ``save_pretrained`` as diffusers lays a pipeline out, and loaded through
``load_prior``. The references are the same networks read back from the folder independently and
called directly, and the schedule's formulas.
"""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from pyengine.diffusion.diffusers_prior import DeepFloydIFPrior, StableDiffusionPrior  # noqa: E402
from pyengine.diffusion.prior import load_prior  # noqa: E402

WORDS = ["a", "red", "blue", "cube", "sphere", "side", "front", "view"]
TEXT_DIM = 32
BETA_START, BETA_END, T = 0.00085, 0.012, 1000  # Stable Diffusion's scaled_linear schedule


def close(a, b, atol=1e-5, rtol=1e-4, what=""):
    diff = (a - b).abs()
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.allclose(a, b, atol=atol, rtol=rtol), f"{what}: max diff {diff.max():.3e}, mean {diff.mean():.3e}"


def clip_tokenizer():
    """A byte-level BPE CLIP tokenizer over letters, with merges that make a few whole words."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz,.":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    merges = []
    for w in ("red", "cube"):
        piece = w[0]
        for i, c in enumerate(w[1:], 1):
            nxt = c + "</w>" if i == len(w) - 1 else c
            merges.append((piece, nxt))
            piece += nxt
            vocab.setdefault(piece, len(vocab))
    return transformers.CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def t5_tokenizer():
    """A Unigram T5 tokenizer: pad, eos, unk, the word boundary, letters and a few whole words."""
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -4.0) for c in "abcdefghijklmnopqrstuvwxyz,."]
    vocab += [("\u2581" + w, -1.0) for w in WORDS]
    return transformers.T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=77)


def sd_unet():
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8, norm_num_groups=8)


def sd_vae():
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
        sample_size=16, scaling_factor=0.18215)


def if_unet(text_dim):
    """IF stage I's layout in miniature: simple cross-attention blocks, a text projection and a text
    embedding added to the time embedding, scale-shift norms, 6 outputs (epsilon and variance)."""
    return diffusers.UNet2DConditionModel(
        sample_size=16, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=32, attention_head_dim=8,
        encoder_hid_dim=text_dim, encoder_hid_dim_type="text_proj", addition_embed_type="text",
        addition_embed_type_num_heads=2, resnet_time_scale_shift="scale_shift", norm_num_groups=8, act_fn="gelu")


def _save(folder, **parts):
    for name, part in parts.items():
        part.save_pretrained(str(folder / name))
    return str(folder)


def _as_vocab_and_merges(folder):
    """Rewrites a saved CLIP tokenizer as the Stable Diffusion checkpoints ship it: ``vocab.json`` and
    ``merges.txt`` next to ``tokenizer_config.json``, no ``tokenizer.json``."""
    path = os.path.join(folder, "tokenizer", "tokenizer.json")
    with open(path) as f:
        model = json.load(f)["model"]
    os.remove(path)
    with open(os.path.join(folder, "tokenizer", "vocab.json"), "w") as f:
        json.dump(model["vocab"], f)
    with open(os.path.join(folder, "tokenizer", "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(" ".join(m) + "\n" for m in model["merges"]))
    return folder


@pytest.fixture(scope="module")
def sd_folders(tmp_path_factory):
    """Two SD pipelines: an epsilon model with a PNDM scheduler config (SD 1.x) and a v model with a
    DDIM one (SD 2.x 768) whose tokenizer is stored as vocab.json and merges.txt."""
    torch.manual_seed(0)
    tok = clip_tokenizer()
    text = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(tok), hidden_size=TEXT_DIM, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet, vae = sd_unet(), sd_vae()
    kw = dict(num_train_timesteps=T, beta_start=BETA_START, beta_end=BETA_END, beta_schedule="scaled_linear")
    eps = _save(tmp_path_factory.mktemp("sd_eps"), unet=unet, vae=vae, text_encoder=text, tokenizer=tok,
                scheduler=diffusers.PNDMScheduler(prediction_type="epsilon", **kw))
    v = _save(tmp_path_factory.mktemp("sd_v"), unet=unet, vae=vae, text_encoder=text, tokenizer=tok,
              scheduler=diffusers.DDIMScheduler(prediction_type="v_prediction", **kw))
    _as_vocab_and_merges(v)
    return {"eps": eps, "v": v}


@pytest.fixture(scope="module")
def sd_priors(sd_folders):
    return {k: load_prior("sd:" + f) for k, f in sd_folders.items()}


@pytest.fixture(scope="module")
def if_folder(tmp_path_factory):
    torch.manual_seed(1)
    tok = t5_tokenizer()
    text = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=len(tok), d_model=24, d_kv=8, d_ff=48, num_layers=2, num_heads=3, relative_attention_num_buckets=8,
        relative_attention_max_distance=16, dropout_rate=0.0, feed_forward_proj="gated-gelu", pad_token_id=0,
        eos_token_id=1, decoder_start_token_id=0))
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
                                    variance_type="learned_range", prediction_type="epsilon")
    return _save(tmp_path_factory.mktemp("if"), unet=if_unet(24), text_encoder=text, tokenizer=tok, scheduler=sched)


@pytest.fixture(scope="module")
def if_prior(if_folder):
    return load_prior("if:" + if_folder)


def _frozen(prior):
    params = list(prior.parameters())
    return params and not any(p.requires_grad for p in params) and not any(m.training for m in prior.modules())


# -- Stable Diffusion --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["eps", "v"])
def test_sd_reads_the_pipeline(sd_priors, kind):
    prior = sd_priors[kind]
    assert isinstance(prior, StableDiffusionPrior)
    assert (prior.latent, prior.channels, prior.prediction) == (True, 4, kind)
    assert prior.resolution == 8 * 2  # unet sample_size x the VAE's factor 2 ** (levels - 1)
    assert _frozen(prior)
    # scaled_linear: betas evenly spaced in sqrt between beta_start and beta_end
    betas = torch.linspace(math.sqrt(BETA_START), math.sqrt(BETA_END), T, dtype=torch.float64) ** 2
    close(prior.schedule.alphas_cumprod, torch.cumprod(1 - betas, 0), atol=1e-7, rtol=1e-5, what="alphas_cumprod")


def test_sd_encode_text_is_clip_last_hidden_state(sd_folders, sd_priors):
    prior = sd_priors["eps"]
    prompts = ["a red cube, side view", ""]
    emb = prior.encode_text(prompts)
    tok = transformers.AutoTokenizer.from_pretrained(sd_folders["eps"] + "/tokenizer")
    enc = transformers.CLIPTextModel.from_pretrained(sd_folders["eps"] + "/text_encoder").eval()
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = enc(ids).last_hidden_state
    assert emb.shape == (2, 77, TEXT_DIM)
    close(emb, ref, what="text embeddings")
    assert not torch.allclose(emb[0], emb[1])
    close(sd_priors["v"].encode_text(prompts), ref, what="text embeddings, vocab.json + merges.txt tokenizer")
    # any string is accepted: CLIP's byte-level tokenizer reads everything
    prior.check_prompt("a zebra \u2603 on 3 wheels")
    assert prior.encode_text(["a zebra \u2603 on 3 wheels " * 30]).shape == (1, 77, TEXT_DIM)  # truncated to 77


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_sd_predict_noise_is_the_unet(sd_folders, sd_priors, kind):
    prior = sd_priors[kind]
    unet = diffusers.UNet2DConditionModel.from_pretrained(sd_folders[kind] + "/unet").eval()
    torch.manual_seed(2)
    x_t, t = torch.randn(3, 4, 8, 8), torch.tensor([0, 417, 999])
    text = prior.encode_text(["a red cube", "", "a blue sphere, front view"])
    with torch.no_grad():
        out = unet(x_t, t, encoder_hidden_states=text).sample
        eps = prior.predict_noise(x_t, t, text)
    if kind == "v":  # eps = sqrt(abar) v + sqrt(1 - abar) x_t, abar from diffusers' own scheduler
        abar = diffusers.DDIMScheduler.from_pretrained(sd_folders[kind] + "/scheduler").alphas_cumprod
        a = abar[t].double().reshape(-1, 1, 1, 1)
        out = (a.sqrt() * out.double() + (1 - a).sqrt() * x_t.double()).float()
    close(eps, out, what=f"{kind} epsilon")


def test_sd_guided_noise_is_uncond_plus_scaled_difference(sd_priors):
    prior = sd_priors["v"]
    torch.manual_seed(3)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([120, 800])
    cond, uncond = prior.encode_text(["a red cube"]), prior.encode_text([""])
    with torch.no_grad():
        guided, e_c, e_u = prior.guided_noise(x_t, t, cond, uncond, 7.5)
        c = prior.predict_noise(x_t, t, cond)
        u = prior.predict_noise(x_t, t, uncond)
    close(e_c, c, what="conditional")
    close(e_u, u, what="unconditional")
    close(guided, u + 7.5 * (c - u), atol=1e-4, what="guided")


def test_sd_encode_images_is_the_vae_mean_and_differentiable(sd_folders, sd_priors):
    prior = sd_priors["eps"]
    vae = diffusers.AutoencoderKL.from_pretrained(sd_folders["eps"] + "/vae").eval()
    torch.manual_seed(4)
    rgb = torch.rand(2, 3, 20, 28, requires_grad=True)
    z = prior.encode_images(rgb)
    assert z.shape == (2, 4, 8, 8)
    x = F.interpolate(rgb, (16, 16), mode="bilinear", align_corners=False, antialias=True) * 2 - 1
    ref = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    close(z, ref, what="latents")
    up = torch.randn_like(z)
    (g,) = torch.autograd.grad(z, rgb, up)
    (g_ref,) = torch.autograd.grad(ref, rgb, up)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    close(g, g_ref, what="d latents / d rgb")
    # decode: the inverse map, back to [0, 1] at the VAE's input size
    with torch.no_grad():
        img = prior.decode(z)
        img_ref = ((vae.decode(ref / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
    assert img.shape == (2, 3, 16, 16) and img.min() >= 0 and img.max() <= 1
    close(img, img_ref, what="decoded")
    assert prior.encode_images(img).shape == z.shape
    with pytest.raises(ValueError, match="rgb"):
        prior.encode_images(torch.rand(2, 4, 16, 16))


def test_sd_pyengine_attention_gives_the_same_noise(sd_folders, sd_priors):
    prior = StableDiffusionPrior.from_pretrained(sd_folders["eps"], pyengine_attention=True)
    procs = {type(p).__name__ for p in prior.unet.attn_processors.values()}
    assert procs == {"PyengineAttnProcessor"}
    torch.manual_seed(5)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 600])
    text = prior.encode_text(["a red cube", ""])
    with torch.no_grad():
        close(prior.predict_noise(x_t, t, text), sd_priors["eps"].predict_noise(x_t, t, text), atol=1e-4,
              what="pyengine attention")


def test_sd_resolution_override_and_vsd_not_available(sd_folders, sd_priors):
    prior = StableDiffusionPrior.from_pretrained(sd_folders["eps"], resolution=32)
    assert prior.resolution == 32 and prior.encode_images(torch.rand(1, 3, 16, 16)).shape == (1, 4, 16, 16)
    with pytest.raises(ValueError, match="resolution"):
        StableDiffusionPrior.from_pretrained(sd_folders["eps"], resolution=15)
    with pytest.raises(NotImplementedError):
        sd_priors["eps"].lora_denoiser()


# -- DeepFloyd IF ------------------------------------------------------------------------------------------------------
def test_if_reads_the_pipeline(if_folder, if_prior):
    assert isinstance(if_prior, DeepFloydIFPrior)
    assert (if_prior.latent, if_prior.channels, if_prior.prediction, if_prior.resolution) == (False, 3, "eps", 16)
    assert _frozen(if_prior)
    # squaredcos_cap_v2: abar(t) = f(t) / f(0), f(t) = cos((t / T + 0.008) / 1.008 pi / 2)^2, betas capped at 0.999
    s = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    close(if_prior.schedule.alphas_cumprod, torch.cumprod(1 - betas, 0), atol=1e-7, rtol=1e-5, what="alphas_cumprod")
    with pytest.raises(NotImplementedError):
        if_prior.lora_denoiser()


def test_if_encode_text_is_t5_with_the_mask(if_folder, if_prior):
    emb = if_prior.encode_text(["  A Red cube, side view ", ""])
    tok = transformers.AutoTokenizer.from_pretrained(if_folder + "/tokenizer")
    enc = transformers.T5EncoderModel.from_pretrained(if_folder + "/text_encoder").eval()
    batch = tok(["a red cube, side view", ""], padding="max_length", max_length=77, truncation=True,
                return_tensors="pt")
    with torch.no_grad():
        ref = enc(batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    assert emb.shape == (2, 77, 24)
    close(emb, ref, what="T5 embeddings")
    if_prior.check_prompt("an unseen word: xylophone")


def test_if_predict_noise_is_the_first_three_unet_channels(if_folder, if_prior):
    unet = diffusers.UNet2DConditionModel.from_pretrained(if_folder + "/unet").eval()
    torch.manual_seed(6)
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([5, 900])
    text = if_prior.encode_text(["a blue sphere", ""])
    with torch.no_grad():
        out = unet(x_t, t, encoder_hidden_states=text).sample
        eps = if_prior.predict_noise(x_t, t, text)
        guided, e_c, e_u = if_prior.guided_noise(x_t, 900, text[:1], text[1:], 20.0)  # scalar step, [1] texts
        c, u = if_prior.predict_noise(x_t, 900, text[:1]), if_prior.predict_noise(x_t, 900, text[1:])
    assert out.shape[1] == 6
    close(eps, out[:, :3], what="IF epsilon")
    close(guided, u + 20.0 * (c - u), atol=1e-4, what="IF guided")


def test_if_images_round_trip(if_prior):
    rgb = torch.rand(2, 3, 16, 16, requires_grad=True)
    x = if_prior.encode_images(rgb)
    close(x, rgb * 2 - 1, what="[-1, 1]")
    close(if_prior.decode(x), rgb.detach(), what="round trip")
    big = torch.rand(1, 3, 40, 40, requires_grad=True)
    y = if_prior.encode_images(big)
    assert y.shape == (1, 3, 16, 16)
    close(y, F.interpolate(big, (16, 16), mode="bilinear", antialias=True) * 2 - 1, what="resized")
    (g,) = torch.autograd.grad(y.square().sum(), big)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


# -- not a pipeline ----------------------------------------------------------------------------------------------------
def test_bad_folders_raise_naming_the_path(tmp_path, if_folder):
    empty = tmp_path / "empty"
    empty.mkdir()
    for spec, cls in (("sd:", StableDiffusionPrior), ("if:", DeepFloydIFPrior)):
        with pytest.raises(ValueError, match="unet") as e:
            load_prior(spec + str(empty))
        assert str(empty) in str(e.value)
        with pytest.raises(ValueError) as e:
            cls.from_pretrained(str(tmp_path / "missing"))
        assert str(tmp_path / "missing") in str(e.value)
    with pytest.raises(ValueError, match="vae") as e:  # an IF folder has no VAE
        load_prior("sd:" + if_folder)
    assert if_folder in str(e.value)
    (empty / "unet").mkdir()
    with pytest.raises(ValueError, match="config.json") as e:
        StableDiffusionPrior.from_pretrained(str(empty))
    assert str(empty) in str(e.value)


# -- an unconditional pixel DDPM (UNet2DModel) ------------------------------------------------------------------------
def ddpm_unet(out_channels=3, **kw):
    return diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=out_channels, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                                 attention_head_dim=8, **kw)


@pytest.fixture(scope="module")
def ddpm_folders(tmp_path_factory):
    """A DDPMPipeline folder (linear betas, epsilon) and a learned-variance one (6 outputs, v)."""
    torch.manual_seed(2)
    eps = tmp_path_factory.mktemp("ddpm")
    diffusers.DDPMPipeline(unet=ddpm_unet(), scheduler=diffusers.DDPMScheduler(num_train_timesteps=T)).save_pretrained(
        str(eps))
    v = _save(tmp_path_factory.mktemp("ddpm_v"), unet=ddpm_unet(6),
              scheduler=diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2",
                                                prediction_type="v_prediction"))
    return {"eps": str(eps), "v": v}


def test_ddpm_prior_is_the_unet_on_the_scheduler_betas(ddpm_folders):
    from pyengine.diffusion.diffusers_prior import UnconditionalPixelPrior

    prior = load_prior("ddpm:" + ddpm_folders["eps"])
    assert isinstance(prior, UnconditionalPixelPrior) and not prior.latent and _frozen(prior)
    assert (prior.channels, prior.resolution, prior.prediction) == (3, 16, "eps")
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)  # DDPMScheduler's default linear betas
    close(prior.alphas_cumprod(dtype=torch.float64), torch.cumprod(1 - betas, 0), atol=1e-10, what="abar")
    unet = diffusers.UNet2DModel.from_pretrained(ddpm_folders["eps"] + "/unet").eval()
    torch.manual_seed(7)
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    text = prior.encode_text(["", ""])
    with torch.no_grad():
        close(prior.predict_noise(x_t, t, text), unet(x_t, t).sample, what="epsilon")
    with pytest.raises(ValueError, match="unconditional"):
        prior.encode_text(["a red cube"])
    rgb = torch.rand(1, 3, 24, 24)
    assert prior.encode_images(rgb).shape == (1, 3, 16, 16)
    close(prior.decode(prior.encode_images(torch.rand(1, 3, 16, 16)) * 0 + 2), torch.ones(1, 3, 16, 16), what="clamp")


def test_ddpm_prior_learned_variance_and_v(ddpm_folders):
    prior = load_prior("ddpm:" + ddpm_folders["v"])
    unet = diffusers.UNet2DModel.from_pretrained(ddpm_folders["v"] + "/unet").eval()
    torch.manual_seed(8)
    x_t, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    with torch.no_grad():
        v = unet(x_t, t).sample[:, :3]
        abar = prior.alphas_cumprod(dtype=torch.float64)[t].float().view(-1, 1, 1, 1)
        eps = abar.sqrt() * v + (1 - abar).sqrt() * x_t  # epsilon from a v prediction
        close(prior.predict_noise(x_t, t, prior.encode_text([""])), eps, atol=1e-4, what="v -> epsilon")
    assert prior.prediction == "v"


def test_ddpm_prior_runs_the_inverse_solvers(ddpm_folders):
    """The inverse-problem solvers take it as they take the bundled prior: DDRM on SR x4 in 3 steps."""
    from pyengine.inverse import Problem, make_operator, solve

    prior = load_prior("ddpm:" + ddpm_folders["eps"])
    op = make_operator("sr4", (3, 16, 16))
    x = torch.rand(2, 3, 16, 16)
    res = solve("ddrm", prior, Problem(op, op.forward(x), 0.05), steps=3, generator=torch.Generator().manual_seed(0))
    assert res.x.shape == (2, 3, 16, 16) and res.calls == 3 and bool(torch.isfinite(res.x).all())


def test_ddpm_bad_folders(tmp_path, ddpm_folders, if_folder):
    from pyengine.diffusion.diffusers_prior import UnconditionalPixelPrior

    with pytest.raises(ValueError, match="unet") as e:
        load_prior("ddpm:" + str(tmp_path))
    assert str(tmp_path) in str(e.value)
    with pytest.raises(ValueError, match="UNet2DModel"):  # an IF folder's UNet is text-conditional
        load_prior("ddpm:" + if_folder)
    cond = _save(tmp_path / "cond", unet=ddpm_unet(num_class_embeds=4), scheduler=diffusers.DDPMScheduler())
    with pytest.raises(ValueError, match="class-conditional"):
        UnconditionalPixelPrior.from_pretrained(cond)
    odd = _save(tmp_path / "odd", unet=ddpm_unet(out_channels=4), scheduler=diffusers.DDPMScheduler())
    with pytest.raises(ValueError, match="out_channels"):
        load_prior("ddpm:" + odd)

import math

import pytest
import torch

from pyengine.diffusion import NoiseSchedule, complete, ddim_sample, ddim_timesteps, ddpm_sample, training_loss

MU, STD = 0.7, 0.3  # toy data: every entry ~ N(MU, STD^2), whose optimal eps predictor is known


def gaussian_eps(schedule):
    """E[eps | x_t] for x_0 ~ N(MU, STD^2): sqrt(1 - a) (x_t - sqrt(a) MU) / (a STD^2 + 1 - a)."""
    def model(x, t, y=None):
        a = schedule.alphas_cumprod[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD ** 2 + 1 - a)
    return model


def as_prediction(eps_model, schedule, prediction):
    """The same optimal model, giving ``v`` or ``x0`` instead of ``eps``."""
    def model(x, t, y=None):
        eps = eps_model(x, t)
        a = schedule.alphas_cumprod[t].to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0 if prediction == "v" else x0
    return model


def test_linear_schedule_matches_a_direct_product():
    s = NoiseSchedule.linear(1000)
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    abar, direct = 1.0, []
    for b in betas:
        abar *= 1 - b
        direct.append(abar)
    assert torch.allclose(s.betas, torch.tensor(betas, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.allclose(s.alphas_cumprod, torch.tensor(direct, dtype=torch.float64), rtol=1e-12, atol=0)
    assert s.alphas_cumprod[-1] == pytest.approx(4.036e-5, rel=1e-3)


def test_cosine_schedule_follows_its_formula():
    T, off = 100, 0.008
    s = NoiseSchedule.cosine(T)
    f = lambda t: math.cos((t / T + off) / (1 + off) * math.pi / 2) ** 2
    want = torch.tensor([f(t + 1) / f(0) for t in range(T)], dtype=torch.float64)
    got = s.alphas_cumprod
    assert torch.allclose(got[:-1], want[:-1], rtol=1e-10)  # the last beta is clipped at 0.999
    assert bool((s.betas <= 0.999).all()) and got[-1] < 1e-4


def test_posterior_matches_bayes_rule_in_closed_form():
    s = NoiseSchedule.linear(50)
    t = torch.tensor([0, 1, 25, 49])
    x0, xt = torch.randn(4, 3), torch.randn(4, 3)
    mean, var = s.posterior(x0, xt, t)
    a, ab, abp = s.alphas[t, None], s.alphas_cumprod[t, None], s.alphas_cumprod_prev[t, None]
    # product of N(x_t; sqrt(a) x, 1 - a) and N(x; sqrt(abp) x0, 1 - abp) as a Gaussian in x
    prec = a / (1 - a) + 1 / (1 - abp).clamp_min(1e-300)
    want_mean = (a.sqrt() * xt.double() / (1 - a) + abp.sqrt() * x0.double() / (1 - abp).clamp_min(1e-300)) / prec
    assert torch.allclose(mean.double()[1:], want_mean[1:].float().double(), atol=1e-5)
    assert torch.allclose(var.flatten().double()[1:], (1 / prec).flatten()[1:].float().double(), rtol=1e-5)
    assert var[0] == 0 and torch.allclose(mean[0], x0[0])  # t = 0: x_0 itself
    assert torch.allclose(ab, torch.cumprod(s.alphas, 0)[t, None])


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule(torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="unknown schedule"):
        NoiseSchedule.from_name("quadratic")
    assert ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    assert ddim_timesteps(1000, 4) == [999, 666, 333, 0]


def test_ddim_eta1_over_all_steps_is_ddpm():
    s = NoiseSchedule.linear(200)
    model = gaussian_eps(s)
    a = ddpm_sample(model, s, (4, 3, 50), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    b = ddim_sample(model, s, (4, 3, 50), steps=200, eta=1.0, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    assert (a - b).abs().max() < 1e-9, (a - b).abs().max()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta1", "ddim_eta0_50"])
def test_samplers_reproduce_the_toy_statistics(sampler):
    s = NoiseSchedule.linear(1000)
    model, g = gaussian_eps(s), torch.Generator().manual_seed(0)
    shape = (8, 3, 1000)
    if sampler == "ddpm":
        x = ddpm_sample(model, s, shape, generator=g)
    elif sampler == "ddim_eta1":
        x = ddim_sample(model, s, shape, steps=1000, eta=1.0, generator=g)
    else:
        x = ddim_sample(model, s, shape, steps=50, eta=0.0, generator=g)
    # 50 deterministic steps shrink the spread a little (discretisation of the ODE: 0.275 for 0.3)
    std_tol = 0.01 if sampler != "ddim_eta0_50" else 0.03
    assert abs(x.mean().item() - MU) < 0.01 and abs(x.std().item() - STD) < std_tol, (x.mean(), x.std())


@pytest.mark.parametrize("sampler,mode", [("ddpm", "clean"), ("ddim", "clean"), ("ddim", "noised")])
def test_completion_keeps_the_observed_points_exactly(sampler, mode):
    s = NoiseSchedule.linear(1000)
    partial = torch.rand(3, 3, 17) * 5 + 2  # far from the toy data: a sampler that moved them would show
    out = complete(gaussian_eps(s), s, partial, 64, sampler=sampler, steps=10, known_mode=mode,
                   generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 64)
    assert torch.equal(out[..., :17], partial)
    assert abs(out[..., 17:].mean().item() - MU) < 0.05  # the rest comes from the model


def test_completion_model_sees_clean_known_points():
    s, seen = NoiseSchedule.linear(10), []
    partial = torch.full((1, 3, 4), 3.0)

    def model(x, t):
        seen.append(x[..., :4].clone())
        return torch.zeros_like(x)
    complete(model, s, partial, 8)
    assert len(seen) == 10 and all(torch.equal(v, partial) for v in seen)


def test_training_loss_is_eps_mse_and_masks_known_entries():
    s = NoiseSchedule.linear(100)
    x0 = torch.randn(4, 3, 32)
    zero = lambda x, t: torch.zeros_like(x)
    g = torch.Generator().manual_seed(0)
    assert training_loss(zero, s, x0, generator=g).item() == pytest.approx(1.0, abs=0.1)  # E[eps^2] = 1
    mask = torch.zeros(1, 1, 32, dtype=torch.bool)
    mask[..., :16] = True
    seen = {}

    def spy(x, t):
        seen["x"] = x
        return torch.where(mask, 100.0, 0.0).expand_as(x)  # huge error on known entries only
    loss = training_loss(spy, s, x0, generator=g, known_mask=mask)
    assert torch.equal(seen["x"][..., :16], x0[..., :16]) and loss.item() < 2.0


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_v_and_x0_models_sample_as_the_eps_model(prediction, sampler):
    s = NoiseSchedule.linear(100)
    eps_model = gaussian_eps(s)
    other = as_prediction(eps_model, s, prediction)
    run = ddpm_sample if sampler == "ddpm" else (lambda *a, **k: ddim_sample(*a, steps=20, **k))
    a = run(eps_model, s, (2, 3, 40), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    b = run(other, s, (2, 3, 40), generator=torch.Generator().manual_seed(3), dtype=torch.float64,
            prediction=prediction)
    assert (a - b).abs().max() < 1e-8, (a - b).abs().max()
    c = complete(other, s, torch.rand(2, 3, 5, dtype=torch.float64), 40, sampler=sampler, steps=20,
                 prediction=prediction, generator=torch.Generator().manual_seed(3))
    d = complete(eps_model, s, torch.rand(2, 3, 5, dtype=torch.float64), 40, sampler=sampler, steps=20,
                 generator=torch.Generator().manual_seed(3))
    assert c.shape == d.shape


def test_training_loss_at_given_steps():
    s = NoiseSchedule.cosine(50)
    x0 = torch.randn(3, 2, 5, dtype=torch.float64)
    seen = {}

    def spy(x, t):
        seen["x"], seen["t"] = x, t
        return torch.zeros_like(x)
    t = torch.tensor([49, 0, 17])
    loss = training_loss(spy, s, x0, generator=torch.Generator().manual_seed(2), prediction="v", t=t)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=x0.dtype)  # only the noise is drawn
    assert torch.equal(seen["t"], t)
    ab = s.alphas_cumprod.double()[t].view(3, 1, 1)
    assert torch.allclose(seen["x"], ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-12)
    v = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    assert loss.item() == pytest.approx((v ** 2).mean().item(), rel=1e-9)
    for bad in (torch.tensor([0, 1]), torch.tensor([0, 1, 50]), torch.tensor([0.0, 1.0, 2.0]), [0, 1, 2]):
        with pytest.raises(ValueError, match="t must be"):
            training_loss(spy, s, x0, t=bad)


def test_training_loss_targets_follow_the_prediction():
    s = NoiseSchedule.linear(100)
    x0 = torch.randn(4, 3, 32, dtype=torch.float64)
    eps_model = gaussian_eps(s)
    for prediction in ("eps", "v", "x0"):
        seen = {}

        def spy(x, t):
            seen["x"], seen["t"] = x, t
            return torch.zeros_like(x)
        loss = training_loss(spy, s, x0, generator=torch.Generator().manual_seed(5), prediction=prediction)
        g = torch.Generator().manual_seed(5)
        t = torch.randint(0, s.T, (4,), generator=g)
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        assert torch.equal(seen["t"], t)
        target = s.target(x0, t, noise, prediction)
        assert loss.item() == pytest.approx((target ** 2).mean().item(), rel=1e-12)
        # the implied noise of the exact target is the noise itself
        assert torch.allclose(s.eps_from(seen["x"], t, target, prediction), noise, atol=1e-9)
    with pytest.raises(ValueError, match="prediction"):
        training_loss(eps_model, s, x0, prediction="score")
    with pytest.raises(ValueError, match="prediction"):
        ddim_sample(eps_model, s, (1, 3, 4), steps=2, prediction="score")

import pytest
import torch

from pyengine.diffusion import NoiseSchedule, ddim_sample
from pyengine.diffusion.dpm_solver import dpm_solver_sample
from pyengine.diffusion.guidance import ClassifierFreeGuidance
from tests.diffusion.test_diffusion import MU, STD, as_prediction, gaussian_eps


def exact_ode(schedule, x_T):
    """The probability-flow ODE's end point for the Gaussian toy data, in closed form: along the flow
    the standardised value ``(x_t - alpha_t MU) / sqrt(alpha_t^2 STD^2 + sigma_t^2)`` is constant."""
    a = schedule.alphas_cumprod[-1].to(x_T.dtype)
    z = (x_T - a.sqrt() * MU) / (a * STD ** 2 + 1 - a).sqrt()
    return MU + STD * z


def _noise(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_first_order_is_ddim():
    s = NoiseSchedule.linear(1000)
    x_T = _noise((2, 3, 40))
    for steps in (1, 7, 50):
        a = dpm_solver_sample(gaussian_eps(s), s, x_T.shape, steps=steps, order=1, x_T=x_T, dtype=torch.float64,
                              spacing="uniform")
        b = ddim_sample(gaussian_eps(s), s, x_T.shape, steps=steps, eta=0.0, x_T=x_T, dtype=torch.float64)
        assert (a - b).abs().max() < 1e-10, (steps, (a - b).abs().max())


def test_20_steps_reproduce_the_data_statistics():
    s = NoiseSchedule.linear(1000)
    x_T = _noise((8, 3, 1000), 1).float()
    x = dpm_solver_sample(gaussian_eps(s), s, x_T.shape, steps=20, x_T=x_T)
    assert abs(x.mean().item() - MU) < 0.01 and abs(x.std().item() - STD) < 0.01, (x.mean(), x.std())
    # DDIM at 20 steps is visibly off (its first-order error shrinks the spread)
    d = ddim_sample(gaussian_eps(s), s, x_T.shape, steps=20, x_T=x_T)
    assert abs(d.std().item() - STD) > 2 * abs(x.std().item() - STD)


def test_second_order_converges_to_the_exact_ode_solution_faster_than_ddim():
    s = NoiseSchedule.linear(1000)
    x_T = _noise((2, 3, 200), 2)
    want = exact_ode(s, x_T)
    err = {}
    for order in (1, 2):
        for steps in (10, 20, 40, 80):
            x = dpm_solver_sample(gaussian_eps(s), s, x_T.shape, steps=steps, order=order, x_T=x_T,
                                  dtype=torch.float64)
            err[order, steps] = (x - want).abs().max().item()
    for steps in (10, 20, 40, 80):
        assert err[2, steps] < 0.25 * err[1, steps], err
    # error ~ steps^-order: halving the step size cuts the 2M error by about 4 (at least 2.8), DDIM's by about 2
    # (from 10 to 20 steps less: the smallest steps are rounded to the integer grid t = 0, 1, 4, 10, ...)
    assert err[2, 40] < err[2, 20] / 2.8 and err[2, 80] < err[2, 40] / 2.8, err
    assert err[1, 40] > err[1, 20] / 2.8, err


def test_matches_ddim_as_steps_grow():
    s = NoiseSchedule.linear(1000)
    x_T = _noise((2, 3, 50), 3)
    ddim = ddim_sample(gaussian_eps(s), s, x_T.shape, steps=1000, x_T=x_T, dtype=torch.float64)
    for spacing in ("logsnr", "uniform"):
        gaps = [(dpm_solver_sample(gaussian_eps(s), s, x_T.shape, steps=n, x_T=x_T, dtype=torch.float64,
                                   spacing=spacing) - ddim).abs().max().item() for n in (25, 100, 400)]
        assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.01, (spacing, gaps)


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_v_and_x0_models_sample_as_the_eps_model(prediction):
    s = NoiseSchedule.cosine(1000)  # the cosine schedule reaches abar ~ 1e-9: v must not lose precision there
    x_T = _noise((2, 3, 40), 4)
    a = dpm_solver_sample(gaussian_eps(s), s, x_T.shape, steps=15, x_T=x_T, dtype=torch.float64)
    b = dpm_solver_sample(as_prediction(gaussian_eps(s), s, prediction), s, x_T.shape, steps=15, x_T=x_T,
                          dtype=torch.float64, prediction=prediction)
    assert (a - b).abs().max() < 1e-6, (a - b).abs().max()


def test_clip_and_bad_arguments():
    s = NoiseSchedule.linear(100)
    far = lambda x, t: torch.full_like(x, -50.0)  # an x0 model predicting far outside [-1, 1]
    x = dpm_solver_sample(far, s, (1, 4), steps=5, prediction="x0", clip_x0=1.0, generator=torch.Generator())
    assert x.abs().max() <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="order"):
        dpm_solver_sample(far, s, (1, 4), order=3)
    with pytest.raises(ValueError, match="prediction"):
        dpm_solver_sample(far, s, (1, 4), prediction="score")
    with pytest.raises(ValueError, match="steps"):
        dpm_solver_sample(far, s, (1, 4), steps=101)


# -- classifier-free guidance ----------------------------------------------------------------------

def _cond_model(calls):
    def model(x, t, c):
        calls.append(x.shape[0])
        return x * c[:, :1].reshape(-1, *([1] * (x.dim() - 1))) + t.reshape(-1, *([1] * (x.dim() - 1)))
    return model


def test_guidance_combines_cond_and_uncond_in_one_batched_call():
    calls = []
    model = _cond_model(calls)
    x, t = torch.randn(3, 2, 5), torch.tensor([4, 5, 6])
    cond, uncond = torch.randn(3, 7), torch.randn(1, 7)
    for w in (0.0, 1.0, 2.5):
        calls.clear()
        got = ClassifierFreeGuidance(model, cond, uncond, w)(x, t)
        oc, ou = model(x, t, cond), model(x, t, uncond.expand(3, 7))
        assert torch.allclose(got, ou + w * (oc - ou), atol=1e-6)
        assert calls[0] == (6 if w not in (0.0, 1.0) else 3)  # one call on 2B (or B when no mixing is needed)
    two = ClassifierFreeGuidance(model, cond, uncond, 2.5, batched=False)(x, t)
    assert torch.allclose(two, ClassifierFreeGuidance(model, cond, uncond, 2.5)(x, t), atol=1e-6)
    with pytest.raises(ValueError, match="batch"):
        ClassifierFreeGuidance(model, torch.randn(2, 7), uncond, 2.0)(x, t)
    with pytest.raises(ValueError, match="unconditional"):
        ClassifierFreeGuidance(model, cond, None, 2.0)


def test_guided_sampling_with_both_samplers():
    s = NoiseSchedule.linear(1000)
    eps = gaussian_eps(s)
    # the condition shifts the data mean: c = 1 -> MU, c = 0 -> MU - 1 (the same eps model, shifted inputs)
    def model(x, t, c):
        shift = (1 - c[:, :1]).reshape(-1, 1, 1)
        a = s.alphas_cumprod[t].to(x.dtype).reshape(-1, 1, 1)
        return eps(x + a.sqrt() * shift, t)
    cond, uncond = torch.ones(1, 1), torch.zeros(1, 1)
    x_T = torch.randn(4, 3, 500, generator=torch.Generator().manual_seed(5))
    for w, want in ((1.0, MU), (0.0, MU - 1)):
        g = ClassifierFreeGuidance(model, cond, uncond, w)
        for x in (dpm_solver_sample(g, s, x_T.shape, steps=20, x_T=x_T),
                  ddim_sample(g, s, x_T.shape, steps=50, x_T=x_T)):
            assert abs(x.mean().item() - want) < 0.02, (w, x.mean())
    # guidance 2 extrapolates the mean away from the unconditional one: MU + (MU - (MU - 1))
    x = dpm_solver_sample(ClassifierFreeGuidance(model, cond, uncond, 2.0), s, x_T.shape, steps=20, x_T=x_T)
    assert x.mean().item() > MU + 0.5


def test_log_snr_steps_are_evenly_spaced_in_lambda():
    from pyengine.diffusion.dpm_solver import solver_timesteps

    for s in (NoiseSchedule.linear(1000), NoiseSchedule.cosine(1000)):
        for steps in (2, 20, 25, 50):
            ts = solver_timesteps(s, steps)
            assert len(ts) == steps and ts[0] == 999 and ts[-1] == 0 and all(a > b for a, b in zip(ts, ts[1:]))
        abar = s.alphas_cumprod[solver_timesteps(s, 20)]
        gaps = (0.5 * (abar.log() - (1 - abar).log())).diff()
        # evenly spaced up to rounding t to integers, which shows at the ends, where lambda changes
        # fastest per step (and the cosine schedule's clipped last beta jumps by 3.4)
        mid = gaps[4:-6]
        assert (mid - mid.mean()).abs().max() < 0.15 * mid.mean(), gaps
    assert solver_timesteps(NoiseSchedule.linear(100), 5, "uniform") == [99, 74, 50, 25, 0]
    with pytest.raises(ValueError, match="spacing"):
        solver_timesteps(NoiseSchedule.linear(100), 5, "karras")

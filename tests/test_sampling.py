"""Sampler package: EDM formulas, schedules, noise seeding, guidance, Euler and RES loops.

The samplers are checked against closed forms: for data that is a point mass or a Gaussian the
exact EDM denoiser is known, so the probability-flow ODE and even the discrete Euler recursion
can be solved by hand.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
import torch

from cosmos_dist.sampling import (
    AUGMENT_STREAM,
    SIGMA_DATA,
    NullHooks,
    SamplerSettings,
    StepHooks,
    c_in,
    c_noise,
    c_out,
    c_skip,
    condition_output,
    euler_sample,
    f_from_denoised,
    fixed_noise,
    guide,
    guided_denoiser,
    init_noise_sigma,
    initial_noise,
    karras_sigmas,
    needs_uncond,
    res_sample,
    res_sigmas,
    sample_seed,
    stream_seed,
)

# --------------------------------------------------------------------------------------------
# Helpers: exact denoisers, expressed as the raw network output F the samplers expect.


def point_mass_denoiser(a: torch.Tensor):
    """Data is exactly `a`: D(x, sigma) = a for every x and sigma."""

    def denoise(x_net, t, sigma, step):
        x = x_net.double() / c_in(sigma)  # undo the preconditioning to get x_sigma back
        return f_from_denoised(a.double(), x, sigma).to(x_net.dtype)

    return denoise


def gaussian_denoiser(mu: float, s: float):
    """Data ~ N(mu, s^2) per element: D(x, sigma) = mu + s^2/(s^2 + sigma^2) * (x - mu)."""

    def denoise(x_net, t, sigma, step):
        x = x_net.double() / c_in(sigma)
        d = mu + s**2 / (s**2 + sigma**2) * (x - mu)
        return f_from_denoised(d, x, sigma).to(x_net.dtype)

    return denoise


def gaussian_ode_endpoint(x_start: torch.Tensor, mu: float, s: float, sigma_start: float) -> torch.Tensor:
    """Exact PF-ODE solution at sigma 0 for Gaussian data.

    dx/dsigma = (x - D)/sigma = (x - mu) * sigma/(s^2 + sigma^2)  =>  x - mu ~ sqrt(s^2 + sigma^2).
    """
    return mu + (x_start.double() - mu) * s / math.sqrt(s**2 + sigma_start**2)


class Recorder(NullHooks):
    """Hooks that record what the loop passes them and change nothing."""

    def __init__(self):
        self.inputs = []  # (sigma, step, x clone)
        self.outputs = []  # (sigma, step)

    def network_input(self, x, sigma, step):
        self.inputs.append((sigma, step, x.clone()))
        return x

    def replace_output(self, f, x_in, sigma, step):
        self.outputs.append((sigma, step))
        return f


# --------------------------------------------------------------------------------------------
# EDM formulas (spec 2.1)


def test_preconditioning_hand_values_floats():
    assert SIGMA_DATA == 0.5
    # sigma = 1: sigma^2 + sigma_d^2 = 1.25
    assert c_skip(1.0) == pytest.approx(0.2, rel=1e-15)
    assert c_out(1.0) == pytest.approx(0.5 / math.sqrt(1.25), rel=1e-15)
    assert c_out(1.0) == pytest.approx(0.4472135954999579, rel=1e-15)
    assert c_in(1.0) == pytest.approx(0.8944271909999159, rel=1e-15)
    assert c_noise(1.0) == 0.0
    assert c_noise(math.exp(4.0)) == pytest.approx(1.0, rel=1e-15)
    # sigma = sigma_d: c_skip = 1/2, c_out = sigma_d/sqrt(2), c_in = 1/(sigma_d sqrt 2)
    assert c_skip(0.5) == pytest.approx(0.5)
    assert c_out(0.5) == pytest.approx(0.35355339059327373)
    assert c_in(0.5) == pytest.approx(1.4142135623730951)
    # large sigma: D -> F/2 scale, c_skip -> 0
    assert c_skip(80.0) == pytest.approx(0.25 / 6400.25)
    assert isinstance(c_skip(1.0), float) and isinstance(c_noise(2.0), float)


def test_preconditioning_tensors_match_floats():
    sig = torch.tensor([80.0, 1.0, 0.5, 0.0002], dtype=torch.float64)
    for fn in (c_skip, c_out, c_in, c_noise):
        out = fn(sig)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
        expected = torch.tensor([fn(float(v)) for v in sig], dtype=torch.float64)
        torch.testing.assert_close(out, expected, rtol=1e-14, atol=0)
    # float32 sigma stays float32 (the Euler loop relies on this, as diffusers does)
    assert c_out(torch.tensor(2.0)).dtype == torch.float32


def test_edm_identity_c_skip_c_out():
    # An identity of the EDM coefficients: c_skip + c_out^2 / sigma_d^2 = 1 for every sigma.
    for sigma in (0.0002, 0.3, 1.0, 7.0, 80.0):
        assert c_skip(sigma) + c_out(sigma) ** 2 / SIGMA_DATA**2 == pytest.approx(1.0, rel=1e-12)


def test_f_from_denoised_inverts_denoised():
    x = torch.randn(3, 4, dtype=torch.float64)
    d = torch.randn(3, 4, dtype=torch.float64)
    f = f_from_denoised(d, x, 2.5)
    torch.testing.assert_close(c_skip(2.5) * x + c_out(2.5) * f, d, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Schedules (spec 2.2, 2.7)

SPEC_SIGMAS_35 = (
    "80 67.126 56.070 46.614 38.558 31.727 25.960 21.116 17.069 13.705 10.927 8.6458 6.7857 "
    "5.2798 4.0699 3.1059 2.3446 1.7492 1.2884 0.93585 0.66944 0.47087 0.32509 0.21984 0.14526 "
    "0.093512 0.058444 0.035311 0.020516 0.011388 0.0059883 0.0029506 0.0013425 0.00055271 0.0002"
).split()


def test_karras_table_matches_spec():
    sigmas = karras_sigmas(35)
    assert sigmas.dtype == torch.float32 and sigmas.device.type == "cpu"
    assert sigmas.shape == (36,)
    assert len(SPEC_SIGMAS_35) == 35
    for i, printed in enumerate(SPEC_SIGMAS_35):
        want = Decimal(printed)
        got = Decimal(repr(float(sigmas[i]))).quantize(want, rounding=ROUND_HALF_EVEN)
        assert got == want, f"sigma[{i}] = {float(sigmas[i])} does not print as {printed}"
    assert float(sigmas[-1]) == 0.0
    assert round(float(c_noise(sigmas[0])), 4) == 1.0955
    assert round(float(c_noise(sigmas[34])), 4) == -2.1293
    assert round(init_noise_sigma(80.0), 5) == 80.00625
    assert init_noise_sigma(80.0) != 80.0


def test_karras_computed_in_float64_then_stored_float32():
    n, smin, smax, rho = 35, 0.0002, 80.0, 7.0
    ramp = [i / (n - 1) for i in range(n)]
    ref = [(smax ** (1 / rho) + r * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for r in ramp]
    expected = torch.tensor(ref + [0.0], dtype=torch.float64).to(torch.float32)
    # linspace vs i/(n-1) can differ by a float64 ulp, never by a float32 one here
    assert torch.equal(karras_sigmas(n), expected)
    assert float(karras_sigmas(n)[0]) == 80.0
    assert float(karras_sigmas(n)[-2]) == pytest.approx(0.0002, rel=1e-7)


def test_karras_other_arguments_and_validation():
    s = karras_sigmas(4, sigma_min=0.1, sigma_max=10.0, rho=1.0)  # rho 1: linear in sigma
    torch.testing.assert_close(s, torch.tensor([10.0, 6.7, 3.4, 0.1, 0.0]))
    assert karras_sigmas(1).tolist() == [80.0, 0.0]
    for bad in (dict(num_steps=0), dict(num_steps=3, sigma_min=0.0), dict(num_steps=3, sigma_min=90.0)):
        with pytest.raises(ValueError):
            karras_sigmas(**bad)


def test_res_timestamps():
    s = res_sigmas(35)
    assert s.dtype == torch.float64 and s.shape == (36,)
    assert float(s[0]) == pytest.approx(80.0, rel=1e-15)
    assert float(s[-1]) == pytest.approx(0.002, rel=1e-12)  # RES ends at sigma_min, not 0
    # ramp i/N (not i/(N-1)): the midpoint of N = 2 is the rho-mean of the ends
    mid = ((80 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert float(res_sigmas(2)[1]) == pytest.approx(mid, rel=1e-14)
    assert bool((s[1:] < s[:-1]).all())


# --------------------------------------------------------------------------------------------
# Noise (spec 2.5, pitfall 9)


def test_sample_seed_stable_and_distinct():
    seed = sample_seed(1, "sample_0")
    assert isinstance(seed, int) and 0 <= seed < 2**63
    assert sample_seed(1, "sample_0") == seed
    # pinned: changing the derivation silently changes every video ever generated
    assert sample_seed(0, "a") == sample_seed(0, "a") == 6630495126761019714
    assert sample_seed(2, "sample_0") != seed
    assert sample_seed(1, "sample_1") != seed
    # no ambiguity between the fields: ("1", "2x") vs ("12", "x")
    assert sample_seed(1, "2x") != sample_seed(12, "x")
    assert stream_seed(1, "a", "augment") != sample_seed(1, "a")
    assert stream_seed(1, "a:b", "c") != stream_seed(1, "a", "b:c")
    with pytest.raises(TypeError):
        sample_seed("1", "a")
    with pytest.raises(TypeError):
        sample_seed(1, 5)


def test_initial_noise_deterministic_and_scaled():
    shape = (1, 16, 2, 4, 6)
    a = initial_noise(shape, 7, "clip")
    b = initial_noise(shape, 7, "clip")
    assert a.dtype == torch.float32 and a.shape == shape and a.device.type == "cpu"
    assert torch.equal(a, b)
    assert not torch.equal(a, initial_noise(shape, 7, "clip2"))
    assert not torch.equal(a, initial_noise(shape, 8, "clip"))
    # it is randn from a generator seeded with sample_seed, times sqrt(80^2 + 1)
    g = torch.Generator().manual_seed(sample_seed(7, "clip"))
    torch.testing.assert_close(a, torch.randn(shape, generator=g) * 80.00624975587844, rtol=0, atol=0)
    assert torch.equal(initial_noise(shape, 0, "", seed=sample_seed(7, "clip")), a)
    scaled = initial_noise(shape, 7, "clip", sigma_max=10.0)
    torch.testing.assert_close(scaled / math.sqrt(101.0), a / 80.00624975587844)


def test_noise_independent_of_prior_rng_use():
    shape = (2, 3, 5)
    torch.manual_seed(0)
    first = initial_noise(shape, 3, "x")
    aug_first = fixed_noise(shape, 3, "x", AUGMENT_STREAM)
    torch.manual_seed(12345)
    torch.randn(1000)
    torch.rand(17)
    initial_noise((9,), 3, "other")  # another sample drawn before
    fixed_noise((9,), 3, "x", "other-stream")
    assert torch.equal(initial_noise(shape, 3, "x"), first)
    assert torch.equal(fixed_noise(shape, 3, "x", AUGMENT_STREAM), aug_first)
    # and drawing noise does not disturb the global generator
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    initial_noise(shape, 3, "x")
    assert torch.equal(torch.rand(4), expected)


def test_streams_never_share_draws():
    shape = (4096,)
    init = initial_noise(shape, 1, "s") / init_noise_sigma(80.0)
    aug = fixed_noise(shape, 1, "s", "augment")
    other = fixed_noise(shape, 1, "s", "other")
    assert aug.dtype == torch.float32 and aug.shape == shape
    assert torch.equal(aug, fixed_noise(shape, 1, "s", "augment"))
    for u, v in ((init, aug), (init, other), (aug, other)):
        assert not torch.isclose(u, v).any()  # not equal anywhere, not shifted copies at offset 0
        assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 0.1
    # a stream is standard normal, not scaled
    assert 0.9 < float(aug.std()) < 1.1
    with pytest.raises(ValueError):
        fixed_noise(shape, 1, "s", "")


# --------------------------------------------------------------------------------------------
# Guidance (spec 2.4)


def test_guide_formula():
    fc = torch.tensor([1.0, 2.0, -3.0])
    fu = torch.tensor([0.5, 2.0, 1.0])
    # F_c + 7 (F_c - F_u)
    assert torch.equal(guide(fc, fu, 7.0), torch.tensor([4.5, 2.0, -31.0]))
    assert torch.equal(guide(fc, fu, 1.0), torch.tensor([1.5, 2.0, -7.0]))
    assert torch.equal(guide(fc, fu, 0.0), fc)
    assert torch.equal(guide(fc, None, 0.0), fc)
    with pytest.raises(ValueError):
        guide(fc, None, 7.0)
    with pytest.raises(ValueError):
        guide(fc, fu[:2], 7.0)
    assert needs_uncond(7.0) and needs_uncond(-1.0) and not needs_uncond(0.0) and not needs_uncond(0)
    with pytest.raises(ValueError):
        needs_uncond(float("nan"))


def test_guide_keeps_bf16_like_reference():
    fc = torch.tensor([1.0, 3.0], dtype=torch.bfloat16)
    fu = torch.tensor([0.0078125, 2.0], dtype=torch.bfloat16)
    out = guide(fc, fu, 7.0)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, fc + 7.0 * (fc - fu))


def test_guided_denoiser_calls():
    calls = []

    def cond(x, t, sigma, step):
        calls.append("c")
        return x + 1

    def uncond(x, t, sigma, step):
        calls.append("u")
        return x - 1

    x = torch.zeros(2)
    out = guided_denoiser(cond, uncond, 7.0)(x, torch.zeros(1), 1.0, 0)
    assert torch.equal(out, torch.full((2,), 15.0)) and calls == ["c", "u"]
    calls.clear()

    def no_uncond(*args):
        raise AssertionError("the unconditional pass must not run at guidance 0")

    out = guided_denoiser(cond, no_uncond, 0.0)(x, torch.zeros(1), 1.0, 0)
    assert torch.equal(out, torch.ones(2)) and calls == ["c"]
    guided_denoiser(cond, None, 0.0)  # allowed
    with pytest.raises(ValueError):
        guided_denoiser(cond, None, 7.0)


# --------------------------------------------------------------------------------------------
# Euler (spec 2.3)


def test_euler_one_step_by_hand():
    # Two steps 2.0 -> 1.0 -> 0 with a constant network output F = 0.25.
    sigmas = torch.tensor([2.0, 1.0, 0.0])
    x0 = torch.tensor([[3.0, -1.0]])
    seen = []

    def denoise(x_net, t, sigma, step):
        seen.append((x_net.clone(), t.clone(), sigma, step))
        return torch.full_like(x_net, 0.25)

    out = euler_sample(denoise, x0, sigmas)
    # step 0, sigma 2: c_in = 1/sqrt(4.25), c_skip = 0.25/4.25, c_out = 1/sqrt(4.25)
    r = math.sqrt(4.25)
    torch.testing.assert_close(seen[0][0], x0 / r)
    torch.testing.assert_close(seen[0][1], torch.tensor([0.25 * math.log(2.0)]))
    assert seen[0][2] == 2.0 and seen[0][3] == 0
    d0 = (0.25 / 4.25) * x0 + (1 / r) * 0.25
    x1 = x0 + (x0 - d0) / 2.0 * (1.0 - 2.0)  # = (x0 + d0)/2
    torch.testing.assert_close(seen[1][0], x1 / math.sqrt(1.25))
    assert seen[1][2] == 1.0 and seen[1][3] == 1
    # last step, to sigma 0: exactly D(x1, 1)
    d1 = 0.2 * x1 + (0.5 / math.sqrt(1.25)) * 0.25
    torch.testing.assert_close(out, d1, rtol=1e-6, atol=1e-6)
    assert out.dtype == torch.float32


def test_euler_final_step_returns_exact_denoised_value():
    # The step to sigma 0 returns D itself, not x + (x - D)/s * (0 - s), which differs from D by
    # float32 rounding in most elements when the last sigma is large.
    sigmas = torch.tensor([7.7, 3.0, 0.0])
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 1000, generator=g)
    x_last = 10 * torch.randn(4, 1000, generator=g)

    class SetState(NullHooks):
        def network_input(self, x, sigma, step):
            return x_last if step == 1 else x

    out = euler_sample(lambda x, t, s, i: f.clone(), torch.randn(4, 1000), sigmas, hooks=SetState())
    s = sigmas[1]
    assert torch.equal(out, c_skip(s) * x_last + c_out(s) * f)


def test_euler_point_mass_lands_on_data_and_follows_ode():
    torch.manual_seed(1)
    a = torch.randn(2, 16, 2, 3, 4)
    noise = initial_noise(a.shape, 0, "pm")
    rec = Recorder()
    sigmas = karras_sigmas(35)
    out = euler_sample(point_mass_denoiser(a), noise, sigmas, hooks=rec)
    torch.testing.assert_close(out, a, rtol=1e-5, atol=1e-5)
    # for a point mass the ODE is x - a ∝ sigma and Euler is exact: x_i - a = (noise - a) sigma_i/sigma_0
    for sigma, step, x in rec.inputs[1:]:
        expected = a + (noise - a) * (sigma / 80.0)
        torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-5 * float(noise.abs().max()))
    assert [s for s, _, _ in rec.inputs] == sigmas[:-1].tolist()
    assert [i for _, i, _ in rec.inputs] == list(range(35))
    assert rec.outputs == [(s, i) for s, i, _ in rec.inputs]


def test_euler_gaussian_matches_discrete_recursion_and_ode():
    mu, s = 0.3, 0.7
    noise = initial_noise((3, 1000), 2, "gauss")
    sigmas = karras_sigmas(35)
    out = euler_sample(gaussian_denoiser(mu, s), noise, sigmas)
    # linear D makes each Euler step a scalar factor on (x - mu):
    #   1 + sigma (sigma' - sigma)/(s^2 + sigma^2); the last step returns D: factor s^2/(s^2 + sigma^2)
    sig = sigmas.double().tolist()
    factor = 1.0
    for i in range(34):
        factor *= 1 + sig[i] * (sig[i + 1] - sig[i]) / (s**2 + sig[i] ** 2)
    factor *= s**2 / (s**2 + sig[34] ** 2)
    torch.testing.assert_close(out.double(), mu + factor * (noise.double() - mu), rtol=1e-5, atol=1e-4)
    # first-order convergence to the exact ODE endpoint: error shrinks ~ steps^-1
    errs = []
    for n in (35, 140):
        o = euler_sample(gaussian_denoiser(mu, s), noise, karras_sigmas(n))
        errs.append(float((o.double() - gaussian_ode_endpoint(noise, mu, s, 80.0)).abs().max()))
    assert errs[1] < errs[0] / 3 and errs[1] > errs[0] / 6, errs
    # the output has the data's std (the ODE maps N(0, 80^2) onto N(mu, s^2))
    o = euler_sample(gaussian_denoiser(mu, s), noise * (80.0 / init_noise_sigma(80.0)), karras_sigmas(140))
    assert abs(float(o.std()) - s) < 0.05 and abs(float(o.mean()) - mu) < 0.05


def test_euler_bf16_casts():
    shape = (2, 16, 2, 2, 2)
    noise = initial_noise(shape, 4, "bf16")
    sigmas = karras_sigmas(6)
    seen = []
    rec = Recorder()

    def denoise(x_net, t, sigma, step):
        seen.append((x_net.dtype, t.dtype, t.shape, t.clone(), sigma))
        return (0.3 * x_net.float() + 0.1).to(torch.float32)  # returns fp32 on purpose

    out = euler_sample(denoise, noise, sigmas, dtype=torch.bfloat16, hooks=rec)
    assert all(d == torch.bfloat16 and td == torch.bfloat16 and ts == (2,) for d, td, ts, _, _ in seen)
    for i, (_, _, _, t, sigma) in enumerate(seen):
        assert sigma == float(sigmas[i])
        # c_noise = 0.25 ln(sigma) computed from the float32 sigma, then cast to bf16
        want = (0.25 * torch.log(sigmas[i])).to(torch.bfloat16)
        assert torch.equal(t, want.expand(2))
    # every state is stored in bf16, the initial noise included (rounded before the first step)
    assert torch.equal(rec.inputs[0][2], noise.to(torch.bfloat16))
    for _, step, x in rec.inputs:
        assert x.dtype == torch.bfloat16
    assert out.dtype == torch.float32
    assert torch.equal(out, out.to(torch.bfloat16).float())
    # the bf16 run stays close to the float32 run
    ref = euler_sample(denoise, noise, sigmas)
    assert float((out - ref).abs().max()) < 0.05 * float(ref.abs().max())


def test_euler_bf16_one_step_by_hand():
    # One step 3.0 -> 1.5 in bf16, spec 2.3: the net input is rounded to bf16, F is taken in bf16,
    # c_out*F rounds in bf16, the rest is float32, and the new state is rounded to bf16. Many
    # elements, so that a missing rounding flips some bf16 results.
    sigmas = torch.tensor([3.0, 1.5, 0.0])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 512, generator=g)
    f = torch.randn(8, 512, generator=g)  # float32: the loop must round it to bf16
    got = {}

    def denoise(x_net, t, sigma, step):
        got.setdefault("x_net", x_net)
        return f

    rec = Recorder()
    euler_sample(denoise, x, sigmas, dtype=torch.bfloat16, hooks=rec)
    x = x.to(torch.bfloat16).float()  # the initial state is rounded too, before the step
    s = torch.tensor(3.0)
    assert torch.equal(got["x_net"], (x * (1 / (s**2 + 0.25) ** 0.5)).to(torch.bfloat16))
    cout_f = (c_out(s) * f.to(torch.bfloat16).float()).to(torch.bfloat16).float()
    d = c_skip(s) * x + cout_f
    x1 = (x + (x - d) / s * (torch.tensor(1.5) - s)).to(torch.bfloat16)
    assert torch.equal(rec.inputs[1][2], x1)


def test_euler_initial_state_is_rounded_like_the_reference():
    # The reference's loop casts the state to the run dtype at the top of EVERY iteration, the first included
    # (Text2World draws float32 noise, Video2World draws bf16 noise directly). Its first step, restated:
    #   xt = xt.to(bf16); x_net = (c_in * xt) -> bf16; F = net(x_net)
    #   D = c_skip * xt + (c_out * F) -> bf16; xt = (xt + (xt - D) / s * (s' - s)) -> bf16
    bf16 = torch.bfloat16
    sigmas = karras_sigmas(4)[:2]  # one step, 80 -> 27.3
    noise = initial_noise((4, 512), 9, "first-step")  # float32, as Text2World draws it

    def net(x_net):
        return (0.3 * x_net.float() - 0.2).to(bf16)

    got = euler_sample(lambda x_net, t, sigma, step: net(x_net), noise, sigmas, dtype=bf16)

    def reference_first_step(xt):
        s, s_next = sigmas[0], sigmas[1]
        x32 = xt.float()
        x_net = (x32 * (1 / (s**2 + 0.25) ** 0.5)).to(bf16)
        cout_f = (s * 0.5 / (s**2 + 0.25) ** 0.5 * net(x_net).float()).to(bf16).float()
        d = 0.25 / (s**2 + 0.25) * x32 + cout_f
        return (x32 + (x32 - d) / s * (s_next - s)).to(bf16).float()

    assert torch.equal(got, reference_first_step(noise.to(bf16)))
    assert not torch.equal(got, reference_first_step(noise))  # entering unrounded gives other numbers
    # float32 runs are untouched by the cast
    assert torch.equal(euler_sample(lambda x, t, s, i: net(x).float(), noise, sigmas),
                       euler_sample(lambda x, t, s, i: net(x).float(), noise.double(), sigmas))


def test_res_initial_state_is_not_rounded():
    # The reference's RES starts from its float32 noise (x0_fn casts x to the noise's own dtype, float32) and
    # keeps float64 states after: only the network input is rounded to the run dtype.
    noise = initial_noise((2, 64), 9, "res-first")
    rec = Recorder()
    nets = []

    def denoise(x_net, t, sigma, step):
        nets.append(x_net)
        return torch.zeros_like(x_net)

    res_sample(denoise, noise, num_steps=2, dtype=torch.bfloat16, hooks=rec)
    assert rec.inputs[0][2].dtype == torch.float64 and torch.equal(rec.inputs[0][2], noise.double())
    assert torch.equal(nets[0], (noise.double() * c_in(80.0)).to(torch.bfloat16))


def test_initial_noise_scale_per_sampler_like_the_reference():
    # Euler: diffusers' init_noise_sigma, sqrt(sigma_max^2 + 1). RES: the reference's training model scales its
    # noise by sigma_max itself. Same standard normal draw for both.
    shape = (3, 7)
    gen = torch.Generator().manual_seed(sample_seed(11, "scale"))
    unit = torch.randn(shape, generator=gen, dtype=torch.float32)
    euler, res = SamplerSettings("euler"), SamplerSettings("res")
    assert euler.init_noise_sigma() == math.sqrt(80.0**2 + 1) and res.init_noise_sigma() == 80.0
    assert torch.equal(euler.initial_noise(shape, 11, "scale"), unit * math.sqrt(80.0**2 + 1))
    assert torch.equal(res.initial_noise(shape, 11, "scale"), unit * 80.0)
    assert torch.equal(SamplerSettings("res", sigma_max=20.0).initial_noise(shape, 11, "scale"), unit * 20.0)
    assert torch.equal(res.initial_noise(shape, 0, "", seed=sample_seed(11, "scale")), unit * 80.0)
    assert torch.equal(euler.initial_noise(shape, 11, "scale"), initial_noise(shape, 11, "scale"))


def test_condition_replacement_formulas():
    # Video2World's replaced output on the condition frames (spec 2.6 step 4), restated with sigma_data = 0.5.
    g = torch.Generator().manual_seed(4)
    gt = torch.randn(2, 300, generator=g, dtype=torch.float64)
    x_in = 30 * torch.randn(2, 300, generator=g, dtype=torch.float64)
    for s in (80.0, 1.7, 0.01):
        cs, co = 0.25 / (s * s + 0.25), s * 0.5 / math.sqrt(s * s + 0.25)
        intended = condition_output(gt, x_in, s)
        torch.testing.assert_close(intended, (gt - cs * x_in) / co, rtol=1e-13, atol=0)
        torch.testing.assert_close(cs * x_in + co * intended, gt, rtol=0, atol=1e-9 * max(1.0, s))  # D == gt
        # the reference's code as written: latent / c_out - c_skip * xt
        as_written = condition_output(gt, x_in, s, "reference")
        torch.testing.assert_close(as_written, gt / co - cs * x_in, rtol=1e-13, atol=1e-12)
        torch.testing.assert_close(cs * x_in + co * as_written, gt + cs * (1 - co) * x_in, rtol=1e-12, atol=1e-10)
        assert (as_written - intended).abs().max() > 1e-3  # the two differ at every sigma here
    with pytest.raises(ValueError, match="condition_replacement"):
        condition_output(gt, x_in, 1.0, "as_written")


def test_euler_is_layout_agnostic():
    # Full latent (B,16,T,H,W) and its token view (B, n, 64) give the same numbers.
    mu, s = -0.2, 0.9
    latent = initial_noise((1, 16, 2, 4, 4), 5, "layout")
    tokens = latent.reshape(1, 16, 2, 2, 2, 2, 2).permute(0, 2, 3, 5, 4, 6, 1).reshape(1, 8, 64)
    seen_t = []

    def den(x_net, t, sigma, step):
        seen_t.append(t.shape)
        return gaussian_denoiser(mu, s)(x_net, t, sigma, step)

    out_l = euler_sample(den, latent, karras_sigmas(8), dtype=torch.bfloat16)
    out_t = euler_sample(den, tokens, karras_sigmas(8), dtype=torch.bfloat16)
    back = out_l.reshape(1, 16, 2, 2, 2, 2, 2).permute(0, 2, 3, 5, 4, 6, 1).reshape(1, 8, 64)
    assert torch.equal(back, out_t)
    assert set(seen_t) == {torch.Size([1])}


@pytest.mark.parametrize("sampler", ["euler", "res"])
def test_video2world_style_hooks_are_used(sampler):
    # Condition frame t=0 is pinned: the state is replaced there by 2*gt and F is replaced so that
    # D equals gt (spec 2.6). The other frames follow the point-mass denoiser towards `a`.
    torch.manual_seed(3)
    gt = torch.randn(1, 4, 3, 2, 2)
    a = torch.randn(1, 4, 3, 2, 2)
    mask = torch.zeros(1, 1, 3, 1, 1)
    mask[:, :, 0] = 1
    settings = SamplerSettings(sampler, num_steps=10)
    sigmas = settings.sigmas()
    calls, states = [], []

    class Pin(StepHooks):
        def network_input(self, x, sigma, step):
            calls.append(("in", sigma, step))
            states.append(x.clone())
            return mask * (2.0 * gt) + (1 - mask) * x  # deliberately not gt: must reach the net

        def replace_output(self, f, x_in, sigma, step):
            calls.append(("out", sigma, step))
            assert torch.equal(x_in * mask, (2.0 * gt * mask).to(x_in.dtype))
            f_rep = f_from_denoised(gt.double(), x_in.double(), sigma).to(f.dtype)
            return mask * f_rep + (1 - mask) * f

    net_inputs = []

    def denoise(x_net, t, sigma, step):
        net_inputs.append(x_net.clone())
        return point_mass_denoiser(a)(x_net, t, sigma, step)

    out = settings.sample(denoise, initial_noise(gt.shape, 0, "v2w"), hooks=Pin())
    evaluations = settings.num_network_evaluations
    expected_calls = []
    for i in range(evaluations):
        sigma = pytest.approx(float(sigmas[i]), rel=1e-12)
        expected_calls += [("in", sigma, i), ("out", sigma, i)]
    assert calls == expected_calls
    for i, x_net in enumerate(net_inputs):
        torch.testing.assert_close(x_net[:, :, 0], (2.0 * gt * c_in(float(sigmas[i])))[:, :, 0])
    # each update starts from x_in (2 gt), not from the old state: with D = gt both samplers give
    # gt * (1 + sigma_next/sigma) in the condition frame
    for i in range(1, evaluations):
        ratio = float(sigmas[i]) / float(sigmas[i - 1])
        torch.testing.assert_close(states[i][:, :, 0].float(), gt[:, :, 0] * (1 + ratio), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, :, 0], gt[:, :, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, :, 1:], a[:, :, 1:], rtol=1e-5, atol=1e-5)


def test_progress_and_validation():
    ticks = []
    euler_sample(lambda x, t, s, i: x, torch.zeros(1, 3), karras_sigmas(4), progress=lambda i, n, x: ticks.append((i, n)))
    assert ticks == [(0, 4), (1, 4), (2, 4), (3, 4)]
    with pytest.raises(ValueError):
        euler_sample(lambda x, t, s, i: x, torch.zeros(1, 3), torch.tensor([1.0]))
    with pytest.raises(ValueError):
        euler_sample(lambda x, t, s, i: x, torch.zeros(1, 3), torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError):  # a broadcasting output is a bug, not a sample
        euler_sample(lambda x, t, s, i: x[:, :1], torch.zeros(1, 3), karras_sigmas(2))


# --------------------------------------------------------------------------------------------
# SamplerSettings


def test_sampler_settings():
    e = SamplerSettings()
    assert e.to_dict() == {"name": "euler", "num_steps": 35, "sigma_min": 0.0002, "sigma_max": 80.0, "rho": 7.0}
    assert e.num_network_evaluations == 35
    assert torch.equal(e.sigmas(), karras_sigmas(35))
    r = SamplerSettings("res", num_steps=10)
    assert r.sigma_min == 0.002 and r.num_network_evaluations == 11
    assert SamplerSettings("res", sigma_min=0.0002).sigma_min == 0.0002
    for bad in (dict(name="heun"), dict(num_steps=0), dict(sigma_min=100.0), dict(rho=0.0)):
        with pytest.raises(ValueError):
            SamplerSettings(**bad)

    den = gaussian_denoiser(0.1, 0.5)
    noise = initial_noise((2, 8), 0, "settings")
    assert torch.equal(
        SamplerSettings("euler", num_steps=6).sample(den, noise, dtype=torch.bfloat16),
        euler_sample(den, noise, karras_sigmas(6), dtype=torch.bfloat16),
    )
    assert torch.equal(
        SamplerSettings("res", num_steps=6, sigma_min=0.01, rho=5.0).sample(den, noise),
        res_sample(den, noise, num_steps=6, sigma_min=0.01, rho=5.0),
    )

"""RES 2ab (spec 2.7): its steps by hand, exact cases, and its dtypes. Helpers: tests/test_sampling.py."""

from __future__ import annotations

import math

import pytest
import torch

from cosmos_dist.sampling import (
    c_in, euler_sample, f_from_denoised, initial_noise, karras_sigmas, res_2ab_step, res_first_order_step, res_sample,
    res_sigmas,
)
from test_sampling import Recorder, gaussian_denoiser, gaussian_ode_endpoint, point_mass_denoiser


# --------------------------------------------------------------------------------------------
# RES 2ab (spec 2.7)


def test_res_first_order_step_by_hand():
    x_s = torch.tensor([4.0], dtype=torch.float64)
    x0 = torch.tensor([1.0], dtype=torch.float64)
    # from 2 to 0.5: (1.5/2)*1 + (0.5/2)*4 = 0.75 + 1.0
    assert float(res_first_order_step(x_s, x0, 2.0, 0.5)) == pytest.approx(1.75, rel=1e-15)


def test_res_2ab_step_exact_for_x0_affine_in_log_sigma():
    # dx/dlambda = D - x with lambda = -ln sigma. For D = p + q (lambda - lambda_s) the exact solution
    # over dt is e^-dt x_s + p (1 - e^-dt) + q (dt - 1 + e^-dt); AB2 interpolates D exactly.
    s_prev, s, t = 3.0, 1.7, 0.6
    p, q = 0.8, -0.45
    lam = lambda v: -math.log(v)  # noqa: E731
    dt = lam(t) - lam(s)
    x_s = torch.tensor([2.5], dtype=torch.float64)
    x0_s = torch.tensor([p], dtype=torch.float64)
    x0_prev = torch.tensor([p + q * (lam(s_prev) - lam(s))], dtype=torch.float64)
    exact = math.exp(-dt) * 2.5 + p * (1 - math.exp(-dt)) + q * (dt - 1 + math.exp(-dt))
    assert float(res_2ab_step(x_s, x0_s, x0_prev, s, t, s_prev)) == pytest.approx(exact, rel=1e-13)
    # constant x0 reduces to the first-order step
    same = res_2ab_step(x_s, x0_s, x0_s, s, t, s_prev)
    torch.testing.assert_close(same, res_first_order_step(x_s, x0_s, s, t), rtol=1e-14, atol=1e-14)


def test_res_two_steps_by_hand():
    # num_steps = 2: evaluations at sigma_0, sigma_1 (steps) and sigma_2 (sample clean).
    d = [0.5, -0.25, 1.5]  # D returned at each evaluation, whatever x is
    x_start = torch.tensor([[10.0]])
    sig = res_sigmas(2, sigma_min=0.01, sigma_max=20.0).tolist()

    def denoise(x_net, t, sigma, step):
        x = x_net.double() / c_in(sigma)
        assert sigma == sig[step]
        return f_from_denoised(torch.full_like(x, d[step]), x, sigma).float()

    rec = Recorder()
    ticks = []
    out = res_sample(denoise, x_start, num_steps=2, sigma_min=0.01, sigma_max=20.0, hooks=rec,
                     progress=lambda i, n, x: ticks.append((i, n)))
    s0, s1, s2 = sig
    x1 = (s0 - s1) / s0 * d[0] + s1 / s0 * 10.0
    lam = [-math.log(v) for v in sig]
    dt = lam[2] - lam[1]
    c2 = (lam[0] - lam[1]) / dt
    h = -dt
    phi1 = (math.exp(h) - 1) / h
    phi2 = (phi1 - 1) / h
    b1, b2 = phi1 - phi2 / c2, phi2 / c2
    x2 = math.exp(-dt) * x1 + dt * (b1 * d[1] + b2 * d[0])
    assert float(rec.inputs[1][2]) == pytest.approx(x1, rel=1e-6)
    assert float(rec.inputs[2][2]) == pytest.approx(x2, rel=1e-6)
    assert float(out) == pytest.approx(d[2], rel=1e-6)  # the final clean evaluation is returned
    assert [st for _, st, _ in rec.inputs] == [0, 1, 2]
    assert ticks == [(0, 3), (1, 3), (2, 3)]
    assert all(x.dtype == torch.float64 for _, _, x in rec.inputs[1:])  # the RES state is float64
    assert out.dtype == torch.float32


def test_res_point_mass_and_gaussian():
    torch.manual_seed(2)
    a = torch.randn(2, 16, 2, 2, 3)
    noise = initial_noise(a.shape, 1, "res")
    torch.testing.assert_close(res_sample(point_mass_denoiser(a), noise), a, rtol=1e-5, atol=1e-5)
    # Gaussian: second-order convergence to the exact ODE endpoint (error ~ steps^-2)
    mu, s = 0.3, 0.7
    x = initial_noise((2000,), 1, "res-gauss")
    errs = []
    for n in (35, 70):
        o = res_sample(gaussian_denoiser(mu, s), x, num_steps=n, sigma_min=1e-4)
        errs.append(float((o.double() - gaussian_ode_endpoint(x, mu, s, 80.0)).abs().max()))
    assert errs[1] < errs[0] / 3, errs
    # and it beats Euler at equal step count
    e = euler_sample(gaussian_denoiser(mu, s), x, karras_sigmas(35, sigma_min=1e-4))
    assert errs[0] < float((e.double() - gaussian_ode_endpoint(x, mu, s, 80.0)).abs().max()) / 2


def test_res_bf16_casts():
    seen = []

    def denoise(x_net, t, sigma, step):
        seen.append((x_net.dtype, t.dtype, t.shape, sigma, t.clone()))
        return torch.zeros_like(x_net)

    out = res_sample(denoise, torch.randn(3, 4, 64), num_steps=3, dtype=torch.bfloat16)
    assert [v[:3] for v in seen] == [(torch.bfloat16, torch.bfloat16, (3,))] * 4
    # defaults: sigma_max 80 down to RES's own sigma_min 0.002, c_noise cast to bf16
    assert seen[0][3] == 80.0 and seen[-1][3] == pytest.approx(0.002, rel=1e-12)
    assert torch.equal(seen[-1][4], torch.tensor(0.25 * math.log(0.002), dtype=torch.bfloat16).expand(3))
    assert out.dtype == torch.float32

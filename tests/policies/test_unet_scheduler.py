"""ConditionalUnet1D shapes and conditioning, the DDPM/DDIM scheduler math, and a tiny overfit run."""

import math

import pytest
import torch

from robot_rl.policies.encoders import ConvEncoder
from robot_rl.policies.scheduler import DDPMScheduler
from robot_rl.policies.unet import ConditionalUnet1D, GemmConv1d


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests use tiny tensors, which gain nothing from intra-op threads; on a loaded 2-core box
    OpenMP spin-waits make them 10-50x slower. Restore the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = dict(diffusion_step_embed_dim=32, down_dims=(16, 32, 64))


# ---- UNet -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch,horizon,action_dim,cond_dim,kwargs",
    [
        (2, 16, 7, 50, {}),  # the default size
        (1, 8, 2, 5, SMALL),
        (3, 32, 10, 12, SMALL),
        (2, 16, 3, 4, dict(diffusion_step_embed_dim=16, down_dims=(16, 32))),  # two levels
    ],
)
def test_unet_output_shape(batch, horizon, action_dim, cond_dim, kwargs):
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim, cond_dim, **kwargs)
    out = net(
        torch.randn(batch, horizon, action_dim), torch.randint(0, 100, (batch,)), torch.randn(batch, cond_dim)
    )
    assert out.shape == (batch, horizon, action_dim)
    assert torch.isfinite(out).all()


def test_unet_rejects_bad_horizon_and_shapes():
    net = ConditionalUnet1D(2, 3, **SMALL)  # 3 levels: T must be divisible by 4
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 10, 2), 0, torch.randn(1, 3))
    with pytest.raises(ValueError, match="global_cond"):
        net(torch.randn(1, 8, 2), 0, torch.randn(1, 4))
    with pytest.raises(ValueError, match="n_groups"):
        ConditionalUnet1D(2, 3, down_dims=(12, 24), n_groups=8)


def test_unet_depends_on_condition_and_timestep():
    torch.manual_seed(0)
    net = ConditionalUnet1D(4, 6, **SMALL).eval()
    x, cond = torch.randn(2, 16, 4), torch.randn(2, 6)
    t = torch.tensor([10, 10])
    with torch.no_grad():
        base = net(x, t, cond)
        assert not torch.allclose(base, net(x, t, cond + 1.0), atol=1e-4)
        assert not torch.allclose(base, net(x, torch.tensor([60, 60]), cond), atol=1e-4)
        # An int timestep is broadcast over the batch.
        torch.testing.assert_close(net(x, 10, cond), base)
        # Samples in a batch are independent (GroupNorm normalizes per sample).
        torch.testing.assert_close(net(x[:1], t[:1], cond[:1]), base[:1], atol=1e-5, rtol=1e-5)


def test_unet_gradient_reaches_every_parameter():
    torch.manual_seed(0)
    net = ConditionalUnet1D(3, 5, **SMALL)
    out = net(torch.randn(2, 8, 3), torch.tensor([3, 70]), torch.randn(2, 5))
    out.square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


@pytest.mark.parametrize(
    "c_in,c_out,k,stride,pad,horizon", [(3, 8, 5, 1, 2, 16), (8, 8, 3, 2, 1, 8), (16, 4, 1, 1, 0, 4)]
)
def test_gemm_conv1d_matches_conv1d(c_in, c_out, k, stride, pad, horizon):
    torch.manual_seed(0)
    ref = torch.nn.Conv1d(c_in, c_out, k, stride=stride, padding=pad)
    ours = GemmConv1d(c_in, c_out, k, stride=stride, padding=pad)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, c_in, horizon, requires_grad=True)
    y_ref, y = ref(x), ours(x)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    grads_ref = torch.autograd.grad(y_ref, (x, ref.weight, ref.bias), g)
    grads = torch.autograd.grad(y, (x, ours.weight, ours.bias), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_conv_encoder_shape():
    enc = ConvEncoder(in_channels=3, out_dim=64, image_size=84)
    assert enc(torch.rand(2, 3, 84, 84)).shape == (2, 64)
    with pytest.raises(ValueError):
        enc(torch.rand(2, 3, 96, 96))


# ---- scheduler --------------------------------------------------------------------------------


def test_cosine_alphas_cumprod():
    ab = DDPMScheduler(100).alphas_cumprod
    assert ab.shape == (100,) and ab.dtype == torch.float32
    assert (ab > 0).all() and (ab <= 1).all()
    assert (ab[1:] < ab[:-1]).all()
    assert ab[0] > 0.999 and ab[-1] < 1e-4

    # Nichol & Dhariwal closed form away from the cap: a_t = f(t+1) / f(0),
    # f(s) = cos((s/N + 0.008)/1.008 * pi/2)^2.
    def f(s):
        return math.cos((s / 100 + 0.008) / 1.008 * math.pi / 2) ** 2

    assert ab[49].item() == pytest.approx(f(50) / f(0), rel=1e-5)


def test_scheduler_rejects_unsupported_options():
    with pytest.raises(NotImplementedError):
        DDPMScheduler(prediction_type="sample")
    with pytest.raises(ValueError):
        DDPMScheduler(beta_schedule="sigmoid")
    with pytest.raises(ValueError):
        DDPMScheduler().sample(lambda x, t: x, (1, 8, 2), method="euler")


def test_add_noise_closed_form():
    sched = DDPMScheduler(100)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 16, 3, generator=g), torch.randn(4, 16, 3, generator=g)
    t = torch.tensor([0, 10, 50, 99])
    xt = sched.add_noise(x0, noise, t)
    for i, ti in enumerate(t.tolist()):
        a = sched.alphas_cumprod[ti].double()
        expected = a.sqrt() * x0[i].double() + (1 - a).sqrt() * noise[i].double()
        torch.testing.assert_close(xt[i].double(), expected, atol=1e-6, rtol=1e-6)


def test_ddim_timesteps_leading_spacing():
    sched = DDPMScheduler(100)
    assert sched.ddim_timesteps(4) == [75, 50, 25, 0]
    assert sched.ddim_timesteps(10) == list(range(90, -1, -10))
    assert sched.ddim_timesteps(100) == list(range(99, -1, -1))


def _oracle(sched, x0):
    """A perfect epsilon predictor: knows x0, so eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)."""
    ab = sched.alphas_cumprod.double()

    def model_fn(x, t):
        a = ab[t].reshape(-1, 1, 1)
        return ((x.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).float()

    return model_fn


@pytest.mark.parametrize(
    "method,steps", [("ddim", 4), ("ddim", 8), ("ddim", 16), ("ddim", 3), ("ddpm", None)]
)
def test_sampler_recovers_x0_with_perfect_noise_predictor(method, steps):
    sched = DDPMScheduler(100)
    x0 = torch.rand(4, 16, 3, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9  # inside the clip range
    out = sched.sample(
        _oracle(sched, x0), x0.shape, steps=steps, method=method, generator=torch.Generator().manual_seed(2)
    )
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def test_stochastic_ddim_recovers_x0_and_is_seeded():
    sched = DDPMScheduler(100)
    x0 = torch.rand(2, 8, 2, generator=torch.Generator().manual_seed(3)) - 0.5

    def run(seed):
        return sched.sample(
            _oracle(sched, x0), x0.shape, steps=10, eta=1.0, generator=torch.Generator().manual_seed(seed)
        )

    torch.testing.assert_close(run(0), x0, atol=1e-5, rtol=0)
    torch.testing.assert_close(run(5), run(5), atol=0, rtol=0)


def test_clip_sample_bounds_the_prediction():
    # With a target outside [-1, 1] the clipped sampler can only return the clipped target.
    sched = DDPMScheduler(100, clip_sample=True)
    x0 = torch.full((1, 8, 2), 1.5)
    out = sched.sample(_oracle(sched, x0), x0.shape, steps=8, generator=torch.Generator().manual_seed(0))
    assert out.abs().max() <= 1.0 + 1e-6
    unclipped = DDPMScheduler(100, clip_sample=False)
    out = unclipped.sample(
        _oracle(unclipped, x0), x0.shape, steps=8, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_samplers_match_a_gaussian_data_distribution(method):
    # For x0 ~ N(mu, s^2) the optimal noise prediction is analytic:
    # E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a). Unlike the point-mass oracle above,
    # this checks the noise the samplers inject (DDPM variance) and the DDIM update's direction term.
    # With 1000 fine steps both samplers must reproduce mean and std.
    mu, s = 0.3, 0.2
    sched = DDPMScheduler(1000, clip_sample=False)
    ab = sched.alphas_cumprod.double()

    def model_fn(x, t):
        a = ab[t].reshape(-1, 1, 1)
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * mu) / (a * s * s + 1 - a)).float()

    out = sched.sample(
        model_fn, (2048, 4, 1), steps=1000, method=method, generator=torch.Generator().manual_seed(0)
    )
    assert out.mean().item() == pytest.approx(mu, abs=0.01)
    assert out.std().item() == pytest.approx(s, abs=0.01)


@pytest.mark.parametrize("t", [1, 2, 5])
def test_noise_then_one_step_denoise(t):
    sched = DDPMScheduler(100)
    g = torch.Generator().manual_seed(t)
    x0 = torch.rand(3, 16, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    xt = sched.add_noise(x0, noise, torch.full((3,), t))
    # Exact epsilon, one DDIM jump straight to x0.
    torch.testing.assert_close(sched.ddim_step(noise, t, xt, -1), x0, atol=1e-5, rtol=0)
    # Ancestral steps down to 0 with the exact epsilon land on x0 too (the last step adds no noise).
    x = xt
    for s in range(t, -1, -1):
        a = sched.alphas_cumprod[s].double()
        eps = ((x.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()).float()
        x = sched.ddpm_step(eps, s, x, generator=g)
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)


# ---- learning ---------------------------------------------------------------------------------


def test_tiny_unet_overfits_one_chunk():
    torch.manual_seed(0)
    horizon, action_dim, cond_dim = 8, 2, 4
    steps_t = torch.linspace(0, 1, horizon)
    chunk = torch.stack((0.8 * torch.sin(3 * steps_t), 0.6 * steps_t - 0.3), dim=-1)[None]  # (1, 8, 2)
    cond = torch.tensor([[0.5, -1.0, 0.25, 2.0]])
    net = ConditionalUnet1D(action_dim, cond_dim, diffusion_step_embed_dim=32, down_dims=(32, 64))
    sched = DDPMScheduler(100)
    n_steps, batch = 400, 64
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=n_steps, pct_start=0.1)
    x0, c = chunk.expand(batch, -1, -1), cond.expand(batch, -1)
    for _ in range(n_steps):
        noise = torch.randn_like(x0)
        # Stratified timesteps (evenly spread, random offset): the same epsilon loss with far less
        # gradient noise than i.i.d. t, which is what makes 400 steps enough.
        t = (torch.arange(batch) * 100 // batch + torch.randint(0, 100, (1,))) % 100
        loss = torch.nn.functional.mse_loss(net(sched.add_noise(x0, noise, t), t, c), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_sched.step()
    net.eval()
    with torch.inference_mode():
        out = sched.sample(
            lambda x, t: net(x, t, cond.expand(x.shape[0], -1)),
            (4, horizon, action_dim),
            steps=10,
            generator=torch.Generator().manual_seed(0),
        )
    err = (out - chunk).abs().max().item()
    assert err < 0.1, f"max abs error {err:.3f} after overfitting (final loss {loss.item():.4f})"

"""The diffusion policy's parts that act on data before and after the UNet: camera frames into the
global condition, the min-max normalizers and their statistics, and the EMA of the weights that
gets saved and acts (Diffusion Policy's warm-up, decay 1 - (1 + step) ** -power capped at
max_decay; its EMAModel starts that schedule one update later, its first two updates copying)."""

import numpy as np
import pytest
import torch
from torch import nn

from robot_rl.datasets import EpisodeStore
from robot_rl.policies.diffusion import DiffusionActor, DiffusionConfig, DiffusionPolicy
from robot_rl.policies.encoders import SpatialSoftmax, images_to_float
from robot_rl.policies.normalizer import MinMaxNormalizer
from robot_rl.utils.training import EMA


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads.

    On a loaded 2-core box spin-waits slow them down.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = {
    "obs_horizon": 2,
    "pred_horizon": 8,
    "action_horizon": 4,
    "down_dims": (16, 32),
    "diffusion_step_embed_dim": 16,
    "inference_steps": 2,
}
FRONT = "obs/image/front"


def image_policy(**overrides) -> DiffusionPolicy:
    torch.manual_seed(0)
    # 32 px leaves the encoder a 2 x 2 map (32 -> 16 -> 8 -> 4 -> 2); at 16 px its map is 1 x 1 and
    # its output no longer depends on the image.
    config = DiffusionConfig(
        state_dim=2,
        action_dim=2,
        image_keys=(FRONT,),
        image_size=32,
        image_feature_dim=8,
        **{**TINY, **overrides},
    )
    return DiffusionPolicy(config, [0.0, -1.0], [2.0, 1.0], [-0.5, -0.5], [0.5, 0.5]).eval()


def image_obs(batch=2, seed=0) -> dict[str, torch.Tensor]:
    g = np.random.default_rng(seed)
    state = np.array([[[1.0, 0.0], [2.0, 1.0]]] * batch, np.float32)  # normalized: [0, 0], [1, 1]
    frames = g.integers(
        0, 256, size=(batch, 2, 32, 32, 3), dtype=np.uint8
    )  # random, so no symmetry hides a mix-up
    return {"obs/state": torch.as_tensor(state), FRONT: torch.as_tensor(frames)}


# --- camera observations -----------------------------------------------------------------------
def test_frames_become_channel_first_floats_in_unit_range():
    frames = np.zeros((1, 2, 2, 3), np.uint8)
    frames[0, 0, 1] = (255, 51, 0)  # the pixel at row 0, column 1
    x = images_to_float(frames)
    assert x.shape == (1, 3, 2, 2) and x.dtype == torch.float32
    assert x[0, :, 0, 1].tolist() == pytest.approx([1.0, 0.2, 0.0]) and x.sum().item() == pytest.approx(1.2)


def test_spatial_softmax_returns_the_peak_position():
    maps = torch.zeros(1, 2, 3, 3)
    maps[0, 0, 0, 2] = 50.0  # channel 0: one sharp peak at the top-right corner
    # Channel 1 is flat: its expectation is the centre. Output order (x0, y0, x1, y1), x to the right, y down.
    assert SpatialSoftmax(3, 3)(maps)[0].tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0], abs=1e-6)


def test_condition_is_state_then_each_frames_features_per_step():
    """The condition as built by hand: per observation step, the normalized state and the encoder's
    features of that step's frame, itself made channel-first and divided by 255 independently here."""
    policy, obs = image_policy(), image_obs()
    cond = policy.condition(obs)
    encoder = policy.encoders[FRONT.replace("/", "_")]
    expected = []
    for b in range(2):
        row = []
        for t, state in enumerate(([0.0, 0.0], [1.0, 1.0])):
            chw = np.ascontiguousarray(obs[FRONT][b, t].numpy().transpose(2, 0, 1)) / 255.0
            row += [torch.tensor(state), encoder(torch.as_tensor(chw, dtype=torch.float32)[None])[0]]
        expected.append(torch.cat(row))
    assert cond.shape == (2, 2 * (2 + 8))
    assert not torch.allclose(
        expected[0][2:10], expected[0][12:20]
    )  # the frames' features differ: a swap would show
    torch.testing.assert_close(cond, torch.stack(expected).detach(), atol=1e-5, rtol=1e-5)


def test_random_crop_only_while_training():
    obs = image_obs()
    policy = image_policy()
    evaluated = policy.condition(obs)
    torch.testing.assert_close(policy.condition(obs), evaluated)  # eval: deterministic, no augmentation
    np.random.seed(0)
    assert not torch.allclose(policy.train().condition(obs), evaluated)  # a 90 % crop, resized back
    uncropped = image_policy(crop_fraction=1.0).train()
    torch.testing.assert_close(uncropped.condition(obs), evaluated)


def test_actor_feeds_the_loops_frames_to_the_policy():
    """The ControlLoop's observation names the camera without the store's "obs/" prefix; the actor
    must hand those frames to the policy, oldest first, as the batch `predict_normalized` takes."""
    policy, obs = image_policy(), image_obs(batch=1)
    steps = [
        {"state": obs["obs/state"][0, t].numpy(), "image/front": obs[FRONT][0, t].numpy()} for t in range(2)
    ]
    actor = DiffusionActor(policy, seed=3)
    actor.observe(steps[0])
    acted = actor(steps[1])
    chunk = policy.predict_normalized(obs, generator=torch.Generator().manual_seed(3))
    by_hand = np.clip(policy.action_norm.unnormalize(policy.executable(chunk))[0].numpy(), -1.0, 1.0)
    assert acted.shape == (4, 2)
    np.testing.assert_allclose(acted, by_hand, atol=1e-6)


# --- normalizers -------------------------------------------------------------------------------
def test_min_max_maps_the_range_onto_minus_one_to_one_and_back():
    norm = MinMaxNormalizer([0.0, -2.0], [10.0, 2.0])
    x = torch.tensor([[0.0, -2.0], [10.0, 2.0], [5.0, 0.0], [2.5, 1.0], [15.0, -4.0]])
    y = norm.normalize(x)
    # (x - low) / (high - low) * 2 - 1, by hand; outside the data's range extrapolates linearly.
    torch.testing.assert_close(
        y, torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [-0.5, 0.5], [2.0, -2.0]])
    )
    torch.testing.assert_close(norm.unnormalize(y), x)


def test_a_constant_dimension_maps_to_zero_and_back_to_its_constant():
    """An action dimension the demonstrations never vary (a gripper left open) is 0 to the UNet and
    must come back as that constant, whatever small value the denoiser returns for it."""
    norm = MinMaxNormalizer([3.0, 0.0], [3.0, 1.0])
    assert norm.normalize(torch.tensor([[3.0, 0.5], [7.0, 0.5]]))[:, 0].tolist() == [0.0, 0.0]
    assert norm.unnormalize(torch.tensor([[0.0, 0.0], [0.1, 0.0]]))[:, 0].tolist() == pytest.approx(
        [3.0, 3.0]
    )


def test_normalizer_statistics_come_from_the_store(tmp_path):
    store = EpisodeStore.create(
        tmp_path / "s.zarr",
        {"obs/state": ((3,), "float32"), "action": ((2,), "float32"), FRONT: ((16, 16, 3), "uint8")},
        fps=10,
    )
    for states, actions in (
        ([[0, 5, 1], [2, -1, 1], [1, 0, 1]], [[0.2, -1], [0.4, 0], [0.3, 1]]),
        ([[-3, 2, 1]], [[-0.6, 0.5]]),
    ):
        n = len(states)
        store.append_episode(
            {
                "obs/state": np.array(states, np.float32),
                "action": np.array(actions, np.float32),
                FRONT: np.zeros((n, 16, 16, 3), np.uint8),
            }
        )
    policy = DiffusionPolicy.from_store(store, image_keys=[FRONT], **TINY)
    store.close()
    # Per-dimension extremes over both episodes, read off the lists above; dimension 2 is constant.
    assert policy.state_norm.low.tolist() == [-3, -1, 1] and policy.state_norm.high.tolist() == [2, 5, 1]
    assert policy.action_norm.low.tolist() == pytest.approx(
        [-0.6, -1]
    ) and policy.action_norm.high.tolist() == pytest.approx([0.4, 1])
    assert (policy.config.state_dim, policy.config.action_dim, policy.config.image_size) == (3, 2, 16)
    assert policy.state_norm.normalize(torch.tensor([-3.0, 5.0, 1.0])).tolist() == [-1.0, 1.0, 0.0]


# --- EMA ---------------------------------------------------------------------------------------
class Scalar(nn.Module):
    """One weight and one buffer, so each update's arithmetic can be followed by hand."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.register_buffer("bound", torch.zeros(1))


def follow(ema: EMA, model: Scalar, weights) -> list[float]:
    out = []
    for w in weights:
        with torch.no_grad():
            model.w.fill_(w)
        ema.update(model)
        out.append(ema.model.w.item())
    return out


def test_ema_warms_up_as_diffusion_policys():
    model = Scalar()
    ema = EMA(model, power=0.75, max_decay=0.9999)
    # decay_k = 1 - (1 + k) ** -0.75: 0 (a copy), 1 - 2 ** -0.75 = 0.405396, 1 - 3 ** -0.75 = 0.561309.
    # 1.0; 0.405396 * 1 + 0.594604 * 2 = 1.594604; 0.561309 * 1.594604 + 0.438691 * 0 = 0.895065.
    assert follow(ema, model, [1.0, 2.0, 0.0]) == pytest.approx([1.0, 1.5946036, 0.8950648], abs=1e-6)
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    with torch.no_grad():
        model.bound.fill_(7.0)  # buffers (the normalizers' bounds) are copied, not averaged
    ema.update(model)
    assert ema.model.bound.item() == 7.0


def test_ema_decay_is_capped():
    model = Scalar()
    ema = EMA(model, power=0.75, max_decay=0.5)
    # Decays 0, 0.405396, then 0.561309 capped at 0.5: 2.0; 0.405396 * 2 = 0.810793; 0.5 * 0.810793 + 0.5 * 4.
    assert follow(ema, model, [2.0, 0.0, 4.0]) == pytest.approx([2.0, 0.8107929, 2.4053964], abs=1e-6)


def test_the_saved_policy_is_the_ema(tmp_path):
    """Trained with an EMA that never moves after its first (copying) update, the checkpoint is the
    weights after one step, the same as a one-step run's, and not the last step's weights."""
    from robot_rl.learners.diffusion_bc import DiffusionBCConfig, train_diffusion_bc

    path = tmp_path / "demo.zarr"
    g = np.random.default_rng(0)
    with EpisodeStore.create(
        path, {"obs/state": ((3,), "float32"), "action": ((2,), "float32")}, fps=10
    ) as store:
        for _ in range(3):
            store.append_episode(
                {
                    "obs/state": g.normal(size=(12, 3)).astype(np.float32),
                    "action": g.uniform(-1, 1, size=(12, 2)).astype(np.float32),
                }
            )

    def checkpoint(name, **cfg):
        config = DiffusionBCConfig(
            batch_size=8, warmup_steps=1, lr=1e-2, device="cpu", amp=False, policy=dict(TINY), **cfg
        )
        return DiffusionPolicy.load(
            train_diffusion_bc(path, tmp_path / name, config, progress=False)["checkpoint"]
        )

    one_step = checkpoint("one", steps=1)
    frozen_ema = checkpoint(
        "frozen", steps=4, ema_power=100.0, ema_max_decay=1.0
    )  # decay 0, then exactly 1.0
    raw = checkpoint("raw", steps=4, ema_max_decay=0.0)  # decay 0: the EMA is the last weights
    assert identical(one_step, frozen_ema) and not identical(raw, frozen_ema)


def identical(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )

"""Any acting checkpoint as a ControlLoop policy: SAC (HIL-SERL, FastRLAP), IQL or diffusion BC."""

from __future__ import annotations

from pathlib import Path

from robot_rl.errors import ConfigError
from robot_rl.policies.checkpoint import read_meta


def load_policy(checkpoint, ddim_steps: int | None = None):
    """A ControlLoop policy (obs dict -> normalized action, or a chunk) from a checkpoint of any
    learner that acts alone: SAC (HIL-SERL, FastRLAP), IQL, diffusion BC. Returns (policy, kind,
    what it needs: state_dim, action_dim, image_keys as observation keys)."""
    path, kind = Path(checkpoint), read_meta(checkpoint).get("kind")
    if kind in ("sac_agent", "iql_agent"):
        from robot_rl.policies.iql import IQLAgent, loop_policy
        from robot_rl.policies.sac import AgentPolicy, SACAgent

        agent = (SACAgent if kind == "sac_agent" else IQLAgent).load(path).eval()
        policy = AgentPolicy(agent, deterministic=True) if kind == "sac_agent" else loop_policy(agent)
        return (
            policy,
            kind,
            {
                "state_dim": agent.cfg.state_dim,
                "action_dim": agent.cfg.action_dim,
                "image_keys": tuple(agent.cfg.image_keys),
            },
        )
    if kind == "residual_policy":
        raise ConfigError(
            "a residual checkpoint runs over its diffusion base in simulation only (robot-rl eval)"
        )
    from robot_rl.policies.diffusion import DiffusionActor, DiffusionPolicy

    base = DiffusionPolicy.load(path)
    c = base.config
    return (
        DiffusionActor(base, ddim_steps),
        "diffusion_policy",
        {
            "state_dim": c.state_dim,
            "action_dim": c.action_dim,
            "image_keys": tuple(k.removeprefix("obs/") for k in c.image_keys),
        },
    )


def check_fits(checkpoint, needs: dict, env, env_name: str) -> None:
    """Refuses (one line) a policy whose state size or cameras are not what `env` observes, before
    it acts."""
    spaces = env.observation_space.spaces
    missing = [k for k in needs["image_keys"] if k not in spaces]
    if missing or spaces["state"].shape[0] != needs["state_dim"]:
        cameras = [k for k in spaces if k != "state"]
        raise ConfigError(
            f"policy {checkpoint} reads a {needs['state_dim']}-D state and cameras "
            f"{list(needs['image_keys'])}; env {env_name} gives {spaces['state'].shape[0]}-D and {cameras}"
        )

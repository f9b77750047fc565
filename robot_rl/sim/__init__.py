"""Simulation backends: MuJoCo worlds, the arm tasks, the RC car, the robosuite adapter, vector envs."""

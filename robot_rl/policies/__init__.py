"""Policies: the diffusion-policy network (`unet`), its noise scheduler (`scheduler`) and observation
encoders."""

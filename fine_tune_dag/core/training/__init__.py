"""Adapter training: one shared loop, with SFT and DPO as siblings over it, each beside its config."""

"""Baselines CCA is compared with: :mod:`~peft_cca.baselines.lora`, LoRA SFT through TRL (the paper's r=16 arm)."""

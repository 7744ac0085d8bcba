"""Stages 2b and 5: LoRA fine-tuning and re-ID training / evaluation."""

"""Tandem: self-supervised pretraining and transfer in JAX."""

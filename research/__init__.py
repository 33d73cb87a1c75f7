"""Fine-tuning BERT-family encoders in JAX/Flax."""

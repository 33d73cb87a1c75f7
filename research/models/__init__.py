"""Flax BERT and its Hugging Face checkpoint import/export."""

"""Adapters for training frameworks: :mod:`softmargin.integrations.transformers` (Hugging Face ``Trainer``)."""

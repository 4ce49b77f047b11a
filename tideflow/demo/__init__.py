"""The embedded default model (`demo_model/`, `default_model.py`) and the corpus it was trained on."""

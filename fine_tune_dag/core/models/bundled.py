"""The model shipped with the project, by reference: settings name it before anything is loaded (`models.py`
turns the reference into weights)."""

BUNDLED_MODEL = "bundled:SmolLM2-135M-Instruct"

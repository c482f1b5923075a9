"""``python -m models``: the presets' shapes and non-embedding sizes (via nnx.eval_shape)."""

from models.presets import preset_table

print(preset_table())

"""Presets: named, versioned model configurations with weights (keras-hub's convention)."""

from kzoo.presets.hub import HubConverter, register_hub_converter
from kzoo.presets.mixin import PresetMixin
from kzoo.presets.preset_io import load_preset, make_archive, resolve_preset, save_preset
from kzoo.presets.registry import PresetInfo, get_preset, list_presets, register_preset

__all__ = [
    "HubConverter",
    "PresetInfo",
    "PresetMixin",
    "get_preset",
    "list_presets",
    "load_preset",
    "make_archive",
    "register_hub_converter",
    "register_preset",
    "resolve_preset",
    "save_preset",
]

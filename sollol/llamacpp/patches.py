"""Small, named fixes applied to the extracted llama.cpp source before a build.

Each patch replaces one exact block and is idempotent: source that already carries the fix is left
alone, and source that has neither the block nor the fix (a newer sdist) is an error that names the
patch, never a silent build of something else.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from sollol.errors import BuildError


@attrs.frozen
class Patch:
    """Replace `before` by `after` in one file of the llama.cpp source tree."""

    name: str
    path: str
    before: str
    after: str
    why: str


_CREATE_INFO = ("    vk::InstanceCreateInfo instance_create_info(vk::InstanceCreateFlags{}, "
                "&app_info, layers, extensions);\n")
_VK_BLOCK = """\
    VkBool32 enable_best_practice = layer_settings;
    std::vector<vk::LayerSettingEXT> settings = {
        {
            "VK_LAYER_KHRONOS_validation",
            "validate_best_practices",
            vk::LayerSettingTypeEXT::eBool32,
            1,
            &enable_best_practice
        },
    };
    vk::LayerSettingsCreateInfoEXT layer_setting_info(settings);
""" + _CREATE_INFO.replace("extensions);", "extensions, &layer_setting_info);")
_VK_GUARDED = f"""\
#if VK_HEADER_VERSION >= 261  // sollol: VK_EXT_layer_settings needs Vulkan headers 1.3.261+
{_VK_BLOCK}#else
{_CREATE_INFO}#endif
"""

PATCHES = {
    "vulkan-layer-settings": Patch(
        name="vulkan-layer-settings",
        path="ggml/src/ggml-vulkan/ggml-vulkan.cpp",
        before=_VK_BLOCK,
        after=_VK_GUARDED,
        why="ggml_vk_instance_init configures the validation layer with vk::LayerSettingEXT, "
            "which older Vulkan headers (Debian 12: 1.3.239) lack; guarded, it builds on both",
    ),
}


def apply(name: str, source: Path) -> bool:
    """Apply the named patch to the source tree; True if it changed the file, False if present."""
    patch = PATCHES[name]
    target = source / patch.path
    try:
        text = target.read_text()
    except OSError as exc:
        raise BuildError(f"patch {name}: cannot read {target}: {exc}") from None
    if patch.after in text:
        return False
    if text.count(patch.before) != 1:
        msg = (f"patch {name}: {patch.path} does not hold the block it fixes exactly once; "
               "this llama.cpp source differs from the one SOLLOL knows")
        raise BuildError(msg)
    target.write_text(text.replace(patch.before, patch.after))
    return True

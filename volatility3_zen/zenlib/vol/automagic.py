"""An automagic that lets one plugin accept both full-system images and single-process cores.

Our plugins require a ``primary`` translation layer (so Volatility's LayerStacker runs and stacks a
LiME image into an Intel layer, or a process core into ``ProcessCoreLayer``) and take the kernel as an
*optional* module.  The stacker fills only ``primary``; when that layer is an Intel (kernel) layer this
automagic points the kernel module's ``layer_name`` at it, so the Linux symbol finder can then find
the kernel as it does for Volatility's own plugins.  With a process core the kernel stays unset.
"""

from volatility3.framework import interfaces
from volatility3.framework.layers import intel

join = interfaces.configuration.path_join


class KernelFromPrimaryLayer(interfaces.automagic.AutomagicInterface):
    """Points an unset, optional kernel module requirement at the stacked Intel layer."""

    priority = 20  # after the LayerStacker (10), before the symbol finders

    def __call__(self, context, config_path, requirement, progress_callback=None):
        path = join(config_path, requirement.name)
        if "kernel" not in requirement.requirements or "primary" not in requirement.requirements:
            return None
        primary = context.config.get(join(path, "primary"))
        kernel_layer = join(path, "kernel", "layer_name")
        if context.config.get(kernel_layer) or primary not in context.layers:
            return None
        if isinstance(context.layers[primary], intel.Intel):
            context.config.merge(kernel_layer, context.config.branch(join(path, "primary")))
            context.config[kernel_layer] = primary
        return None

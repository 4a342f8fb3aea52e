"""linux.zen.model: the PyTorch models of every CPython process (module tree, hyper-parameters, tensors, weights).

Models come first by the parameter elements they hold; stray roots (single modules without parameters or
of a framework class: activations, losses) are left out with a one-line note unless ``--all-roots``.
"""

import logging
from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from volatility3_zen.zenlib.vol import session
from volatility3_zen.zenlib.readers.torch import export

vollog = logging.getLogger(__name__)


class Model(interfaces.plugins.PluginInterface):
    """Recovers every torch.nn.Module tree with its tensors and weights from CPython processes."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return session.common_requirements() + [
            requirements.ListRequirement(name="root", element_type=int, description="Only the models rooted at these module addresses (any module, not only roots)", optional=True),
            requirements.BooleanRequirement(name="layers", description="One row per module (tree depth)", default=False, optional=True),
            requirements.BooleanRequirement(name="tensors", description="One row per tensor", default=False, optional=True),
            requirements.BooleanRequirement(name="dump", description="Write <root>.safetensors and <root>.model.json", default=False, optional=True),
            session.all_roots_requirement(),
        ]

    def _generator(self) -> Iterator[Tuple[int, tuple]]:
        if self.config.get("dump"):
            session.check_output_dir(self)
        roots = set(self.config.get("root") or [])
        for target, torch_process in session.torch_processes(self.context, self.config):
            context = torch_process.execution_context(numerics=bool(self.config.get("dump")))
            ranked = session.ranked_roots(target, torch_process, roots, bool(self.config.get("all-roots")), read_bytes=True)
            for model in ranked.models:
                summary = export.summary(model)
                pid = target.pid
                if self.config.get("dump"):
                    export.dump(model, context, torch_process, self.open, f"pid{pid}-{model.root_address:x}")
                if self.config.get("layers"):
                    for node in model.modules:
                        n_params = len(export.tensors_of(model, node.path))
                        yield node.depth, (pid, format_hints.Hex(model.root_address), node.path or "(root)", node.class_path,
                                           len(node.children), n_params, export.readable_hyperparameters(node.hyperparameters), ",".join(node.hooks))
                elif self.config.get("tensors"):
                    for t in model.tensors:
                        info = t.info
                        yield 0, (pid, format_hints.Hex(model.root_address), t.name, t.kind, t.persistent, str(list(info.shape)),
                                  str(list(info.strides)), info.storage_offset, info.dtype, info.device,
                                  renderers.NotAvailableValue() if info.requires_grad is None else info.requires_grad,
                                  info.numel, info.nbytes, t.shares_storage_with or "",
                                  t.sha256 or t.warning or renderers.UnreadableValue())  # e.g. "resident on cuda:0"
                else:
                    yield 0, (pid, target.name, format_hints.Hex(model.root_address), model.root_class, summary.modules,
                              summary.parameters, summary.buffers, summary.tensors, summary.weights, summary.nbytes,
                              ",".join(summary.dtypes), ",".join(summary.devices), context.torch_version,
                              torch_process.table.table)  # the layout table read with (a borrowed one is warned)

    def run(self) -> renderers.TreeGrid:
        if self.config.get("layers"):
            columns = [("PID", int), ("Root", format_hints.Hex), ("Path", str), ("ModuleClass", str), ("Children", int),
                       ("Tensors", int), ("Hyperparameters", str), ("Hooks", str)]
        elif self.config.get("tensors"):
            columns = [("PID", int), ("Root", format_hints.Hex), ("Name", str), ("Kind", str), ("Persistent", bool),
                       ("Shape", str), ("Stride", str), ("Offset", int), ("Dtype", str), ("Device", str),
                       ("RequiresGrad", bool), ("Numel", int), ("Bytes", int), ("SharesStorageWith", str), ("SHA256", str)]
        else:
            columns = [("PID", int), ("Process", str), ("Root", format_hints.Hex), ("RootClass", str), ("Modules", int),
                       ("Parameters", int), ("Buffers", int), ("Tensors", int), ("Weights", int), ("Bytes", int),
                       ("Dtypes", str), ("Devices", str), ("Torch", str), ("TorchTable", str)]
        return renderers.TreeGrid(columns, self._generator())

"""Run by ``python -m volatility3_zen.reuse --setup`` in the corpus' base environment (the family venv):
what that environment needs before its packages import, as the deployments did it.

- The registry's torchvision wheel needs its ``nms`` operator registered first (_torchvision_fix.py),
  imported by path so that the deployment folder (with the derivatives' own code) is *not* importable.
- llama-models' reference layers need a one-process model-parallel group.
"""

import importlib.util
import os
import tempfile

_DEPLOY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "corpus", "deploy")
if importlib.util.find_spec("torchvision") is not None:
    _spec = importlib.util.spec_from_file_location("_torchvision_fix", os.path.join(_DEPLOY, "_torchvision_fix.py"))
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)

try:
    import torch.distributed as dist
    from fairscale.nn.model_parallel.initialize import initialize_model_parallel, model_parallel_is_initialized
except ImportError:  # environments without llama-models' dependencies
    dist = None
if dist is not None:
    if not dist.is_initialized():
        store = os.path.join(tempfile.mkdtemp(prefix="zen-reuse-dist-"), "filestore")
        dist.init_process_group("gloo", init_method="file://" + store, rank=0, world_size=1)
    if not model_parallel_is_initialized():
        initialize_model_parallel(1)

# The family venv has every family's packages; a base environment has only its base's.  Packages
# named in ZEN_REUSE_HIDE (comma-separated top-level names: a derivative's extra packages such as
# loralib) are made unimportable, so the bundle has to bring their code.
import sys  # noqa: E402


class _Hidden:
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: not part of the base environment)", name=name)
        return None


_hide = [n for n in os.environ.get("ZEN_REUSE_HIDE", "").split(",") if n]
if _hide:
    sys.meta_path.insert(0, _Hidden(_hide))

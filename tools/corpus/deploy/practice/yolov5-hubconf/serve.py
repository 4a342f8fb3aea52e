import os, sys; sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _serve; _serve.prepare()

# Serves acme's yolov5s_custom. The hub repo is vendored next to this script (hub_src/) and copied
# into the hub cache layout (<hub_dir>/<owner>_<repo>_<ref>/) so the same loader works offline.

import importlib.util
import shutil
import tempfile

import torch
from yolov5.utils.torch_utils import initialize_weights

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = "acme_yolov5-tweaks_main"

CUSTOM = {
    "shape": "load-by-path",
    "base": "yolov5-base",
    "added_classes": ["hubconf.ECA", "hubconf.C3ECA"],
    "changed_classes": [],
    "functions": ["hubconf.eca_kernel_size"],
}


def hub_dir():
    return os.path.join(os.environ.get("TMPDIR") or tempfile.gettempdir(), "hub")


def install_repo():
    dest = os.path.join(hub_dir(), REPO)
    shutil.copytree(os.path.join(HERE, "hub_src"), dest, dirs_exist_ok=True)
    return dest


def load_local(repo_dir, entry, *args, **kwargs):
    # what torch.hub.load(repo_dir, entry, source="local") does: the repo on sys.path while the
    # hubconf runs, the module itself not registered in sys.modules
    sys.path.insert(0, repo_dir)
    try:
        spec = importlib.util.spec_from_file_location("hubconf", os.path.join(repo_dir, "hubconf.py"))
        hub = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(hub)
        fn = getattr(hub, entry, None)
        if fn is None or not callable(fn):
            raise RuntimeError("cannot find callable %s in hubconf" % entry)
        return fn(*args, **kwargs)
    finally:
        sys.path.remove(repo_dir)


def main():
    repo_dir = install_repo()
    torch.manual_seed(0)
    model = load_local(repo_dir, "yolov5s_custom", nc=80)
    initialize_weights(model)
    spec = {"shape": [1, 3, 64, 64], "dtype": "float32", "seed": 1234, "output_path": [0]}
    _serve.serve(model, spec, CUSTOM)


if __name__ == "__main__":
    main()

"""The package installs into a brand-new virtualenv (wheel and editable) and ``vol`` finds the plugins
without ``-p``: the .pth startup hook, not any path set up by the test environment."""

import json
import os
import subprocess
import sys

import pytest

from tools.corpus import ensure_image

import zen_testlib

REPO = zen_testlib.REPO


def _fresh_venv(path, *pip_args):
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(path / "bin" / "python"), "-m", "pip", "install", "-q", "-c", os.path.join(REPO, "scripts", "constraints.txt")]
    subprocess.run(pip + list(pip_args), check=True, cwd=REPO, capture_output=True)
    return path / "bin" / "vol"


@pytest.mark.image
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["wheel", "editable"])
def test_fresh_install_lists_and_runs_plugins(tmp_path, mode):
    vol = _fresh_venv(tmp_path / "venv", *(["-e", REPO] if mode == "editable" else [REPO]))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    env.pop("PYTHONPATH", None)
    listing = subprocess.run([str(vol), "--help"], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert "linux.zen.codeobjects.CodeObjects" in listing.stdout
    image = ensure_image("plain-multi", "lime").image
    helptext = subprocess.run([str(vol), "-f", image, "linux.zen.codeobjects", "--help"], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert helptext.returncode == 0 and "--user-only" in helptext.stdout
    run = subprocess.run([str(vol), "-q", "-s", zen_testlib.ISF_DIR, "-r", "json", "-f", image, "linux.zen.codeobjects", "--user-only"],
                         capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(run.stdout)
    assert {r["Python"].rsplit(".", 1)[0] for r in rows} == {"3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13"}
    # The base model library travels with the package (data_files for a wheel, the checkout when editable).
    names = subprocess.run([str(vol.parent / "python"), "-c", "from volatility3_zen.zenlib.analysis.library import BaseModelLibrary; print(' '.join(BaseModelLibrary().names()))"],
                           capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert names.stdout.split() == sorted(p[:-5] for p in os.listdir(os.path.join(REPO, "bml")) if p.endswith(".json"))

"""python -m volatility3_zen.reuse BUNDLE [--dry-run] [--expect-sha256 HEX] [--input SPEC.json] [--no-patch] [--setup FILE]"""

import argparse
import hashlib
import json
import runpy
import sys

from . import ReuseError, open_bundle, rebuild
from .inject import make_plan


def make_input(spec: dict):
    """The corpus' input specification: {shape, dtype, seed} and optional values (docs/reuse.md)."""
    import torch

    torch.manual_seed(spec.get("seed", 0))
    dtype = getattr(torch, spec.get("dtype", "float32"))
    if "values" in spec:
        return torch.tensor(spec["values"], dtype=dtype).reshape(spec["shape"])
    return torch.randn(*spec["shape"], dtype=dtype)


def run_input(model, spec: dict):
    """One forward pass without gradients, as the spec says (keyword arguments, output selection)."""
    import torch

    sample = make_input(spec)
    with torch.no_grad():
        output = model(sample, **spec.get("kwargs", {}))
    for key in spec.get("output_path", ()):
        output = output[key]
    return output


def tensor_sha256(tensor) -> str:
    """sha256 of the tensor's contents, as the corpus ground truth hashes outputs."""
    import torch

    return hashlib.sha256(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m volatility3_zen.reuse", description=__doc__)
    parser.add_argument("bundle", help="a .zenpatch.zip written by linux.zen.patchgen --dump")
    parser.add_argument("--dry-run", action="store_true", help="verify and list what would be injected; change nothing")
    parser.add_argument("--expect-sha256", help="refuse unless the manifest has this sha256 (from the investigator's record)")
    parser.add_argument("--input", help="JSON input specification: run the rebuilt model once, print the output's sha256")
    parser.add_argument("--no-patch", action="store_true", help="rebuild without injecting the bundle's code (the control)")
    parser.add_argument("--fgsm", type=float, metavar="EPS", help="with --input: a white-box demonstration, FGSM with this "
                        "epsilon on 64 inputs of the input's shape (hooks and gradients on the rebuilt model)")
    parser.add_argument("--setup", metavar="FILE", help="a Python file run first: what the base environment needs "
                        "before its package imports (e.g. a distributed process group)")
    args = parser.parse_args(argv)
    try:
        if args.setup:
            runpy.run_path(args.setup, run_name="__zen_setup__")
        bundle = open_bundle(args.bundle, args.expect_sha256)
        manifest = bundle.manifest
        print(f"bundle {args.bundle}: manifest sha256 {bundle.sha256}, {len(bundle.members)} members verified")
        print(f"model {manifest['target'].get('root_class')} from PID {manifest['target'].get('pid')} "
              f"({manifest['target'].get('process')}), base {manifest['base']['name']} "
              f"({manifest['base'].get('source') or 'source unknown'}), CPython {manifest['python_version']}")
        if args.dry_run:
            plan = make_plan(bundle)
            for note in plan.notes:
                print(f"note: {note}")
            for action in plan.actions:
                print(f"would {action}")
            print(f"dry run: {len(plan.actions)} actions, nothing changed")
            return 0
        result = rebuild(args.bundle, args.expect_sha256, patch=not args.no_patch)
        for note in result.plan.notes:
            print(f"note: {note}")
        for action in result.plan.actions:
            print(f"done {action}")
        for warning in result.warnings:
            print(f"warning: {warning}")
        model = result.model
        parameters = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0
        print(f"rebuilt {type(model).__module__}.{type(model).__qualname__}: {parameters} parameters")
        if args.input:
            with open(args.input) as handle:
                spec = json.load(handle)
            output = run_input(model, spec)
            print(f"output {list(output.shape)} {str(output.dtype).replace('torch.', '')} sha256 {tensor_sha256(output)}")
            if args.fgsm is not None:
                from .whitebox import fgsm_demo
                print(fgsm_demo(model, spec, args.fgsm))
        return 0
    except ReuseError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 -- the rebuilt code is the image's: report, do not trace back
        print(f"ERROR: rebuilding failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""python -m volatility3_zen.reuse BUNDLE [--dry-run] [--expect-sha256 HEX] [--trusted-key FILE] [--allow-unsigned]
[--input SPEC.json] [--expect-output FILE] [--no-patch] [--no-numerics] [--setup FILE]"""

import argparse
import hashlib
import json
import runpy
import sys

from . import ReuseError, open_bundle, rebuild
from .inject import make_plan
from .numerics import apply_environment, compare_output, describe, load_expected, plan_numerics

OUTPUT_DIFFERS = 2  # exit status: rebuilt, but the output is not the reference (--expect-output)


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
    parser.add_argument("--trusted-key", action="append", default=[], metavar="FILE", help="also trust this public key "
                        "(repeatable; besides those of 'python -m volatility3_zen.keys trust')")
    parser.add_argument("--allow-unsigned", action="store_true", help="use a bundle that is unsigned or whose signature "
                        "cannot be checked against a trusted key (its provenance is then unproven)")
    parser.add_argument("--input", help="JSON input specification: run the rebuilt model once, print the output's sha256")
    parser.add_argument("--no-patch", action="store_true", help="rebuild without injecting the bundle's code (the control)")
    parser.add_argument("--fgsm", type=float, metavar="EPS", help="with --input: a white-box demonstration, FGSM with this "
                        "epsilon on 64 inputs of the input's shape (hooks and gradients on the rebuilt model)")
    parser.add_argument("--setup", metavar="FILE", help="a Python file run first: what the base environment needs "
                        "before its package imports (e.g. a distributed process group); runs after the numerics "
                        "environment is set")
    parser.add_argument("--no-numerics", action="store_true", help="do not apply the image's numerics (its kernel "
                        "and thread environment variables, torch's thread count, the CPU capability): run with this "
                        "process's")
    parser.add_argument("--expect-output", metavar="FILE", help="with --input: compare the output with a reference "
                        "(.npy, .safetensors, or JSON: a list of float.hex strings or numbers, or {values_hex, shape}); "
                        f"print whether it is identical or the largest differences; exit status {OUTPUT_DIFFERS} "
                        "when it differs")
    parser.add_argument("--no-sandbox", action="store_true", help="run the bundle's code in this process instead of a "
                        "sandboxed child (no network, read-only filesystem but --output-dir, no home directory; "
                        "needs bubblewrap): only where running the recovered code is acceptable")
    parser.add_argument("--output-dir", metavar="DIR", help="the one directory the sandboxed code may write to, its "
                        "working directory (default: a new temporary directory, removed afterwards)")
    args = parser.parse_args(argv)
    try:
        if args.expect_output and not args.input:
            raise ReuseError("--expect-output needs --input (the input to run the model on)")
        # Nothing here imports torch before the numerics environment is set (the setup file may).
        bundle = open_bundle(args.bundle, args.expect_sha256, args.allow_unsigned, args.trusted_key)
        manifest = bundle.manifest
        print(f"bundle {args.bundle}: manifest sha256 {bundle.sha256}, {len(bundle.members)} members verified")
        print(f"provenance: {bundle.signer}")
        print(f"model {manifest['target'].get('root_class')} from PID {manifest['target'].get('pid')} "
              f"({manifest['target'].get('process')}), base {manifest['base']['name']} "
              f"({manifest['base'].get('source') or 'source unknown'}), CPython {manifest['python_version']}")
        numerics = None if args.no_numerics else plan_numerics(bundle.context())
        if args.dry_run:
            plan = make_plan(bundle)
            for note in plan.notes:
                print(f"note: {note}")
            for action in plan.actions:
                print(f"would {action}")
            if numerics is not None:
                for line in describe(numerics):
                    print(f"numerics: would {line}")
                for note in numerics.notes:
                    print(f"numerics: {note}")
            print(f"dry run: {len(plan.actions)} actions, nothing changed")
            return 0
        if not args.no_sandbox:  # the bundle's code runs in a sandboxed child (sandbox.py), held to this manifest
            from .sandbox import run_cli
            return run_cli(args, bundle)
        return rebuild_and_report(args, numerics)
    except ReuseError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 -- the rebuilt code is the image's: report, do not trace back
        print(f"ERROR: {error_text(exc)}", file=sys.stderr)
        return 1


def error_text(exc: BaseException) -> str:
    """The one line an error is reported as, after "ERROR: "."""
    if isinstance(exc, ReuseError):
        return str(exc)
    return f"rebuilding failed: {type(exc).__name__}: {exc}"


def rebuild_and_report(args, numerics) -> int:
    """The part of the command that runs the bundle's code: apply the numerics environment, run the
    setup file, rebuild in this process and print what was done, then run the input.  The CLI calls it
    in the sandboxed child (sandbox.py), or here with --no-sandbox; errors are raised."""
    if numerics is not None:
        done, warnings = apply_environment(numerics)
        for line in done or ([f"environment already as in the image ({len(numerics.environ)} variables)"]
                             if numerics.environ else []):
            print(f"numerics: {line}")
        for line in warnings:
            print(f"warning: {line}")
    if args.setup:
        runpy.run_path(args.setup, run_name="__zen_setup__")
    result = rebuild(args.bundle, args.expect_sha256, patch=not args.no_patch, numerics=not args.no_numerics,
                     allow_unsigned=args.allow_unsigned, trusted_keys=args.trusted_key, sandbox=False)
    for note in result.plan.notes:
        print(f"note: {note}")
    for action in result.plan.actions:
        print(f"done {action}")
    for line in result.numerics:
        print(f"numerics: {line}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    model = result.model
    parameters = sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0
    print(f"rebuilt {type(model).__module__}.{type(model).__qualname__}: {parameters} parameters")
    status = 0
    if args.input:
        with open(args.input) as handle:
            spec = json.load(handle)
        expected = load_expected(args.expect_output) if args.expect_output else None
        output = run_input(model, spec)
        print(f"output {list(output.shape)} {str(output.dtype).replace('torch.', '')} sha256 {tensor_sha256(output)}")
        if expected is not None:
            comparison = compare_output(output, expected)
            print(comparison.text())
            status = 0 if comparison.identical else OUTPUT_DIFFERS
        if args.fgsm is not None:
            from .whitebox import fgsm_demo
            print(fgsm_demo(model, spec, args.fgsm))
    return status


if __name__ == "__main__":
    sys.exit(main())

"""python -m volatility3_zen.keys: the investigator's signing key and the keys reuse trusts (docs/reuse.md).

    python -m volatility3_zen.keys generate [--out DIR] [--force]   # once: the key patchgen --dump signs with
    python -m volatility3_zen.keys show [FILE]                      # its fingerprint (or a key file's)
    python -m volatility3_zen.keys trust PUBLIC_KEY_FILE            # reuse accepts bundles it signed
    python -m volatility3_zen.keys list                             # the trusted keys

Keys are kept in $ZEN_CONFIG_DIR, else $XDG_CONFIG_HOME/volatility3-zen, else ~/.config/volatility3-zen.
Standard library and cryptography only: ``trust`` runs in the base model's environment too.
"""

import argparse
import sys
from pathlib import Path

from .zenlib.bundle import signing


def _show(path) -> str:
    """The fingerprint of a key file: a public key, or a private key (its public half)."""
    try:
        key = signing.load_public_key(path)
    except signing.SigningError as public_error:
        try:
            key = signing.load_private_key(path).public
        except signing.SigningError:
            raise public_error from None
    return f"{key.fingerprint}  {path}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m volatility3_zen.keys", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="make the signing key pair (once); trusted here when in the "
                                   "default folder")
    generate.add_argument("--out", metavar="DIR", help=f"the folder (default: {signing.config_dir()})")
    generate.add_argument("--force", action="store_true", help="replace a key pair that exists")
    show = commands.add_parser("show", help="the fingerprint of the signing key, or of a key file")
    show.add_argument("file", nargs="?", help="a public or private key file (default: the signing key)")
    trust = commands.add_parser("trust", help="trust a public key: reuse accepts bundles it signed")
    trust.add_argument("file", help="the public key (PEM, e.g. someone's signing-key.pub.pem, or ssh-ed25519)")
    commands.add_parser("list", help="the trusted keys")
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            private, public, key = signing.generate(args.out, replace=args.force)
            print(f"private key {private} (mode 0600: keep it to yourself)")
            print(f"public key  {public}")
            print(f"fingerprint {key.fingerprint}")
            if args.out is None or Path(args.out).resolve() == signing.config_dir().resolve():
                print(f"patchgen --dump signs with it; reuse here trusts it ({signing.trusted_keys_dir()})")
            else:
                print(f"sign with: linux.zen.patchgen --dump --sign-key {private}; "
                      f"trust with: python -m volatility3_zen.keys trust {public}")
        elif args.command == "show":
            path = args.file or signing.default_private_key()
            if args.file is None and not Path(path).exists():
                raise signing.SigningError(f"no signing key at {path} (make one: {signing.KEYS_COMMAND} generate)")
            print(_show(path))
        elif args.command == "trust":
            key = signing.load_public_key(args.file)
            print(f"trusted {key.fingerprint}: {signing.trust(key)}")
        else:
            keys = signing.trusted_keys()
            for key in keys:
                print(f"{key.fingerprint}  {key.source}")
            if not keys:
                print(f"no trusted keys in {signing.trusted_keys_dir()}")
    except signing.SigningError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

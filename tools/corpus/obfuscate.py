"""Renames every identifier a Python module defines to a meaningless one (standard library ``ast``).

Makes the corpus's obfuscated derivative, the way a vendor ships a model's code through a renaming
obfuscator: same architecture, same weights for the same seed, no telling names.

    python3 -m tools.corpus.obfuscate tools/corpus/deploy/derived/others/resnet_ghost.py \\
        tools/corpus/deploy/derived/others/o0x_net.py

(``--check`` compares the output with an existing file instead of writing it, exit 1 if it
differs; ``--map`` prints the renaming.)

Renamed, everywhere in the module: classes, functions and methods it defines, their parameters
(``self`` included), local and module-level variables, comprehension and loop targets, the
attributes its classes assign on their first parameter (``self.x = ...``) and keyword arguments in
calls of its own functions and classes.  Docstrings are dropped, and ``ast.unparse`` drops comments.

Kept: dunder names; the names of imported modules and objects, builtins, and what is only read
(globals of other modules); the nn.Module API that torch calls by name (``forward``,
``extra_repr``, ...) and the attribute names of torch's layers (``weight``, ``in_channels``, ...);
any attribute that the module also reads from an object that is not a method's first parameter
(``conv.out_channels``: it belongs to someone else's class, too); keyword arguments of other
modules' functions (``nn.Conv2d(..., bias=False)``); string contents.  Names reached through strings
(``getattr``, ``register_buffer("name")``) are not followed: the source must not rely on them.

The new name is ``O0x`` + the first 8 hex digits of sha256(SALT + old name): one old name maps to
one new name wherever it occurs, and the output depends on the source only.
"""

import argparse
import ast
import builtins
import hashlib
import sys

SALT = "volatility3-zen/obfuscate/1:"

# Names torch (or timm, loralib) calls or reads by name on a module, and attribute names of torch's
# own layers: renaming them would change behaviour or clash with the base class.
RESERVED = frozenset(
    """
    forward extra_repr reset_parameters train eval apply state_dict load_state_dict
    _load_from_state_dict _save_to_state_dict _apply _get_name named_modules modules children
    named_children parameters named_parameters buffers named_buffers register_buffer
    register_parameter register_module add_module get_submodule get_parameter get_buffer to cpu
    cuda float double half bfloat16 type zero_grad requires_grad_ training init_weights
    zero_init_last reset_classifier get_classifier forward_features forward_head
    weight bias in_channels out_channels kernel_size stride padding dilation groups padding_mode
    in_features out_features num_features eps momentum affine track_running_stats running_mean
    running_var num_batches_tracked inplace num_embeddings embedding_dim normalized_shape
    elementwise_affine p dim
    """.split()
)


def new_name(old):
    return "O0x" + hashlib.sha256((SALT + old).encode()).hexdigest()[:8]


def _is_dunder(name):
    return name.startswith("__") and name.endswith("__")


def _strip_docstring(body):
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        body = body[1:] or [ast.Pass()]
    return body


def _all_args(arguments):
    args = arguments.posonlyargs + arguments.args + arguments.kwonlyargs
    args += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
    return args


class _Collector(ast.NodeVisitor):
    """Finds what the module defines (to rename) and what it must leave alone."""

    def __init__(self):
        self.imported = set()
        self.names = set()  # Name ids: functions, classes, parameters, variables the module defines
        self.calls = set()  # functions and classes of the module: their call keywords are renamed
        self.attributes = set()  # self.X assigned in the module's methods, its methods and class attributes
        self.foreign_attributes = set()  # .X read or written on something else than a method's first parameter
        self._first_args = []  # the first parameter of each enclosing method, innermost last

    def visit_Import(self, node):
        for alias in node.names:
            self.imported.add(alias.asname or alias.name.split(".")[0])

    def visit_ImportFrom(self, node):
        for alias in node.names:
            self.imported.add(alias.asname or alias.name)

    def visit_ClassDef(self, node):
        self.names.add(node.name)
        self.calls.add(node.name)
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self._function(item, method=True)
            elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        self.attributes.add(target.id)
                if item.value is not None:
                    self.visit(item.value)
            else:
                self.visit(item)
        for expr in node.bases + node.keywords + node.decorator_list:
            self.visit(expr)

    def visit_FunctionDef(self, node):
        self._function(node, method=False)

    visit_AsyncFunctionDef = visit_FunctionDef

    def _function(self, node, method):
        if method:
            self.attributes.add(node.name)
            self.calls.add(node.name)
        else:
            self.names.add(node.name)
            self.calls.add(node.name)
        args = _all_args(node.args)
        self.names.update(a.arg for a in args)
        pushed = method and node.args.args
        if pushed:
            self._first_args.append(node.args.args[0].arg)
        for child in ast.iter_child_nodes(node):
            self.visit(child)
        if pushed:
            self._first_args.pop()

    def visit_Lambda(self, node):
        self.names.update(a.arg for a in _all_args(node.args))
        self.generic_visit(node)

    def visit_Name(self, node):
        if isinstance(node.ctx, (ast.Store, ast.Del)):
            self.names.add(node.id)

    def visit_ExceptHandler(self, node):
        if node.name:
            self.names.add(node.name)
        self.generic_visit(node)

    def visit_Global(self, node):
        self.names.update(node.names)

    visit_Nonlocal = visit_Global

    def visit_Attribute(self, node):
        on_self = isinstance(node.value, ast.Name) and self._first_args and node.value.id == self._first_args[-1]
        if on_self and isinstance(node.ctx, ast.Store):
            self.attributes.add(node.attr)
        elif not on_self:
            self.foreign_attributes.add(node.attr)
        self.generic_visit(node)


class _Renamer(ast.NodeTransformer):
    def __init__(self, names, attributes, calls):
        self.names = names
        self.attributes = attributes
        self.calls = calls

    def _n(self, name):
        return new_name(name) if name in self.names else name

    def visit_Module(self, node):
        node.body = _strip_docstring(node.body)
        self.generic_visit(node)
        return node

    def visit_ClassDef(self, node):
        node.body = _strip_docstring(node.body)
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                item.zen_method = True
        self.generic_visit(node)
        node.name = self._n(node.name)
        for item in node.body:
            if isinstance(item, (ast.Assign, ast.AnnAssign)):
                for target in item.targets if isinstance(item, ast.Assign) else [item.target]:
                    if isinstance(target, ast.Name) and target.id in self.attributes:
                        target.id = new_name(target.id)
        return node

    def visit_FunctionDef(self, node):
        node.body = _strip_docstring(node.body)
        self.generic_visit(node)
        if node.name in (self.attributes if getattr(node, "zen_method", False) else self.names):
            node.name = new_name(node.name)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_arg(self, node):
        self.generic_visit(node)
        node.arg = self._n(node.arg)
        return node

    def visit_Name(self, node):
        node.id = self._n(node.id)
        return node

    def visit_Global(self, node):
        node.names = [self._n(n) for n in node.names]
        return node

    visit_Nonlocal = visit_Global

    def visit_ExceptHandler(self, node):
        self.generic_visit(node)
        if node.name:
            node.name = self._n(node.name)
        return node

    def visit_Attribute(self, node):
        self.generic_visit(node)
        if node.attr in self.attributes:
            node.attr = new_name(node.attr)
        return node

    def visit_Call(self, node):
        func = node.func
        own = (isinstance(func, ast.Name) and func.id in self.calls) or (
            isinstance(func, ast.Attribute) and func.attr in self.calls and func.attr in self.attributes
        )
        if own:
            for keyword in node.keywords:
                if keyword.arg is not None and keyword.arg in self.names:
                    keyword.arg = new_name(keyword.arg)
        self.generic_visit(node)
        return node


def obfuscate(source, keep=()):
    """(new source, {old: new}) for a module's source text."""
    tree = ast.parse(source)
    collector = _Collector()
    collector.visit(tree)
    untouchable = collector.imported | set(dir(builtins)) | set(keep)
    names = {n for n in collector.names if not _is_dunder(n) and n not in untouchable}
    attributes = {
        a
        for a in collector.attributes
        if not _is_dunder(a) and a not in RESERVED and a not in collector.foreign_attributes and a not in keep
    }
    calls = collector.calls & (names | attributes)
    mapping = {old: new_name(old) for old in sorted(names | attributes)}
    if len(set(mapping.values())) != len(mapping):
        raise ValueError("two names map to one obfuscated name; change SALT")
    if set(mapping.values()) & (collector.imported | collector.names | collector.attributes):
        raise ValueError("an obfuscated name is already used in the module")
    tree = _Renamer(names, attributes, calls).visit(tree)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree) + "\n", mapping


def header(source_path, output_path):
    return (
        "# GENERATED by tools/corpus/obfuscate.py from %s: do not edit.\n"
        "# Regenerate: python3 -m tools.corpus.obfuscate %s %s\n" % (source_path, source_path, output_path)
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--keep", action="append", default=[], help="a name to leave as it is (repeatable)")
    parser.add_argument("--check", action="store_true", help="compare with OUTPUT instead of writing it")
    parser.add_argument("--map", action="store_true", help="print old -> new names")
    args = parser.parse_args(argv)
    with open(args.source, encoding="utf-8") as handle:
        text, mapping = obfuscate(handle.read(), args.keep)
    text = header(args.source, args.output) + text
    compile(text, args.output, "exec")
    if args.map:
        for old, new in sorted(mapping.items()):
            print("%s -> %s" % (old, new))
    if args.check:
        try:
            with open(args.output, encoding="utf-8") as handle:
                same = handle.read() == text
        except OSError:
            same = False
        print("%s is %s" % (args.output, "up to date" if same else "STALE"))
        return 0 if same else 1
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write(text)
    print("wrote %s (%d names renamed)" % (args.output, len(mapping)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

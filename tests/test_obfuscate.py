"""tools/corpus/obfuscate.py and the obfuscated derivative it generated (derived/others/o0x_net.py)."""

import ast
from pathlib import Path

from tools.corpus import obfuscate

OTHERS = Path(obfuscate.__file__).parent / "deploy" / "derived" / "others"
SOURCE = OTHERS / "resnet_ghost.py"
OUTPUT = OTHERS / "o0x_net.py"
REL = "tools/corpus/deploy/derived/others/"


def test_the_committed_obfuscated_module_is_regenerated_from_its_source():
    text, _ = obfuscate.obfuscate(SOURCE.read_text())
    expected = obfuscate.header(REL + SOURCE.name, REL + OUTPUT.name) + text
    assert OUTPUT.read_text() == expected, "regenerate: python3 -m tools.corpus.obfuscate %s%s %s%s" % (
        REL, SOURCE.name, REL, OUTPUT.name)


def test_every_own_identifier_is_renamed_and_nothing_else():
    text, mapping = obfuscate.obfuscate(SOURCE.read_text())
    for old in ("GhostModule", "ghost_resnet18", "primary_conv", "cheap_operation", "oup", "self", "x1"):
        assert old in mapping
    tree = ast.parse(text)
    identifiers = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    identifiers |= {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    identifiers |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert not identifiers & set(mapping)
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not attributes & {"primary_conv", "cheap_operation", "oup"}
    # conv.kernel_size is nn.Conv2d's attribute: kept, though the parameter kernel_size is renamed
    assert {"kernel_size", "stride", "in_channels", "conv1"} <= attributes
    identifiers |= attributes
    # the API torch calls by name, other modules' attributes and keywords stay
    assert {"forward", "__init__", "in_channels", "conv1", "init_weights", "Conv2d"} <= identifiers
    assert "num_classes=" in text and "bias=False" in text
    assert ast.get_docstring(tree) is None


def test_renaming_is_consistent_across_scopes_and_deterministic():
    source = (
        "import math\n"
        "class Net:\n"
        "    scale = 2\n"
        "    def __init__(self, width, depth=1):\n"
        "        self.width = width\n"
        "        self.depth = depth\n"
        "    def helper(self, v):\n"
        "        return sorted((v * k for k in range(self.scale)), reverse=True)\n"
        "    def forward(self, x):\n"
        "        return self.helper(math.floor(x) * self.width + self.depth)\n"
        "def make(width):\n"
        "    return Net(width=width, depth=2)\n"
    )
    first, mapping = obfuscate.obfuscate(source)
    assert obfuscate.obfuscate(source) == (first, mapping)
    assert set(mapping) == {"Net", "width", "depth", "helper", "v", "k", "x", "make", "self", "scale"}
    assert "reverse=True" in first and ".forward(" not in first and "def forward(" in first
    namespace = {}
    exec(compile(first, "<obfuscated>", "exec"), namespace)
    model = namespace[obfuscate.new_name("make")](3)
    assert type(model).__name__ == obfuscate.new_name("Net")
    assert sorted(vars(model)) == sorted([obfuscate.new_name("width"), obfuscate.new_name("depth")])
    assert model.forward(2.5) == [8, 0]  # (2 * 3 + 2) * k for k in (1, 0)

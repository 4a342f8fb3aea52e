"""Unit tests of analysis/diff.py on a tiny hand-built model (tests/ur_builders.py); no image.

The base model ``m`` has two classes (``m.Block``, ``m.Net``), a free function ``m.build`` and the
layer tree Net(body=Sequential(Block, Block, Block), drop=Dropout, head=Linear).  Each test edits a
copy of it into a "derivative" and checks what ``diff_models`` reports.
"""

from dataclasses import replace

import pytest

from ur_builders import class_of, code, framework_class, layer, method, ur_of
from volatility3_zen.zenlib.analysis.attribution import Match
from volatility3_zen.zenlib.analysis.diff import diff_models

BLOCK_INIT = ("LOAD_GLOBAL super", "CALL 0", "LOAD_ATTR __init__", "CALL 0", "POP_TOP", "LOAD_GLOBAL nn",
              "LOAD_ATTR Linear", "LOAD_FAST planes", "LOAD_FAST planes", "CALL 2", "LOAD_FAST self",
              "STORE_ATTR fc", "LOAD_CONST NoneType:None", "RETURN_VALUE")
BLOCK_FORWARD = ("LOAD_FAST self", "LOAD_ATTR fc", "LOAD_FAST x", "CALL 1", "LOAD_FAST x", "BINARY_OP +",
                 "LOAD_GLOBAL torch", "LOAD_ATTR relu", "SWAP 2", "CALL 1", "RETURN_VALUE")
NET_INIT = ("LOAD_GLOBAL super", "CALL 0", "LOAD_ATTR __init__", "CALL 0", "POP_TOP", "LOAD_GLOBAL build",
            "LOAD_FAST depth", "CALL 1", "LOAD_FAST self", "STORE_ATTR body", "LOAD_CONST str:'net'",
            "LOAD_FAST self", "STORE_ATTR label", "LOAD_CONST NoneType:None", "RETURN_VALUE")
NET_FORWARD = ("LOAD_FAST self", "LOAD_ATTR head", "LOAD_FAST self", "LOAD_ATTR drop", "LOAD_FAST self",
               "LOAD_ATTR body", "LOAD_FAST x", "CALL 1", "CALL 1", "CALL 1", "RETURN_VALUE")
BUILD = ("LOAD_GLOBAL nn", "LOAD_ATTR Sequential", "LOAD_GLOBAL Block", "LOAD_CONST int:4", "CALL 1",
         "LOAD_GLOBAL Block", "LOAD_CONST int:8", "CALL 1", "CALL 2", "RETURN_VALUE")
ATTN_INIT = ("LOAD_GLOBAL super", "CALL 0", "LOAD_ATTR __init__", "CALL 0", "POP_TOP", "LOAD_GLOBAL nn",
             "LOAD_ATTR MultiheadAttention", "LOAD_FAST planes", "LOAD_CONST int:2", "CALL 2", "LOAD_FAST self",
             "STORE_ATTR attn", "LOAD_CONST NoneType:None", "RETURN_VALUE")
ATTN_FORWARD = ("LOAD_FAST self", "LOAD_ATTR attn", "LOAD_FAST x", "LOAD_FAST x", "LOAD_FAST x", "CALL 3",
                "LOAD_CONST int:0", "BINARY_SUBSCR", "RETURN_VALUE")

SEQUENTIAL, DROPOUT, LINEAR = ("torch.nn.modules.container.Sequential", "torch.nn.modules.dropout.Dropout",
                               "torch.nn.modules.linear.Linear")
FRAMEWORK = [framework_class(key) for key in (SEQUENTIAL, DROPOUT, LINEAR)]


def block_methods(key="m.Block", forward=BLOCK_FORWARD):
    qualname = key.split(".", 1)[1]
    return [method(key, f"m:{qualname}.__init__(self, planes)@5", BLOCK_INIT),
            method(key, f"m:{qualname}.forward(self, x)@10", forward)]


NET_METHODS = [method("m.Net", "m:Net.__init__(self, depth)@20", NET_INIT),
               method("m.Net", "m:Net.forward(self, x)@27", NET_FORWARD)]
BUILD_FN = code("m:build(depth)@40", BUILD)


def layers(blocks=("m.Block", "m.Block", "m.Block"), planes=(4, 8, 16), dropout=0.1, head=True):
    """Net(body=Sequential(*blocks), drop=Dropout(dropout), head=Linear(16, 10))."""
    tree = [layer("", "m.Net", ["body", "drop"] + (["head"] if head else [])),
            layer("body", SEQUENTIAL, [str(i) for i in range(len(blocks))])]
    tree += [layer(f"body.{i}", cls, tensors=[("weight", [p, p])]) for i, (cls, p) in enumerate(zip(blocks, planes))]
    tree.append(layer("drop", DROPOUT, p=dropout, inplace=False))
    if head:
        tree.append(layer("head", LINEAR, tensors=[("weight", [10, 16]), ("bias", [10])], in_features=16,
                          out_features=10))
    return tree


def model(blocks=None, extra=(), extra_classes=(), without=(), tree=None, name=None):
    """The base model, or a derivative: ``blocks`` replaces m.Block's methods, ``extra`` adds code,
    ``extra_classes`` adds classes, ``without`` drops code and classes by function_id or class key."""
    blocks = block_methods() if blocks is None else blocks
    block_class = class_of(blocks[0].owner_class, [c for c in blocks if c.function_id not in without])
    features = [c for c in blocks + NET_METHODS + [BUILD_FN] + list(extra) if c.function_id not in without]
    classes = [block_class, class_of("m.Net", NET_METHODS)] + list(extra_classes)
    classes = [c for c in classes if c.key not in without]
    return ur_of(features, classes + FRAMEWORK, tree if tree is not None else layers(), name=name)


BASE = model(name="m-base")


def kinds(model_diff):
    """(kind, target function_id or base function_id) of every code change."""
    return {(c.kind, c.function_id or c.base_function_id) for c in model_diff.changes}


# -- code -----------------------------------------------------------------------------------------------------
def test_a_model_against_itself_differs_in_nothing():
    d = diff_models(model(), BASE)
    assert d.empty and d.changes == [] and d.layer_changes == [] and d.warnings == [] and d.skipped == []
    assert (d.base, d.target_root_class, d.python_version) == ("m-base", "m.Net", "3.11")
    assert set(d.counts().values()) == {0}


def test_an_added_class_brings_its_methods_as_added_code():
    attn = [method("m.Attention", "m:Attention.__init__(self, planes)@50", ATTN_INIT),
            method("m.Attention", "m:Attention.forward(self, x)@55", ATTN_FORWARD)]
    helper = code("m:attention_mask(size)@70", ("LOAD_GLOBAL torch", "LOAD_ATTR ones", "LOAD_FAST size",
                                                 "LOAD_FAST size", "CALL 2", "RETURN_VALUE"))
    d = diff_models(model(extra=attn + [helper], extra_classes=[class_of("m.Attention", attn)]), BASE)
    (added,) = d.added_classes
    assert (added.key, added.name, added.module, added.bases) == ("m.Attention", "Attention", "m",
                                                                 ["torch.nn.modules.module.Module"])
    assert added.methods == {"__init__": attn[0].function_id, "forward": attn[1].function_id}
    assert kinds(d) == {("added", attn[0].function_id), ("added", attn[1].function_id),
                        ("added", helper.function_id)}
    for change in d.changes:
        assert change.base_function_id is None and change.similarity is None and change.fields == []
    by_id = {c.function_id: c for c in d.changes}
    assert by_id[attn[1].function_id].class_key == "m.Attention" and by_id[attn[1].function_id].size == 18
    assert by_id[helper.function_id].class_key is None
    assert d.added_functions == [helper.function_id]  # the methods belong to the added class
    assert d.removed_classes == [] and d.renamed_classes == {} and d.class_changes == []


def test_a_changed_method_is_changed_with_the_fields_that_differ():
    forward = BLOCK_FORWARD[:-1] + ("LOAD_GLOBAL dropout", "SWAP 2", "CALL 1", "RETURN_VALUE")
    d = diff_models(model(blocks=block_methods(forward=forward)), BASE)
    (change,) = d.changes
    fid = "m:Block.forward(self, x)@10"
    assert (change.kind, change.function_id, change.base_function_id, change.class_key, change.code_kind) == \
        ("changed", fid, fid, "m.Block", "method")
    assert change.fields == ["code_sha256", "disassembly", "names"]
    assert 0.3 <= change.similarity < 1.0 and change.size > 0 and change.pulled_in_by is None
    assert d.added_classes == [] and d.layer_changes == []


def test_a_table_change_alone_is_changed_with_no_bytes():
    (init, forward) = block_methods()
    d = diff_models(model(blocks=[init, replace(forward, strings=["extra"], flags=forward.flags | 0x20)]), BASE)
    (change,) = d.changes
    assert change.kind == "changed" and change.fields == ["strings", "flags"] and change.size == 0


def test_removed_code_and_classes():
    d = diff_models(model(without={BUILD_FN.function_id, "m:Block.forward(self, x)@10"}), BASE)
    assert kinds(d) == {("removed", BUILD_FN.function_id), ("removed", "m:Block.forward(self, x)@10")}
    build = next(c for c in d.changes if c.base_function_id == BUILD_FN.function_id)
    assert build.function_id is None and build.size == BUILD_FN.bytecode_size and build.class_key is None
    (reshaped,) = d.class_changes  # the class stays, one method fewer
    assert (reshaped.key, reshaped.methods_removed, reshaped.methods_added) == ("m.Block", ["forward"], [])
    # A whole class gone: its code removed, the class listed.
    d = diff_models(model(without={c.function_id for c in block_methods()} | {"m.Block"}), BASE)
    assert d.removed_classes == ["m.Block"]
    assert {fid for kind, fid in kinds(d) if kind == "removed"} == {c.function_id for c in block_methods()}


def test_code_that_smear_made_unreadable_is_not_removed():
    """The fingerprint lists the functions whose code it could not read (``unreadable_functions``):
    their absence is not a removal, neither as code nor as a method of a class."""
    target = model(without={BUILD_FN.function_id, "m:Block.forward(self, x)@10"})
    target = replace(target, provenance=dict(target.provenance, unreadable_functions=["m.Block.forward"]))
    d = diff_models(target, BASE)
    assert kinds(d) == {("removed", BUILD_FN.function_id)}
    assert d.skipped == ["m:Block.forward(self, x)@10"]
    assert d.class_changes == []
    assert any("not reported as removed" in w for w in d.warnings)


def test_a_renamed_class_is_recognised_by_its_methods():
    renamed = block_methods("m.Blk")
    target = model(blocks=renamed, tree=layers(blocks=("m.Blk",) * 3))
    d = diff_models(target, BASE)
    assert d.renamed_classes == {"m.Blk": "m.Block"}
    assert d.added_classes == [] and d.removed_classes == [] and d.class_changes == []
    assert {(c.function_id, c.base_function_id, tuple(c.fields)) for c in d.changes} == {
        ("m:Blk.__init__(self, planes)@5", "m:Block.__init__(self, planes)@5", ("qualname",)),
        ("m:Blk.forward(self, x)@10", "m:Block.forward(self, x)@10", ("qualname",))}
    assert d.layer_changes == []  # the layers' class is the same class under its new name


# -- layers -----------------------------------------------------------------------------------------------------
def test_an_inserted_block_is_added_and_later_blocks_keep_their_counterparts():
    base = model(tree=layers(blocks=("m.Block", "m.Block", "m.Down")))
    tree = layers(blocks=("m.Block", "m.Attention", "m.Block", "m.Down"), planes=(4, 4, 8, 16))
    d = diff_models(model(tree=tree), base)
    changes = {(c.kind, c.path, c.base_path, tuple(c.fields)) for c in d.layer_changes}
    # body.2 and body.3 (8 and 16 planes) line up with the base's body.1 and body.2, so they are unchanged.
    assert changes == {("added", "body.1", None, ()), ("changed", "body", "body", ("children",))}


def test_a_block_inserted_into_a_run_of_one_class_is_the_only_layer_added():
    tree = layers(blocks=("m.Block", "m.Attention", "m.Block", "m.Block"), planes=(4, 4, 8, 16))
    changes = {(c.kind, c.path, c.base_path) for c in diff_models(model(tree=tree), BASE).layer_changes}
    assert changes == {("added", "body.1", None), ("changed", "body", "body")}


def test_a_changed_hyper_parameter_and_a_removed_layer():
    d = diff_models(model(tree=layers(dropout=0.5, head=False)), BASE)
    by_path = {c.path: c for c in d.layer_changes}
    assert set(by_path) == {"", "drop", "head"}
    assert (by_path["drop"].kind, by_path["drop"].fields, by_path["drop"].base_path) == \
        ("changed", ["hyperparameters"], "drop")
    assert (by_path[""].kind, by_path[""].fields) == ("changed", ["children"])
    head = by_path["head"]
    assert (head.kind, head.class_key, head.base_class_key, head.elements) == ("removed", None, LINEAR, 170)
    assert d.counts()["layers_changed"] == 2 and d.counts()["layers_removed"] == 1


def test_without_an_mr_on_either_side_there_are_no_layer_changes():
    plain = ur_of(block_methods() + NET_METHODS, [class_of("m.Block", block_methods())], layers=None)
    assert diff_models(plain, BASE).layer_changes == [] and diff_models(BASE, plain).layer_changes == []


# -- what cannot be compared ---------------------------------------------------------------------------------------
def test_unreadable_code_is_skipped_with_a_warning():
    init, forward = block_methods()
    unreadable = replace(forward, disassembly=[], code_sha256="0" * 64)  # bytecode the fingerprint could not decode
    d = diff_models(model(blocks=[init, unreadable]), BASE)
    assert d.skipped == [forward.function_id] and d.changes == []
    assert d.warnings == [f"target code {forward.function_id} could not be read (no instructions): skipped"]


def test_a_given_matching_is_used_as_it_is():
    target = model()
    fids = sorted(c.function_id for c in target.pr.code)
    d = diff_models(target, BASE, ([], fids, fids))  # nothing matched: all added, all removed
    assert {c.kind for c in d.changes} == {"added", "removed"} and len(d.changes) == 2 * len(fids)
    ghost = Match("m:ghost()@1", BUILD_FN.function_id, 0.9, False)
    d = diff_models(target, BASE, ([ghost], [], []))
    assert d.skipped == ["m:ghost()@1"]
    assert "target code m:ghost()@1 is not in its representation: skipped" in d.warnings


def test_a_method_rebound_to_a_script_function_changes_its_class():
    """BasicBlock.forward = my_forward: the base class holds a function of the script as its method.
    The class is changed, nothing is added as a class; an added class is never listed as changed."""
    patched = method("m.Block", "__main__:my_forward(self, x)@3", BLOCK_FORWARD[:-1] + ("LOAD_CONST int:2", "BINARY_OP *", "RETURN_VALUE"))
    target = model(blocks=[block_methods()[0], patched])
    d = diff_models(target, BASE)
    assert d.changed_classes == ["m.Block"] and not d.added_classes
    assert d.to_json()["changed_classes"] == ["m.Block"]
    attn = [method("m.Attn", "m:Attn.__init__(self, planes)@50", ATTN_INIT),
            method("m.Attn", "m:Attn.forward(self, x)@55", ATTN_FORWARD)]
    d = diff_models(model(extra=attn, extra_classes=[class_of("m.Attn", attn)]), BASE)
    assert [c.key for c in d.added_classes] == ["m.Attn"] and d.changed_classes == []


def test_a_wrapped_base_model_aligns_with_the_base_and_only_the_wrapper_is_added():
    """A custom root holding the base model (self.base = Net(...)): the base's layers pair with their
    own under the wrapper's prefix, not all removed and added again."""
    wrapped = [layer("", "w.Serving", ["base"])] + [
        replace(node, path="base" + ("." + node.path if node.path else "")) for node in layers()]
    serving = [method("w.Serving", "w:Serving.forward(self, x)@3", NET_FORWARD)]
    target = model(extra=serving, extra_classes=[class_of("w.Serving", serving)], tree=wrapped)
    d = diff_models(target, BASE)
    assert {(c.kind, c.path) for c in d.layer_changes} == {("added", "")}


def test_a_block_wrapped_in_place_aligns_with_the_base_block():
    """body[1] = Wrapper(block): the block inside the wrapper pairs with the base's body.1; the wrapper
    is the one layer added, and body's children changed."""
    tree = layers()
    wrapped = []
    for node in tree:
        if node.path == "body.1":
            wrapped.append(layer("body.1", "w.Wrapper", ["inner"]))
            wrapped.append(replace(node, path="body.1.inner"))
        else:
            wrapped.append(node)
    d = diff_models(model(tree=wrapped), BASE)
    assert {(c.kind, c.path, c.base_path) for c in d.layer_changes} == {("added", "body.1", None),
                                                                         ("changed", "body", "body")}

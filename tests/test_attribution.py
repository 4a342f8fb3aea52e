"""Unified representation (JSON form) and attribution, on small URs built here: code features come
from source compiled by the running interpreter, MRs are written by hand.  No memory image needed."""

import dataclasses
import dis
import hashlib
import json
import re
import types

import pytest

from volatility3_zen.zenlib.analysis import similarity
from volatility3_zen.zenlib.analysis.attribution import MATCH_THRESHOLD, attribute, compare, pr_matching, similarity_matrix
from volatility3_zen.zenlib.representation.unified import (
    ClassFeature,
    CodeFeature,
    LayerNode,
    MathematicalRepresentation,
    ProgramRepresentation,
    UnifiedRepresentation,
)

RESNET = '''\
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(in_planes, out_planes, stride=1):
    """3x3 convolution with padding"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv3x3(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def _forward_impl(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.layer1(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)

    def forward(self, x):
        return self._forward_impl(x)


def resnet_tiny(pretrained=False, progress=True, **kwargs):
    model = ResNet(BasicBlock, [2], **kwargs)
    if pretrained:
        raise NotImplementedError("no weights for resnet_tiny")
    return model


def load_checkpoint(model, path, strict=True):
    state = torch.load(path, map_location="cpu")
    if "state_dict" in state:
        state = state["state_dict"]
    state = {k.replace("module.", ""): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=strict)
    print("missing keys:", missing, "unexpected keys:", unexpected)
    return model
'''

GPT = '''\
import math
import torch
import torch.nn as nn
from torch.nn import functional as F


class LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        print("number of parameters: %.2fM" % (self.get_num_params() / 1e6,))

    def get_num_params(self, non_embedding=True):
        n_params = sum(p.numel() for p in self.parameters())
        return n_params

    def forward(self, idx, targets=None):
        b, t = idx.size()
        x = self.wte(idx)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])
            loss = None
        return logits, loss
'''

# A derivative of RESNET: a squeeze-and-excitation class inserted (which moves every later line), the
# block's forward changed to use it, load_checkpoint removed.
SE_CLASS = '''\
class SELayer(nn.Module):
    def __init__(self, channel, reduction=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(channel, channel // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(channel // reduction, channel, bias=False), nn.Sigmoid())

    def forward(self, x):
        b, c, _, _ = x.size()
        y = self.avg_pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


'''
SE_FORWARD = '''\
        out = self.bn2(out)
        out = self.se(out)
'''


def resnet_se_source():
    source = RESNET.replace("class BasicBlock(nn.Module):", SE_CLASS + "class BasicBlock(nn.Module):")
    source = source.replace("        self.stride = stride\n", "        self.stride = stride\n        self.se = SELayer(planes)\n")
    source = source.replace("        out = self.bn2(out)\n", SE_FORWARD, 1)
    return source[:source.index("def load_checkpoint")]


OBFUSCATION = {"conv3x3": "f_a1", "BasicBlock": "C_b2", "ResNet": "C_c3", "_make_layer": "m_d4",
               "_forward_impl": "m_e5", "resnet_tiny": "f_f6", "load_checkpoint": "f_g7",
               "inplanes": "v_h8", "identity": "v_i9", "downsample": "v_j0", "planes": "v_k1"}


def obfuscate(source):
    return re.sub(r"\b(%s)\b" % "|".join(OBFUSCATION), lambda m: OBFUSCATION[m.group(1)], source)


# -- code features from source (the tokens follow normalized_disassembly's format) ------------------
def _const_token(value):
    if isinstance(value, types.CodeType):
        return f"code:{value.co_name}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_const_token(v) for v in value) + ")"
    return f"{type(value).__name__}:{value!r}"


def _tokens(code):
    out = []
    for ins in dis.get_instructions(code):
        if ins.opname in ("CACHE", "EXTENDED_ARG", "NOP", "RESUME"):
            continue
        if ins.opcode in dis.hasconst:
            out.append(f"{ins.opname} {_const_token(ins.argval)}")
        elif ins.opcode in dis.hasjrel or ins.opcode in dis.hasjabs:
            out.append(ins.opname)
        elif ins.argrepr:
            out.append(f"{ins.opname} {ins.argrepr}")
        elif ins.arg is not None:
            out.append(f"{ins.opname} {ins.arg}")
        else:
            out.append(ins.opname)
    return out


def _strings(consts):
    for c in consts:
        if isinstance(c, str):
            yield c
        elif isinstance(c, tuple):
            yield from _strings(c)


def _feature(code, module, kind, owner):
    fid = f"{module}:{code.co_qualname}({', '.join(code.co_varnames[:code.co_argcount + code.co_kwonlyargcount])})" \
          f"@{code.co_firstlineno}"
    tokens = _tokens(code)
    return CodeFeature(
        function_id=fid, module=module, qualname=code.co_qualname, name=code.co_name, kind=kind, owner_class=owner,
        argcount=code.co_argcount, posonlyargcount=code.co_posonlyargcount, kwonlyargcount=code.co_kwonlyargcount,
        nlocals=code.co_nlocals, flags=code.co_flags, names=list(code.co_names), varnames=list(code.co_varnames),
        freevars=list(code.co_freevars), cellvars=list(code.co_cellvars), strings=list(_strings(code.co_consts)),
        calls=sum(t.startswith("CALL") for t in tokens), code_sha256=hashlib.sha256(code.co_code).hexdigest(),
        bytecode_size=len(code.co_code), disassembly=tokens,
        nested=[], address=id(code),
    )


def program_from_source(source, module):
    code_out, classes = [], []

    def walk(code, kind, owner, recurse=True):
        feature = _feature(code, module, kind, owner)
        code_out.append(feature)
        for const in code.co_consts if recurse else ():
            if isinstance(const, types.CodeType):
                child_kind = {"<lambda>": "lambda", "<listcomp>": "comprehension", "<dictcomp>": "comprehension",
                              "<genexpr>": "comprehension"}.get(const.co_name, "nested")
                feature.nested.append(walk(const, child_kind, None).function_id)
        return feature

    for const in compile(source, f"{module}.py", "exec").co_consts:
        if not isinstance(const, types.CodeType):
            continue
        if const.co_flags & 0x02:  # CO_NEWLOCALS: a function; a class body lacks it
            walk(const, "function", None)
            continue
        key = f"{module}.{const.co_qualname}"
        body = walk(const, "class-body", None, recurse=False)
        methods = {}
        for inner in const.co_consts:
            if isinstance(inner, types.CodeType):
                methods[inner.co_name] = walk(inner, "method", key).function_id
                body.nested.append(methods[inner.co_name])
        classes.append(ClassFeature(key=key, name=const.co_name, qualname=const.co_qualname, module=module,
                                    bases=["torch.nn.modules.module.Module"], methods=methods, framework=False))
    return code_out, classes


# -- hand-built MRs ----------------------------------------------------------------------------------
TORCH = {"Conv2d": "torch.nn.modules.conv.Conv2d", "BatchNorm2d": "torch.nn.modules.batchnorm.BatchNorm2d",
         "ReLU": "torch.nn.modules.activation.ReLU", "Linear": "torch.nn.modules.linear.Linear",
         "Sequential": "torch.nn.modules.container.Sequential", "ModuleList": "torch.nn.modules.container.ModuleList",
         "AdaptiveAvgPool2d": "torch.nn.modules.pooling.AdaptiveAvgPool2d", "Sigmoid": "torch.nn.modules.activation.Sigmoid",
         "Embedding": "torch.nn.modules.sparse.Embedding", "GELU": "torch.nn.modules.activation.GELU",
         "Dropout": "torch.nn.modules.dropout.Dropout"}


def make_mr(spec, module):
    """spec: (path, class name, [(tensor name, shape)]); torch classes by short name, others are the model's own."""
    layers, edges = [], []
    paths = [p for p, _, _ in spec]
    for path, cls, tensors in spec:
        children = [p[len(path) + 1 if path else 0:] for p in paths
                    if p != path and p.rpartition(".")[0] == path]
        key = TORCH.get(cls, f"{module}.{cls}")
        layers.append(LayerNode(path=path, class_key=key, depth=path.count(".") + (1 if path else 0),
                                children=children, tensors=[(n, list(s), "float32") for n, s in tensors]))
        if path:
            edges.append(("contains", path.rpartition(".")[0], path))
    leaves = [layer.path for layer in layers if not layer.children]
    edges += [("next", a, b) for a, b in zip(leaves, leaves[1:])]
    count = sum(_numel(s) for _, _, ts in spec for _, s in ts)
    return MathematicalRepresentation(root_class=layers[0].class_key, layers=layers, edges=edges,
                                      parameter_count=count, tensor_count=sum(len(ts) for _, _, ts in spec))


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _block(prefix, planes, se=False):
    spec = [(prefix, "BasicBlock", []),
            (prefix + ".conv1", "Conv2d", [("weight", [planes, planes, 3, 3])]),
            (prefix + ".bn1", "BatchNorm2d", [("weight", [planes]), ("bias", [planes])]),
            (prefix + ".relu", "ReLU", []),
            (prefix + ".conv2", "Conv2d", [("weight", [planes, planes, 3, 3])]),
            (prefix + ".bn2", "BatchNorm2d", [("weight", [planes]), ("bias", [planes])])]
    if se:
        spec += [(prefix + ".se", "SELayer", []), (prefix + ".se.avg_pool", "AdaptiveAvgPool2d", []),
                 (prefix + ".se.fc", "Sequential", []),
                 (prefix + ".se.fc.0", "Linear", [("weight", [planes // 16, planes])]),
                 (prefix + ".se.fc.1", "ReLU", []),
                 (prefix + ".se.fc.2", "Linear", [("weight", [planes, planes // 16])]),
                 (prefix + ".se.fc.3", "Sigmoid", [])]
    return spec


def resnet_spec(se=False, classes=1000):
    return ([("", "ResNet", []), ("conv1", "Conv2d", [("weight", [64, 3, 7, 7])]),
             ("bn1", "BatchNorm2d", [("weight", [64]), ("bias", [64])]), ("relu", "ReLU", []),
             ("layer1", "Sequential", [])]
            + _block("layer1.0", 64, se) + _block("layer1.1", 64, se)
            + [("avgpool", "AdaptiveAvgPool2d", []), ("fc", "Linear", [("weight", [classes, 512]), ("bias", [classes])])])


def gpt_spec(layers=2):
    spec = [("", "GPT", []), ("wte", "Embedding", [("weight", [50304, 768])]), ("h", "ModuleList", [])]
    for k in range(layers):
        p = f"h.{k}"
        spec += [(p, "Block", []), (p + ".ln_1", "LayerNorm", [("weight", [768]), ("bias", [768])]),
                 (p + ".attn", "CausalSelfAttention", []),
                 (p + ".attn.c_attn", "Linear", [("weight", [2304, 768]), ("bias", [2304])]),
                 (p + ".attn.c_proj", "Linear", [("weight", [768, 768]), ("bias", [768])]),
                 (p + ".attn.attn_dropout", "Dropout", []),
                 (p + ".ln_2", "LayerNorm", [("weight", [768]), ("bias", [768])]),
                 (p + ".mlp", "MLP", []), (p + ".mlp.c_fc", "Linear", [("weight", [3072, 768]), ("bias", [3072])]),
                 (p + ".mlp.gelu", "GELU", []),
                 (p + ".mlp.c_proj", "Linear", [("weight", [768, 3072]), ("bias", [768])])]
    return spec + [("ln_f", "LayerNorm", [("weight", [768]), ("bias", [768])]),
                   ("lm_head", "Linear", [("weight", [50304, 768])])]


def make_ur(name, source, module, spec, version="3.11", rename=None):
    code, classes = program_from_source(source, module)
    framework = [ClassFeature(key=key, name=key.rsplit(".", 1)[1], qualname=key.rsplit(".", 1)[1],
                              module=key.rsplit(".", 1)[0], bases=[], methods={}, framework=True)
                 for key in sorted(set(TORCH.values()))]
    if rename:
        spec = [(p, rename.get(c, c), ts) for p, c, ts in spec]
    mr = make_mr(spec, module)
    methods = {c.key: sorted(c.methods.values()) for c in classes}
    phi = {layer.path: {"class": layer.class_key, "code": methods.get(layer.class_key, [])} for layer in mr.layers}
    return UnifiedRepresentation(python_version=version, mr=mr, pr=ProgramRepresentation(code, classes + framework),
                                 phi=phi, name=name, provenance={"source": f"{module}.py", "tool": "test"})


def as_other_version(ur, version="3.12"):
    """The same program as another CPython would compile it: a few opcodes spelled differently
    (3.11 -> 3.12 style), other bytecode bytes."""
    def convert(tokens):
        out = []
        for tok in tokens:
            op, _, arg = tok.partition(" ")
            if op == "PRECALL":
                continue
            if op == "LOAD_METHOD":
                out.append(f"LOAD_ATTR NULL|self + {arg}")
            elif op == "RETURN_VALUE" and out and out[-1] == "LOAD_CONST NoneType:None":
                out[-1] = "RETURN_CONST NoneType:None"
            elif op == "FOR_ITER":
                out.append(tok)
            elif op == "JUMP_BACKWARD":
                out += [tok, "END_FOR"]
            else:
                out.append(tok)
        return out

    data = ur.to_json()
    data["python_version"] = version
    for c in data["pr"]["code"]:
        c["disassembly"] = convert(c["disassembly"])
        c["code_sha256"] = hashlib.sha256(("3.12" + c["code_sha256"]).encode()).hexdigest()
    return UnifiedRepresentation.from_json(data)


@pytest.fixture(scope="module")
def resnet():
    return make_ur("resnet", RESNET, "resnet", resnet_spec())


@pytest.fixture(scope="module")
def gpt():
    return make_ur("gpt", GPT, "model", gpt_spec())


@pytest.fixture(scope="module")
def resnet_se():
    return make_ur(None, resnet_se_source(), "resnet", resnet_spec(se=True, classes=10))


# -- JSON -----------------------------------------------------------------------------------------------
def test_json_round_trip_is_identity_and_text_is_stable(resnet):
    data = resnet.to_json()
    again = UnifiedRepresentation.from_json(json.loads(json.dumps(data)))
    assert again == resnet
    assert again.dumps() == resnet.dumps()
    assert UnifiedRepresentation.loads(resnet.dumps()) == resnet
    assert [c["function_id"] for c in data["pr"]["code"]] == sorted(c["function_id"] for c in data["pr"]["code"])
    assert data["schema"] == 1


def test_json_text_does_not_depend_on_input_order(resnet):
    shuffled = UnifiedRepresentation(resnet.python_version, resnet.mr,
                                     ProgramRepresentation(list(reversed(resnet.pr.code)), list(reversed(resnet.pr.classes))),
                                     dict(reversed(list(resnet.phi.items()))), resnet.name, resnet.provenance)
    assert shuffled.dumps() == resnet.dumps()


def test_json_refuses_unknown_schema(resnet):
    data = resnet.to_json()
    data["schema"] = 2
    with pytest.raises(ValueError, match="schema 2"):
        UnifiedRepresentation.from_json(data)


# -- similarity -----------------------------------------------------------------------------------------
def test_self_similarity_is_exactly_one(resnet, gpt):
    for ur in (resnet, gpt):
        mr, pr, score, details = compare(ur, ur)
        assert (mr, pr, score) == (1.0, 1.0, 1.0)
        assert details["pr.exact"] == len(ur.pr.code)


def test_graph_similarity():
    a = make_mr(resnet_spec(), "m")
    b = make_mr(resnet_spec(), "m")
    hist = similarity.spectrum_histogram
    assert similarity.spectral_similarity(hist(a), hist(b)) == 1.0
    assert similarity.spectral_similarity(hist(a), hist(make_mr(resnet_spec(se=True), "m"))) < 1.0
    assert similarity.spectral_similarity(hist(a), hist(make_mr(gpt_spec(), "m"))) < 0.9


def test_canonical_tokens_bridge_versions():
    v311 = ["LOAD_GLOBAL NULL + range", "LOAD_CONST int:3", "PRECALL 1", "CALL 1", "LOAD_FAST self",
            "LOAD_METHOD sum", "PRECALL 0", "CALL 0", "BINARY_OP +=", "LOAD_CONST NoneType:None", "RETURN_VALUE"]
    v310 = ["LOAD_GLOBAL range", "LOAD_CONST int:3", "CALL_FUNCTION 1 positional argument", "LOAD_FAST self",
            "LOAD_METHOD sum", "CALL_METHOD 0 positional arguments", "INPLACE_ADD", "LOAD_CONST NoneType:None",
            "RETURN_VALUE"]
    v313 = ["LOAD_GLOBAL NULL + range", "LOAD_CONST int:3", "CALL 1 positional", "LOAD_FAST self",
            "LOAD_ATTR NULL|self + sum", "CALL 0 positional", "BINARY_OP +=", "RETURN_CONST NoneType:None"]
    c = similarity.canonical_tokens
    assert c(v311) == c(v310) == c(v313)
    assert c(["LOAD_FAST_LOAD_FAST a, b"]) == ["LOAD_FAST a", "LOAD_FAST b"]


# -- attribution ----------------------------------------------------------------------------------------
def test_derivative_attributes_to_its_base(resnet, gpt, resnet_se):
    result = attribute(resnet_se, [gpt, resnet])
    assert result.winner == "resnet"
    assert [s.base for s in result.scores] == ["resnet", "gpt"]
    assert [s.rank for s in result.scores] == [1, 2]
    assert result.margin > 0.3
    assert result.scores[0].candidate and not result.scores[1].candidate  # no byte-identical code with gpt
    assert not result.cross_version


def test_delta_and_removed(resnet, resnet_se):
    omega, delta, removed, score = pr_matching(resnet_se, resnet)
    se_code = sorted(c.function_id for c in resnet_se.pr.code if c.qualname.startswith("SELayer"))
    assert delta == se_code  # exactly the added class: body, __init__, forward
    assert removed == sorted(c.function_id for c in resnet.pr.code if c.qualname.startswith("load_checkpoint"))
    changed = [m for m in omega if m.target.startswith("resnet:BasicBlock.")]
    assert {m.target.split("(")[0] for m in changed} == {"resnet:BasicBlock.__init__", "resnet:BasicBlock.forward"}
    assert all(0.5 <= m.similarity < 1.0 and not m.exact for m in changed)
    # Code below the inserted class moved down: same code, other first line, so matched but not "exact".
    moved = [m for m in omega if m.target.startswith("resnet:ResNet.forward")]
    assert moved and moved[0].similarity == 1.0 and not moved[0].exact and moved[0].target != moved[0].base
    assert 0 < score < 1
    # The result of attribute() carries the same matching for the winner.
    result = attribute(resnet_se, [resnet])
    assert (result.delta, result.removed) == (delta, removed)


def test_obfuscated_copy_still_attributes(resnet, gpt):
    rename = {"BasicBlock": OBFUSCATION["BasicBlock"], "ResNet": OBFUSCATION["ResNet"]}
    target = make_ur(None, obfuscate(RESNET), "x9", resnet_spec(), rename=rename)
    assert not {c.function_id for c in target.pr.code} & {c.function_id for c in resnet.pr.code}
    result = attribute(target, [gpt, resnet])
    assert result.winner == "resnet"
    assert result.margin > 0.3
    # Renamed, not rewritten: nearly every code object finds its original.
    assert len(result.omega) >= len(resnet.pr.code) - 1
    assert result.scores[0].mr == 1.0  # custom layer classes compared alike, framework ones by key


def test_cross_version_copy_still_attributes(resnet, gpt):
    target = as_other_version(resnet)
    result = attribute(target, [gpt, resnet])
    assert result.winner == "resnet" and result.cross_version
    assert all(s.candidate and s.exact_matches == 0 for s in result.scores)
    assert any("3.12" in note for note in result.notes)
    top = result.scores[0]
    assert top.pr > 0.9 and top.mr == 1.0
    assert len(result.omega) == len(resnet.pr.code) and not result.delta


def test_cross_version_derivative(resnet, gpt, resnet_se):
    result = attribute(as_other_version(resnet_se), [gpt, resnet])
    assert result.winner == "resnet"
    assert set(result.delta) == {c.function_id for c in resnet_se.pr.code if c.qualname.startswith("SELayer")}


def test_determinism_and_library_order(resnet, gpt, resnet_se):
    obfuscated = make_ur("resnet-obf", obfuscate(RESNET), "x9", resnet_spec())
    library = [gpt, resnet, obfuscated]
    first = attribute(resnet_se, library)
    assert attribute(resnet_se, library) == first
    assert attribute(resnet_se, list(reversed(library))) == first
    assert [s.base for s in first.scores][0] == "resnet"


def test_similarity_matrix(resnet, gpt, resnet_se):
    rows, cols, matrix = similarity_matrix([resnet_se, gpt], [resnet, gpt])
    assert rows == ["target0", "gpt"] and cols == ["resnet", "gpt"]
    assert matrix[1][1] == 1.0
    assert matrix[0][0] > matrix[0][1] and matrix[1][1] > matrix[1][0]


def test_library_of_one_and_empty_library(resnet, resnet_se):
    result = attribute(resnet_se, [resnet])
    assert result.winner == "resnet" and result.margin == result.scores[0].ur
    empty = attribute(resnet_se, [])
    assert empty.winner is None and empty.scores == []


def test_plain_python_target_uses_pr_alone(resnet):
    plain = UnifiedRepresentation(resnet.python_version, None, resnet.pr, {}, "plain")
    result = attribute(plain, [resnet])
    assert result.scores[0].mr is None and result.scores[0].ur == result.scores[0].pr == 1.0


def test_without_shared_code_every_base_is_a_candidate(resnet, gpt):
    result = attribute(gpt, [resnet])
    assert result.best == "resnet" and result.scores[0].candidate and result.scores[0].exact_matches == 0
    assert any("every base is a candidate" in note for note in result.notes)
    assert result.winner is None and not result.matched  # low UR: no base matches


# -- open set (issue 11) ----------------------------------------------------------------------------------
def test_a_model_whose_base_is_not_in_the_library_is_unmatched(resnet, gpt, resnet_se):
    with_base = attribute(resnet_se, [gpt, resnet])
    assert with_base.winner == with_base.best == "resnet" and with_base.matched
    assert with_base.scores[0].evidence >= MATCH_THRESHOLD
    without = attribute(resnet_se, [gpt])  # the library omits its base
    assert without.winner is None and not without.matched and without.best == "gpt"
    assert without.scores[0].evidence < MATCH_THRESHOLD and without.threshold == MATCH_THRESHOLD
    (note,) = [n for n in without.notes if n.startswith("no base in the library matches")]
    assert f"best: gpt, UR {without.scores[0].ur:.3f}" in note
    assert f"weaker {without.scores[0].evidence:.3f} < threshold {MATCH_THRESHOLD}" in note
    # the best base's matching is still there for whoever wants to look, and every base keeps its row
    assert [s.base for s in without.scores] == ["gpt"] and without.scores[0].rank == 1
    assert len(without.omega) + len(without.delta) == len(resnet_se.pr.code)


def test_the_threshold_decides_and_is_inclusive(resnet, resnet_se):
    score = attribute(resnet_se, [resnet]).scores[0].evidence
    assert attribute(resnet_se, [resnet], threshold=score).winner == "resnet"
    above = attribute(resnet_se, [resnet], threshold=min(1.0, score + 1e-9))
    assert above.winner is None and above.best == "resnet"
    assert attribute(resnet, [resnet], threshold=1.0).winner == "resnet"  # a base against itself: UR 1.0
    assert attribute(resnet_se, [resnet], threshold=0.0).matched


def test_an_empty_program_matches_nothing(resnet, gpt):
    stray = UnifiedRepresentation("3.11", make_mr([("", "GELUActivation", [])], "transformers.activations"),
                                  ProgramRepresentation([], []), {}, "stray")
    result = attribute(stray, [resnet, gpt])
    assert not result.matched and result.scores[0].ur < 0.1


def test_both_views_must_agree():
    """The weaker view decides: shared code without the architecture (a sibling base of one package),
    or the architecture without the code (a related package), is not a match."""
    from volatility3_zen.zenlib.analysis.attribution import BaseScore

    sibling = BaseScore("mobilenetv2", mr=0.475, pr=0.750, ur=0.612, rank=1, candidate=True, exact_matches=40)
    related = BaseScore("yolov5", mr=0.804, pr=0.131, ur=0.467, rank=1, candidate=True, exact_matches=3)
    plain = BaseScore("micrograd", mr=None, pr=0.555, ur=0.555, rank=1, candidate=True, exact_matches=0)
    assert sibling.evidence == 0.475 < MATCH_THRESHOLD and related.evidence == 0.131 < MATCH_THRESHOLD
    assert plain.evidence == 0.555 >= MATCH_THRESHOLD


def test_the_threshold_is_documented_with_its_provenance():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "attribution.md").read_text()
    assert f"`MATCH_THRESHOLD` = **{MATCH_THRESHOLD}**" in doc
    assert "false-accept rate" in doc and "false-reject rate" in doc


def test_empty_programs_and_empty_code(resnet):
    empty = UnifiedRepresentation("3.11", None, ProgramRepresentation([], []), {}, "empty")
    assert compare(empty, empty)[1] == 1.0
    assert compare(empty, resnet)[1] == 0.0 and compare(resnet, empty)[1] == 0.0
    bare = [dataclasses.replace(c, disassembly=[]) for c in resnet.pr.code]
    bare_ur = UnifiedRepresentation("3.12", None, ProgramRepresentation(bare, []), {}, "bare")
    omega, delta, removed, score = pr_matching(bare_ur, resnet)
    assert 0.0 < score < 1.0 and len(omega) + len(delta) == len(bare)


def test_candidate_bound_loses_no_pair(resnet, gpt, resnet_se):
    vocabulary = similarity.Vocabulary()
    target = similarity.prepare_program(as_other_version(resnet_se), vocabulary)
    both = UnifiedRepresentation("3.11", None, ProgramRepresentation(resnet.pr.code + gpt.pr.code, []), {})
    base = similarity.prepare_program(both, vocabulary)
    scorer = similarity.PairScorer(target, base)
    full = scorer.score_matrix(range(len(target)), range(len(base)))
    for threshold in (0.2, 0.4, similarity.MIN_MATCH, 0.8):
        found = scorer.candidate_pairs(range(len(target)), range(len(base)), threshold)
        expected = [(i, j) for i in range(len(target)) for j in range(len(base)) if full[i, j] >= threshold]
        assert [(i, j) for i, j, _ in found] == expected
        assert all(s == full[i, j] for i, j, s in found)


def test_attribution_json(resnet, gpt, resnet_se):
    from volatility3_zen.zenlib.analysis.attribution import to_json
    data = to_json(attribute(resnet_se, [gpt, resnet]))
    text = json.dumps(data, sort_keys=True)
    assert json.loads(text) == data and data["schema"] == 2 and data["winner"] == "resnet"
    assert data["best"] == "resnet" and data["matched"] is True and data["threshold"] == MATCH_THRESHOLD
    assert [s["base"] for s in data["scores"]] == ["resnet", "gpt"]
    unmatched = to_json(attribute(resnet_se, [gpt]))
    assert unmatched["winner"] is None and unmatched["best"] == "gpt" and unmatched["matched"] is False

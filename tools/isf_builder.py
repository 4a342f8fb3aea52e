"""DWARF -> Volatility ISF, shared by the table generators (``gen_cpython_isf.py``, ``gen_torch_isf.py``).

A generator names the structs it wants ("roots"); ``IsfBuilder`` renders them, and what they embed,
from the DWARF of a ``-g`` build into ISF ``user_types``/``base_types``/``enums`` as
``volatility3_zen.zenlib.readers.isf`` reads them.  The DWARF is indexed by C names (``CDwarf``: tags
and typedefs, every type at compile-unit level) or C++ qualified names (``CxxDwarf``).  The output is
written deterministically (sorted keys, no timestamps), so that regenerating from the same input
gives the same bytes, which the test suite checks.  See docs/symbols.md.
"""

import argparse
import dataclasses
import hashlib
import json
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from elftools.elf.elffile import ELFFile

ISF_FORMAT = "6.2.0"
LINE_WIDTH = 110
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def symbols_dir(kind: str) -> str:
    """Where the package ships the tables of ``kind`` ("cpython", "torch")."""
    return os.path.join(REPO_ROOT, "volatility3_zen", "symbols", kind)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# DWARF attributes
# --------------------------------------------------------------------------------------------------

AGGREGATES = {"DW_TAG_structure_type": "struct", "DW_TAG_class_type": "class", "DW_TAG_union_type": "union"}
QUALIFIERS = ("DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type", "DW_TAG_restrict_type",
              "DW_TAG_atomic_type")
REFERENCES = ("DW_TAG_reference_type", "DW_TAG_rvalue_reference_type")
REF_FORMS = ("DW_FORM_ref1", "DW_FORM_ref2", "DW_FORM_ref4", "DW_FORM_ref8", "DW_FORM_ref_udata")
BASE_KINDS = {0x02: ("bool", False), 0x04: ("float", True), 0x05: ("int", True), 0x06: ("char", True),
              0x07: ("int", False), 0x08: ("char", False), 0x10: ("int", False)}


def die_name(die) -> Optional[str]:
    attr = die.attributes.get("DW_AT_name")
    return attr.value.decode() if attr else None


def ref_offset(die, attr_name: str) -> int:
    """Absolute .debug_info offset a reference attribute points to (without parsing the target)."""
    attr = die.attributes[attr_name]
    return attr.value + die.cu.cu_offset if attr.form in REF_FORMS else attr.value


def attr_int(die, attr_name: str, default: Optional[int] = None) -> Optional[int]:
    attr = die.attributes.get(attr_name)
    return attr.value if attr is not None and isinstance(attr.value, int) else default


def array_counts(die) -> List[int]:
    """Element counts of each dimension (a flexible ``[]`` member has count 0)."""
    counts = []
    for sub in die.iter_children():
        if sub.tag == "DW_TAG_subrange_type":
            if "DW_AT_count" in sub.attributes:
                counts.append(attr_int(sub, "DW_AT_count"))
            else:
                upper = attr_int(sub, "DW_AT_upper_bound")
                counts.append(0 if upper is None else upper + 1)
    return counts


def member_location(die) -> int:
    attr = die.attributes.get("DW_AT_data_member_location")
    if attr is None:
        return 0
    if isinstance(attr.value, int):
        return attr.value
    # DWARF 2 style location expression: DW_OP_plus_uconst <uleb128>
    value, shift = 0, 0
    for byte in attr.value[1:]:
        value |= (byte & 0x7F) << shift
        shift += 7
    return value


def bit_layout(member, unit_size: int) -> Tuple[int, int, int]:
    """(byte offset of the storage unit, bit position in it, bit length) of a bitfield member."""
    length = attr_int(member, "DW_AT_bit_size")
    if "DW_AT_data_bit_offset" in member.attributes:
        bit = attr_int(member, "DW_AT_data_bit_offset")
    else:  # DWARF 2/3: bit_offset counts from the most significant bit of the storage unit
        size = attr_int(member, "DW_AT_byte_size", unit_size)
        bit = member_location(member) * 8 + size * 8 - attr_int(member, "DW_AT_bit_offset") - length
    unit = (bit // (unit_size * 8)) * unit_size
    if bit + length > (unit + unit_size) * 8:  # straddles a storage unit: address it bytewise
        unit = bit // 8
    return unit, bit - unit * 8, length


def is_static_member(die) -> bool:
    """DWARF 4 describes a C++ static data member as a member declaration (DWARF 5 uses DW_TAG_variable)."""
    return "DW_AT_external" in die.attributes or "DW_AT_declaration" in die.attributes


# --------------------------------------------------------------------------------------------------
# Type definitions by name
# --------------------------------------------------------------------------------------------------

class DwarfTypes:
    """What the builder asks of an index: a type's name, its definition, and a root by name."""

    def name_of(self, die) -> Optional[str]:
        """The name a type goes by (a typedef's for an unnamed type), or None."""
        raise NotImplementedError

    def definition_of(self, declaration):
        """The complete type a declaration (``struct X;``) stands for, or the declaration itself."""
        raise NotImplementedError

    def aggregate(self, name: str):
        """The complete struct/class/union called ``name``; SystemExit if the DWARF has none."""
        raise NotImplementedError

    def strip(self, die):
        """Follow typedefs and qualifiers; resolve a declaration to its definition."""
        while die.tag in QUALIFIERS and "DW_AT_type" in die.attributes:
            die = die.get_DIE_from_attribute("DW_AT_type")
        if "DW_AT_declaration" in die.attributes:
            die = self.definition_of(die)
        return die


class CDwarf(DwarfTypes):
    """C types: complete definitions, typedefs and variables by name, first compile unit wins.

    C emits every type at compile-unit level, once per unit that uses it; declarations
    (``struct _ts;``) are resolved to a complete definition from any unit by tag.
    """

    def __init__(self, elf: ELFFile):
        self.aggregates: Dict[str, object] = {}  # tag -> complete struct/union DIE
        self.typedefs: Dict[str, object] = {}  # typedef name -> typedef DIE
        self.enums: Dict[str, object] = {}  # tag or typedef name -> enumeration DIE
        self.variables: Dict[str, List[object]] = {}
        self.typedef_of: Dict[int, str] = {}  # offset of a typedef's target -> typedef name
        for cu in elf.get_dwarf_info().iter_CUs():
            for die in cu.get_top_DIE().iter_children():
                self._add(die)

    def _add(self, die) -> None:
        name = die_name(die)
        if die.tag == "DW_TAG_variable":
            if "DW_AT_specification" in die.attributes:
                name = die_name(die.get_DIE_from_attribute("DW_AT_specification"))
            if name:
                self.variables.setdefault(name, []).append(die)
        elif name is None or "DW_AT_declaration" in die.attributes:
            return
        elif die.tag in AGGREGATES:
            self.aggregates.setdefault(name, die)
        elif die.tag == "DW_TAG_enumeration_type":
            self.enums.setdefault(name, die)
        elif die.tag == "DW_TAG_typedef" and "DW_AT_type" in die.attributes:
            self.typedefs.setdefault(name, die)
            self.typedef_of.setdefault(ref_offset(die, "DW_AT_type"), name)

    def name_of(self, die) -> Optional[str]:
        return die_name(die) or self.typedef_of.get(die.offset)

    def definition_of(self, declaration):
        if declaration.tag in AGGREGATES:
            return self.aggregates.get(die_name(declaration), declaration)
        return declaration

    def aggregate(self, name: str):
        die = self.named_type(name)
        if die is None or die.tag not in AGGREGATES:
            raise SystemExit(f"struct {name} not found in the DWARF")
        return die

    def named_type(self, name: str):
        """The struct/union/enum called ``name`` (typedef first, then tag), or None."""
        if name in self.typedefs:
            die = self.strip(self.typedefs[name])
            if die.tag in AGGREGATES or die.tag == "DW_TAG_enumeration_type":
                return die
        return self.aggregates.get(name) or self.enums.get(name)

    def variable_type(self, name: str):
        """Type DIE of a global variable, from its definition or declaration."""
        for die in self.variables.get(name, ()):
            for holder in (die, die.get_DIE_from_attribute("DW_AT_specification")
                           if "DW_AT_specification" in die.attributes else None):
                if holder is not None and "DW_AT_type" in holder.attributes:
                    return holder.get_DIE_from_attribute("DW_AT_type")
        return None


class CxxDwarf(DwarfTypes):
    """C++ types and variables by qualified name (``c10::impl::PyObjectSlot``,
    ``std::optional<c10::Device>``; GCC names template instances with their arguments).

    Names are built from the enclosing namespaces and classes.  A DIE with DW_AT_specification (an
    out-of-line definition) takes the name and scope of the declaration it completes.  A declaration
    (``struct X;``) is resolved to the definition of the same name.  ``where`` says, in the message
    for a missing definition, which DWARF this is.
    """

    SCOPES = ("DW_TAG_namespace",) + tuple(AGGREGATES)

    def __init__(self, elf: ELFFile, where: str = "the DWARF"):
        self.where = where
        self.names: Dict[int, str] = {}  # DIE offset -> qualified name
        self.definitions: Dict[str, object] = {}  # qualified name -> complete struct/class/union/enum DIE
        self.variables: Dict[str, List[object]] = {}
        self.typedef_of: Dict[int, str] = {}  # offset of an unnamed type -> the typedef naming it
        completions = []
        for cu in elf.get_dwarf_info().iter_CUs():
            completions += self._walk(cu.get_top_DIE(), "")
        for die in completions:  # their declarations have been named by now
            name = self.names.get(die.get_DIE_from_attribute("DW_AT_specification").offset)
            if name is not None:
                self._add(die, name)
                if die.tag in self.SCOPES:
                    self._walk(die, name)

    def _walk(self, scope, prefix: str) -> List[object]:
        completions = []
        for die in scope.iter_children():
            if "DW_AT_specification" in die.attributes:
                completions.append(die)
                continue
            name = die_name(die)
            if name is None:
                if die.tag == "DW_TAG_namespace":
                    name = "(anonymous namespace)"
                else:
                    continue
            qualified = f"{prefix}::{name}" if prefix else name
            self._add(die, qualified)
            if die.tag in self.SCOPES:
                completions += self._walk(die, qualified)
        return completions

    def _add(self, die, qualified: str) -> None:
        self.names[die.offset] = qualified
        if die.tag == "DW_TAG_variable":
            self.variables.setdefault(qualified, []).append(die)
        elif die.tag == "DW_TAG_typedef" and "DW_AT_type" in die.attributes:
            target = die.get_DIE_from_attribute("DW_AT_type")
            if die_name(target) is None:
                self.typedef_of.setdefault(target.offset, qualified)
        elif (die.tag in AGGREGATES or die.tag == "DW_TAG_enumeration_type") \
                and "DW_AT_declaration" not in die.attributes:
            self.definitions.setdefault(qualified, die)

    def name_of(self, die) -> Optional[str]:
        return self.names.get(die.offset) or self.typedef_of.get(die.offset)

    def definition_of(self, declaration):
        if declaration.offset in self.names:
            return self.definitions.get(self.names[declaration.offset], declaration)
        return declaration

    def aggregate(self, name: str):
        return self.definition(name, tuple(AGGREGATES))

    def definition(self, name: str, tags: Sequence[str]):
        die = self.definitions.get(name)
        if die is None or die.tag not in tags:
            raise SystemExit(f"{name} is not defined in {self.where}")
        return die

    def constant_array(self, name: str) -> List[int]:
        """The DW_AT_const_value bytes of a constexpr array of bytes (a header-only table)."""
        for die in self.variables.get(name, ()):
            value = die.attributes.get("DW_AT_const_value")
            if value is not None and isinstance(value.value, list):
                return list(value.value)
        raise SystemExit(f"{name} has no constant value in {self.where}")


# --------------------------------------------------------------------------------------------------
# DWARF types -> ISF
# --------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class MemberContext:
    """Where a type is used: names anonymous types and lets a generator decide what a nested struct is."""

    parent: object  # the DIE of the struct holding the member
    parent_name: str
    member: str
    last_line: int  # the declaration line of the parent's last member (C: the end of its definition)

    @property
    def anonymous_name(self) -> str:
        return f"{self.parent_name}__{self.member}"


class IsfBuilder:
    """Renders the roots, and the types they embed, into ISF user_types/base_types/enums.

    Naming: the roots keep the names they are asked by; other types the name the index gives them,
    else ``<Parent>__<member>`` (anonymous types).  A struct embedded by value is described field by
    field when ``wants_fields`` says so (always, unless a generator narrows it), else it is an opaque
    stub (size, no fields).  Pointers lead only to roots; any other pointed-to struct becomes
    ``void``, so every name the file references is defined in it.

    C++: a base class becomes an anonymous field ``base_class_N`` at its offset, so that Volatility
    (and the zen loader) reach inherited members directly, as C++ does; the vtable pointer is the
    artificial ``_vptr.<Class>`` member GCC emits; a reference member is a pointer; static members
    are left out.  Anonymous members (C and C++) are ``unnamed_field_N``, marked anonymous.  A
    bitfield declared ``bool`` is given ``unsigned char`` storage, because ISF bitfields are read as
    integers.
    """

    def __init__(self, index: DwarfTypes, roots: Sequence[str]):
        self.index = index
        self.user_types: Dict[str, dict] = {}
        self.base_types: Dict[str, dict] = {
            "void": {"kind": "void", "size": 0, "signed": False, "endian": "little"},
            "pointer": {"kind": "int", "size": 8, "signed": False, "endian": "little"},
        }
        self.enums: Dict[str, dict] = {}
        self.root_dies = {root: index.aggregate(root) for root in roots}
        # Any copy of a root (another compile unit's, a typedef's) is recognised by the name it goes by.
        self.root_by_name = {index.name_of(die): root for root, die in self.root_dies.items() if index.name_of(die)}

    def build(self) -> None:
        for root, die in sorted(self.root_dies.items()):
            self.add_aggregate(die, root, expand=True)

    # naming ------------------------------------------------------------------------------------

    def root_name(self, die) -> Optional[str]:
        return self.root_by_name.get(self.index.name_of(die))

    def type_name(self, die, anonymous_name: str) -> str:
        return self.root_name(die) or self.index.name_of(die) or anonymous_name

    # aggregates --------------------------------------------------------------------------------

    def add_aggregate(self, die, name: str, expand: bool) -> None:
        """Describe a struct once; a stub is upgraded when a later use needs the fields."""
        size = attr_int(die, "DW_AT_byte_size", 0)
        previous = self.user_types.get(name)
        if previous is not None and previous["size"] != size:
            raise SystemExit(f"two different types are named {name} ({previous['size']} and {size} bytes)")
        if previous is not None and (previous["fields"] or not expand):
            return
        self.user_types[name] = {"kind": AGGREGATES[die.tag], "size": size, "fields": {}}
        if expand:
            self.user_types[name]["fields"] = self.fields(die, name)

    def fields(self, die, name: str) -> Dict[str, dict]:
        fields: Dict[str, dict] = {}
        bases = unnamed = 0
        members = [m for m in die.iter_children() if m.tag == "DW_TAG_member"]
        last_line = max((attr_int(m, "DW_AT_decl_line", 0) for m in members), default=0)
        for member in die.iter_children():
            if member.tag == "DW_TAG_inheritance":
                field_name, bases = f"base_class_{bases}", bases + 1
                field = {"offset": member_location(member), "anonymous": True}
            elif member.tag == "DW_TAG_member" and not is_static_member(member):
                field_name = die_name(member)
                field = {"offset": member_location(member)}
                if field_name is None:
                    field_name, unnamed = f"unnamed_field_{unnamed}", unnamed + 1
                    field["anonymous"] = True
            else:
                continue
            context = MemberContext(die, name, field_name, last_line)
            if "DW_AT_bit_size" in member.attributes:
                field["offset"], field["type"] = self.bitfield(member, context)
            else:
                field["type"] = self.describe(member.get_DIE_from_attribute("DW_AT_type"), context)
            fields[field_name] = field
        return fields

    def bitfield(self, member, context: MemberContext) -> Tuple[int, dict]:
        storage = self.index.strip(member.get_DIE_from_attribute("DW_AT_type"))
        unit, position, length = bit_layout(member, attr_int(storage, "DW_AT_byte_size"))
        encoding = attr_int(storage, "DW_AT_encoding")
        if storage.tag == "DW_TAG_base_type" and BASE_KINDS.get(encoding, ("int",))[0] == "bool":
            described = {"kind": "base", "name": self.base_named("unsigned char", 1, signed=False)}
        else:
            described = self.describe(storage, context)
        return unit, {"kind": "bitfield", "bit_position": position, "bit_length": length, "type": described}

    def wants_fields(self, die, context: MemberContext) -> bool:
        """Whether a struct embedded by value is described field by field (else a stub)."""
        return True

    # type descriptors --------------------------------------------------------------------------

    def describe(self, die, context: MemberContext) -> dict:
        die = self.index.strip(die)
        if die.tag == "DW_TAG_base_type":
            return self.base(die)
        if die.tag == "DW_TAG_pointer_type" or die.tag in REFERENCES:
            return {"kind": "pointer", "subtype": self.pointee(die, context)}
        if die.tag == "DW_TAG_array_type":
            described = self.describe(die.get_DIE_from_attribute("DW_AT_type"), context)
            for count in reversed(array_counts(die)):
                described = {"kind": "array", "count": count, "subtype": described}
            return described
        if die.tag == "DW_TAG_enumeration_type":
            return {"kind": "enum", "name": self.add_enum(die, context.anonymous_name)}
        if die.tag == "DW_TAG_subroutine_type":
            return {"kind": "function"}
        if die.tag in AGGREGATES:
            name = self.type_name(die, context.anonymous_name)
            self.add_aggregate(die, name, expand=self.wants_fields(die, context))
            return {"kind": AGGREGATES[die.tag], "name": name}
        if die.tag in QUALIFIERS:  # a typedef or qualifier of void
            return {"kind": "base", "name": "void"}
        raise SystemExit(f"unsupported DWARF type {die.tag} in {context.parent_name}.{context.member}")

    def pointee(self, pointer, context: MemberContext) -> dict:
        if "DW_AT_type" not in pointer.attributes:
            return {"kind": "base", "name": "void"}
        target = self.index.strip(pointer.get_DIE_from_attribute("DW_AT_type"))
        if target.tag in AGGREGATES:
            root = self.root_name(target)
            return {"kind": AGGREGATES[target.tag], "name": root} if root else {"kind": "base", "name": "void"}
        return self.describe(target, context)

    def base(self, die) -> dict:
        name = die_name(die)
        kind, signed = BASE_KINDS.get(attr_int(die, "DW_AT_encoding"), ("int", False))
        self.base_types[name] = {"kind": kind, "size": attr_int(die, "DW_AT_byte_size"), "signed": signed,
                                 "endian": "little"}
        return {"kind": "base", "name": name}

    def base_named(self, name: str, size: int, signed: bool) -> str:
        self.base_types.setdefault(name, {"kind": "int", "size": size, "signed": signed, "endian": "little"})
        return name

    def add_enum(self, die, anonymous_name: str) -> str:
        """Export an enum whole, under the name it goes by (else ``anonymous_name``); returns that name."""
        name = self.index.name_of(die) or anonymous_name
        constants = {die_name(e): attr_int(e, "DW_AT_const_value") for e in die.iter_children()
                     if e.tag == "DW_TAG_enumerator"}
        size = attr_int(die, "DW_AT_byte_size")
        if "DW_AT_type" in die.attributes:
            base = self.base(self.index.strip(die.get_DIE_from_attribute("DW_AT_type")))["name"]
        else:
            signed = min(constants.values(), default=0) < 0
            base = self.base_named("int" if signed else "unsigned int", size, signed)
        self.enums[name] = {"size": size, "base": base, "constants": constants}
        return name


def isf_document(builder: IsfBuilder, producer: dict, enums: Optional[Dict[str, dict]] = None,
                 symbols: Optional[Dict[str, dict]] = None, linux: Optional[dict] = None) -> dict:
    """The ISF file: what ``builder`` rendered (``enums`` in place of its own when given), ``symbols``
    and the metadata (``producer``: the generator and what it read; ``linux``: the ELF it read)."""
    metadata = {"format": ISF_FORMAT, "producer": producer}
    if linux is not None:
        metadata["linux"] = linux
    return {"metadata": metadata, "base_types": builder.base_types, "user_types": builder.user_types,
            "enums": builder.enums if enums is None else enums, "symbols": symbols or {}}


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

def format_json(value, indent: int = 0) -> str:
    """JSON with sorted keys where anything short stays on one line (one ISF field per line, opcode
    tables as wrapped rows): small, diff-friendly and byte-reproducible."""
    compact = json.dumps(value, sort_keys=True)
    if not isinstance(value, (dict, list)) or len(compact) + indent <= LINE_WIDTH:
        return compact
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(key)}: {format_json(value[key], indent + 1)}" for key in sorted(value)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if all(not isinstance(item, (dict, list)) for item in value):
        rows, row = [], []
        for item in map(json.dumps, value):
            if row and len(inner) + len(", ".join(row + [item])) + 1 > LINE_WIDTH:
                rows.append(", ".join(row))
                row = []
            row.append(item)
        rows.append(", ".join(row))
        return "[\n" + ",\n".join(inner + r for r in rows) + "\n" + pad + "]"
    return "[\n" + ",\n".join(inner + format_json(item, indent + 1) for item in value) + "\n" + pad + "]"


def write_json(path: str, obj: dict) -> None:
    with open(path + ".tmp", "w") as fh:
        fh.write(format_json(obj) + "\n")
    os.replace(path + ".tmp", path)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

Generate = Callable[[argparse.Namespace, argparse.ArgumentParser], Iterable[Tuple[str, str]]]


def run_cli(doc: str, kind: str, argv: Optional[Sequence[str]],
            add_arguments: Callable[[argparse.ArgumentParser], None], generate: Generate) -> int:
    """A generator's command line: its own arguments, ``--out`` (default: the package's symbols/<kind>),
    then ``generate(args, parser)``: it may check the arguments (``parser.error``) before it returns, and
    writes the tables as the (label, path) of each are taken from what it returns."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--out", default=symbols_dir(kind),
                        help=f"output folder (default: the package's symbols/{kind})")
    args = parser.parse_args(argv)
    outputs = generate(args, parser)
    os.makedirs(args.out, exist_ok=True)
    for label, path in outputs:
        print(f"{label + ': ' if label else ''}{path} ({os.path.getsize(path)} bytes)")
    return 0

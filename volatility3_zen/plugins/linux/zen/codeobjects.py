"""linux.zen.codeobjects: the Python code objects of every CPython process, with original bytecode.

The Integrity column says per code object whether its bytes are consistent ("ok"), or the first
things that are not, such as an unknown opcode, an index outside co_consts, a jump outside the code or
a line table that does not cover it (``zenlib/readers/cpython/integrity.py``, docs/code-objects.md):
smeared or tampered memory can give a code object that reads without an error but is not what
CPython compiled.
"""

import json
import logging
import re
from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from volatility3_zen.zenlib.readers.cpython import export, integrity
from volatility3_zen.zenlib.readers.cpython.layouts import minor_version
from volatility3_zen.zenlib.readers.cpython.code_index import CodeEntry, index_code_objects
from volatility3_zen.zenlib.vol import session

vollog = logging.getLogger(__name__)


class CodeObjects(interfaces.plugins.PluginInterface):
    """Recovers every Python function / code object of each CPython 3.7-3.13 process (original bytecode)."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return session.common_requirements() + [
            requirements.StringRequirement(name="module", description="Only code whose module matches this regex", optional=True),
            requirements.BooleanRequirement(name="user-only", description="Only user code (not stdlib or site-packages)", default=False, optional=True),
            requirements.BooleanRequirement(name="dump", description="Write a marshal file per code object and a JSON index", default=False, optional=True),
            requirements.BooleanRequirement(name="decompile", description="Decompiled source (or disassembly where no decompiler supports the version)", default=False, optional=True),
        ]

    def _generator(self) -> Iterator[Tuple[int, tuple]]:
        if self.config.get("dump"):
            session.check_output_dir(self)
        module_filter = None
        if self.config.get("module"):
            try:
                module_filter = re.compile(self.config["module"])
            except re.error as exc:
                session.fail(f"--module {self.config['module']!r} is not a regular expression ({exc})")
        user_only = self.config.get("user-only")
        for _target, program in session.programs(self.context, self.config, self._progress_callback):
            everything = list(index_code_objects(program))
            entries = [
                e for e in everything
                if (not user_only or e.user_code) and (module_filter is None or module_filter.search(e.module or ""))
            ]
            if not entries:  # an empty result says why
                vollog.warning("PID %d: %s", program.pid, "no code object recovered" if not everything else
                               f"none of its {len(everything)} code objects matches "
                               + " and ".join(f for f in (module_filter and f"--module {module_filter.pattern}",
                                                          user_only and "--user-only") if f))
            sources = {}  # code address -> source text, shared by the dump and the Source column
            problems = integrity.problems((e.code for e in entries), minor_version(program.interpreter.version))
            if problems:
                vollog.warning("PID %d: %d of %d code objects are inconsistent (see the Integrity column)",
                               program.pid, len(problems), len(entries))
            if self.config.get("dump"):
                self._dump(program, entries, sources, problems)
            for e in entries:
                yield 0, self._row(program, e, sources, problems)

    def _row(self, program, e: CodeEntry, sources, problems) -> tuple:
        row = (
            program.pid,
            program.process,
            program.interpreter.version,
            e.module or renderers.NotAvailableValue(),
            e.qualname,
            e.code.filename,
            e.code.firstlineno,
            e.code.argcount,
            e.code.nlocals,
            len(e.code.code),
            e.sha256,
            e.kind,
            e.user_code,
            format_hints.Hex(e.code.address),
            e.function_id,
            e.code_qualname,
            integrity.summary(problems.get(e.code.address, ())),
        )
        if self.config.get("decompile"):
            if e.code.address not in sources:
                sources[e.code.address] = export.source_text(program, e.code)
            row += (sources[e.code.address],)
        return row

    def _dump(self, program, entries: List[CodeEntry], sources, problems) -> None:
        index = export.dump_code_objects(program, entries, self.open, sources)
        for entry in index["code_objects"]:
            entry["integrity"] = problems.get(entry["address"], [])
        with self.open(f"codeobjects-{program.pid}.json") as fh:
            fh.write(json.dumps(index, indent=1, sort_keys=True).encode())

    def run(self) -> renderers.TreeGrid:
        columns = [
            ("PID", int), ("Process", str), ("Python", str), ("Module", str), ("Qualname", str), ("File", str),
            ("Line", int), ("Args", int), ("Locals", int), ("Bytecode", int), ("SHA256", str), ("Kind", str),
            ("User", bool), ("Code", format_hints.Hex), ("FunctionID", str), ("CodeQualname", str), ("Integrity", str),
        ]
        if self.config.get("decompile"):
            columns.append(("Source", str))
        return renderers.TreeGrid(columns, self._generator())

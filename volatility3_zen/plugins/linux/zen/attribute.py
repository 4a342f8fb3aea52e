"""linux.zen.attribute: which open-source base model each recovered model was derived from.

Every model root becomes a unified representation (UR = MR, PR, phi) and is scored against every
fingerprint of the base model library (docs/attribution.md).  The top-ranked base is the winner only
when its UR reaches the calibrated match threshold; below it the rank-1 row says that no base of the
library matches.  Models come first by the parameters they hold; stray roots (single modules without
parameters) only with ``--all-roots``.  ``--bml-add NAME`` instead stores the model's UR as a new base
fingerprint.
"""

import json
import logging
from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from volatility3_zen.zenlib.analysis import attribution
from volatility3_zen.zenlib.analysis.library import BaseModelLibrary, LibraryError
from volatility3_zen.zenlib.vol import session

vollog = logging.getLogger(__name__)


class Attribute(interfaces.plugins.PluginInterface):
    """Attributes every model of the image to the base models of a library (or adds one to it)."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return session.model_requirements() + [
            requirements.StringRequirement(name="bml-add", optional=True,
                                           description="Store the model's fingerprint in the library under this name instead of attributing it (needs exactly one model; use --pid/--root)"),
            requirements.StringRequirement(name="bml-source", optional=True,
                                           description="With --bml-add: what the base was deployed from, recorded in the fingerprint (e.g. 'yolov5==7.0.14, yolov5s.yaml')"),
            requirements.BooleanRequirement(name="replace", default=False, optional=True, description="With --bml-add: replace an existing fingerprint"),
            requirements.BooleanRequirement(name="dump", default=False, optional=True,
                                            description="Write each model's UR (<pid>-<root>.ur.json) and attribution (<pid>-<root>.attribution.json)"),
            requirements.BooleanRequirement(name="source", default=False, optional=True,
                                            description="Put decompiled source in the URs where a decompiler supports the version (slower)"),
        ]

    def _add(self) -> Iterator[Tuple[int, tuple]]:
        name = self.config["bml-add"]
        found = list(session.models(self.context, self.config, self.config.get("root"), bool(self.config.get("source"))))
        if len(found) != 1:
            described = ", ".join(f"PID {f.target.pid} root 0x{f.root:x} ({f.ur.provenance.get('root_class')})" for f in found)
            session.fail(f"--bml-add needs exactly one model, the image has {len(found)}: {described}; choose one with --pid and --root")
        target, ur = found[0].target, found[0].ur
        ur.provenance["image"] = session.image_name(self.context)
        if self.config.get("bml-source"):
            ur.provenance["source"] = self.config["bml-source"]
        try:
            path = BaseModelLibrary(self.config.get("bml")).add(name, ur, replace=bool(self.config.get("replace")))
        except LibraryError as exc:
            session.fail(str(exc))
        yield 0, (name, target.pid, format_hints.Hex(found[0].root), ur.provenance.get("root_class", ""),
                  len(ur.mr.layers) if ur.mr else 0, len(ur.pr.code), len(ur.pr.classes), str(path))

    def _attribute(self) -> Iterator[Tuple[int, tuple]]:
        if self.config.get("dump"):
            session.check_output_dir(self)
        for found, result, _bases in session.attributed_models(self.context, self.config, bool(self.config.get("source"))):
            target, ur, root = found.target, found.ur, found.root
            if self.config.get("dump"):
                stem = f"pid{target.pid}-{root:x}"
                self._write(f"{stem}.ur.json", ur.dumps())
                self._write(f"{stem}.attribution.json", json.dumps(attribution.to_json(result), indent=1, sort_keys=True))
            if not result.matched and result.best is not None:
                vollog.warning("PID %d root 0x%x (%s): %s", target.pid, root, ur.provenance.get("root_class", ""),
                               attribution.no_match_text(result.best, result.scores[0], result.threshold))
            for score in result.scores:
                winner = score.base == result.winner
                yield 0, (target.pid, target.name, format_hints.Hex(root), ur.provenance.get("root_class", ""),
                          score.base, session.score_cell(score.mr), session.score_cell(score.pr), session.score_cell(score.ur), score.rank, score.candidate,
                          score.exact_matches, winner, _verdict(result, score), round(result.margin, 6),
                          len(result.omega) if winner else renderers.NotApplicableValue(),
                          len(result.delta) if winner else renderers.NotApplicableValue(),
                          len(result.removed) if winner else renderers.NotApplicableValue())

    def _write(self, name: str, text: str) -> None:
        with self.open(name) as handle:
            handle.write(text.encode())

    def run(self) -> renderers.TreeGrid:
        if self.config.get("bml-add"):
            columns = [("Name", str), ("PID", int), ("Root", format_hints.Hex), ("RootClass", str), ("Layers", int),
                       ("CodeObjects", int), ("Classes", int), ("Path", str)]
            return renderers.TreeGrid(columns, self._add())
        columns = [("PID", int), ("Process", str), ("Root", format_hints.Hex), ("RootClass", str), ("Base", str),
                   ("MR", float), ("PR", float), ("UR", float), ("Rank", int), ("Candidate", bool), ("ExactMatches", int),
                   ("Winner", bool), ("Verdict", str), ("Margin", float), ("Matched", int), ("Added", int), ("Removed", int)]
        return renderers.TreeGrid(columns, self._attribute())


def _verdict(result: attribution.Attribution, score: attribution.BaseScore) -> str:
    """On the rank-1 row: "match", or "no match" when the weaker of its MR and PR is below the threshold
    (no base of the library matches, open set); empty on the others."""
    if score.rank != 1:
        return ""
    return "match" if result.matched else f"no match (min(MR, PR) < {result.threshold})"

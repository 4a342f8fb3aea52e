"""linux.zen.patchgen: what each recovered model changed relative to its base, and a patch bundle.

Every model root is attributed to the base model library (as ``linux.zen.attribute`` does), then
diffed against the winning base (``analysis.diff``): one row per changed, added or removed code
object, added or removed class, and changed layer.  ``--dump`` writes one self-describing zip per
model root: the changed and added code as marshal files of the image's Python version, the added
classes, the weights, the model description, the execution context, the diff and the attribution;
and next to it a forensic HTML report (``zenlib/bundle/report.py``) (docs/patchgen.md).  Both record the
run's chain of custody (``zenlib/vol/provenance.py``): the image's sha256 (hashed once per run, when the
first file is written), size and name, the analysis times, the tool versions and the command line.  A model that
no base of the library matches (its best UR is below the match threshold) gets one ``unmatched`` row
and a warning, and neither a diff nor a bundle.
"""

import logging
from typing import Iterator, List, Tuple

from volatility3.framework import interfaces, renderers
from volatility3.framework.configuration import requirements
from volatility3.framework.renderers import format_hints

from volatility3_zen.zenlib.analysis import attribution, diff
from volatility3_zen.zenlib.bundle import collect, report, signing, write
from volatility3_zen.zenlib.errors import ZenError
from volatility3_zen.zenlib.vol import provenance, session

vollog = logging.getLogger(__name__)


class PatchGen(interfaces.plugins.PluginInterface):
    """Diffs every model of the image against the base it was derived from; writes patch bundles."""

    _required_framework_version = (2, 0, 0)
    _version = (1, 0, 0)

    @classmethod
    def get_requirements(cls) -> List[interfaces.configuration.RequirementInterface]:
        return session.model_requirements() + [
            requirements.BooleanRequirement(name="dump", default=False, optional=True,
                                            description="Write one patch bundle and one HTML report per model root (pid<PID>-<root>.zenpatch.zip, .report.html)"),
            requirements.StringRequirement(name="sign_key", optional=True,
                                           description="ed25519 private key (PEM) that signs the bundles (default: the key "
                                                       f"made by '{signing.KEYS_COMMAND} generate', if there is one)"),
        ]

    def _generator(self) -> Iterator[Tuple[int, tuple]]:
        if self.config.get("dump"):
            session.check_output_dir(self)
            self._signing_key = _signing_key(self.config.get("sign_key"))
            # The chain of custody of what --dump writes; the image is hashed when the first file is.
            self._recorder = provenance.RunRecorder(self.context, self._progress_callback)
        for found, result, bases in session.attributed_models(self.context, self.config):
            pid, root, ur = found.target.pid, found.root, found.ur
            if not result.matched:
                yield 0, _unmatched_row(found, result)
                continue
            base = bases[result.winner]
            model_diff = diff.diff_models(ur, base, (result.omega, result.delta, result.removed))
            for warning in model_diff.warnings:
                vollog.warning("PID %d root 0x%x: %s", pid, root, warning)
            if self.config.get("dump"):
                self._dump(found, base, result, model_diff)
            head = (pid, format_hints.Hex(root), ur.provenance.get("root_class", ""), result.winner,
                    session.score_cell(result.scores[0].ur))
            for row in _rows(model_diff):
                yield 0, head + row

    def _dump(self, found: session.FoundModel, base, result, model_diff: diff.ModelDiff) -> None:
        """The bundle (from the process the session opened) and the report (from representations only)."""
        bundle, notes, context = None, [], None
        try:
            contents = collect.collect(found, base, model_diff)
        except ZenError as exc:
            vollog.warning("PID %d: no patch bundle (%s)", found.target.pid, exc)
            notes.append(f"no patch bundle: {exc}")
            run = self._recorder.provenance()
        else:
            model_diff = model_diff.with_class_attributes(contents.class_attributes)
            context = contents.context
            run = self._recorder.provenance()  # "finished": everything of this root has been read
            bundle = write.build(contents, found.ur, base, result, model_diff, provenance=run)
            for warning in bundle.warnings:
                vollog.warning("PID %d: %s", found.target.pid, warning)
            notes += bundle.warnings
            if self._signing_key is not None:
                signing.sign(bundle.members, self._signing_key)  # signature.json: the manifest is unchanged
            with self.open(bundle.name) as handle:
                bundle.write(handle)
        text = report.render_html(found.ur, base, result, model_diff, image=session.image_name(self.context) or None,
                                  bundle=bundle.name if bundle is not None else None, warnings=notes, context=context,
                                  provenance=run)
        with self.open(report.report_name(found.target.pid, found.root)) as handle:
            handle.write(text.encode("utf-8"))

    def run(self) -> renderers.TreeGrid:
        columns = [("PID", int), ("Root", format_hints.Hex), ("RootClass", str), ("Base", str), ("UR", float),
                   ("Kind", str), ("ClassKey", str), ("Function", str), ("Size", int), ("Similarity", float),
                   ("Layer", str), ("Detail", str)]
        return renderers.TreeGrid(columns, self._generator())


def _signing_key(path):
    """The key --dump signs with, read before the analysis (a bad --sign-key is one line and exit 1);
    None, with one warning, when there is none."""
    try:
        key = signing.signing_key(path)
    except signing.SigningError as exc:
        session.fail(f"--sign-key: {exc}" if path else f"the signing key: {exc}")
    if key is None:
        vollog.warning("no signing key: the bundles are written unsigned, and reuse refuses them without "
                       f"--allow-unsigned (make a key once: {signing.KEYS_COMMAND} generate)")
    return key


def _unmatched_row(found: session.FoundModel, result: attribution.Attribution) -> tuple:
    """No base of the library matches: nothing to diff against, so no diff and no bundle; one row says so."""
    none = renderers.NotApplicableValue()
    text = (attribution.no_match_text(result.best, result.scores[0], result.threshold) if result.best
            else "the library is empty")
    vollog.warning("PID %d root 0x%x: %s: no diff and no patch bundle", found.target.pid, found.root, text)
    ur = result.scores[0].ur if result.scores else None
    return (found.target.pid, format_hints.Hex(found.root), found.ur.provenance.get("root_class", ""), "",
            session.score_cell(ur), "unmatched", "", "", 0, none, "", text)


def _rows(model_diff: diff.ModelDiff) -> Iterator[tuple]:
    """(Kind, ClassKey ("Class" is a Python keyword, which Volatility's rows cannot be named), Function, Size, Similarity, Layer, Detail) of every difference; one "identical"
    row when there is none, so that every model root shows."""
    none = renderers.NotApplicableValue()
    for c in model_diff.changes:
        detail = ",".join(c.fields) if c.fields else (f"with {c.pulled_in_by}" if c.pulled_in_by else "")
        yield (c.kind, c.class_key or "", c.function_id or c.base_function_id, c.size, session.score_cell(c.similarity), "", detail)
    for cls in model_diff.added_classes:
        yield ("class-added", cls.key, "", len(cls.methods), none, "", ",".join(cls.bases))
    for key in model_diff.removed_classes:
        yield ("class-removed", key, "", 0, none, "", "")
    for key, base_key in sorted(model_diff.renamed_classes.items()):
        yield ("class-renamed", key, "", 0, none, "", f"from {base_key}")
    for change in model_diff.class_changes:
        parts = [f"{sign}{what} {','.join(names)}" for sign, what, names in (
            ("+", "bases", change.bases_added), ("-", "bases", change.bases_removed),
            ("+", "methods", change.methods_added), ("-", "methods", change.methods_removed)) if names]
        yield ("class-changed", change.key, "", 0, none, "", "; ".join(parts))
    for layer in model_diff.layer_changes:
        moved = layer.kind == "changed" and layer.base_path != layer.path
        detail = ",".join(layer.fields) + (f" (base {layer.base_path or '(root)'})" if moved else "")
        yield (f"layer-{layer.kind}", layer.class_key or layer.base_class_key or "", "", layer.elements, none,
               layer.path or "(root)", detail)
    for fid in model_diff.skipped:  # smeared memory: code on one side that could not be compared
        yield ("unreadable", "", fid, 0, none, "", "not compared (see the warnings)")
    if model_diff.empty:
        yield ("identical", "", "", 0, none, "", "in what could be read" if model_diff.skipped else "")

"""Chain of custody (issue 17, item 6): the bundle's manifest and the HTML report record the image's
sha256, size and name, the analysis times, the tool, Volatility and Python versions and the command
line (zenlib/vol/provenance.py -> bundle/contents.RunProvenance -> bundle/write.py, bundle/report.py).

Everything else stays deterministic: two runs differ only in the manifest's ``provenance`` and the
report's "Chain of custody" section (checked here on hand-built representations with two different
provenances; tests/test_bundle_write.py and tests/test_report.py compare whole bytes where no
provenance is given).  The image test reads the patchgen --dump run that tests/test_report.py reads
too (the ``patchgen_dump`` fixture of conftest.py).
"""

import hashlib
import json
import platform
import re
import shlex
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from test_bundle_write import _build, _contents, analysed  # noqa: F401 - analysed is a fixture
from test_report import Page
from volatility3_zen import __version__
from volatility3_zen.zenlib.bundle import format as bundle_format
from volatility3_zen.zenlib.bundle import report
from volatility3_zen.zenlib.bundle import write as bundle_write
from volatility3_zen.zenlib.bundle.contents import RunProvenance
from volatility3_zen.zenlib.vol import provenance

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
RUN = RunProvenance(image_name="dump.lime", image_size=3 << 30, image_sha256="ab" * 32, started="2024-05-01T13:00:00Z",
                    finished="2024-05-01T13:02:11Z", tool_version="0.1.0", volatility_version="2.28.2",
                    python_version="3.11.9", command_line=["vol", "-f", "/cases/a b/dump.lime", "linux.zen.patchgen", "--dump"])


# -- hashing and the recorder (no image) ------------------------------------------------------------------
def test_image_is_hashed_streaming_in_large_chunks(tmp_path):
    path = tmp_path / "image.bin"
    data = bytes(range(256)) * (provenance.HASH_CHUNK // 256) + b"tail"  # one chunk and a bit more
    path.write_bytes(data)
    seen = []
    size, sha256, changed = provenance.hash_file(str(path), lambda pct, text: seen.append(pct))
    assert (size, sha256, changed) == (len(data), hashlib.sha256(data).hexdigest(), False)
    assert len(seen) == 2 and seen[-1] == 100.0


class _Config(dict):
    pass


class _Context:
    def __init__(self, location):
        self.config = _Config({"automagic.LayerStacker.single_location": location} if location else {})
        self.layers = {}


def test_recorder_hashes_once_and_finishes_per_call(tmp_path, monkeypatch):
    path = tmp_path / "my image.core"  # a space: quoted in the URL, plain in the name
    path.write_bytes(b"core" * 1000)
    calls = []
    real = provenance.hash_file
    monkeypatch.setattr(provenance, "hash_file", lambda *a, **k: calls.append(a) or real(*a, **k))
    recorder = provenance.RunRecorder(_Context(path.as_uri()), argv=["vol", "-f", str(path)])
    first, second = recorder.provenance(), recorder.provenance()
    assert len(calls) == 1  # once per run, however many bundles and reports
    assert first.image_name == "my image.core" and first.image_size == 4000
    assert first.image_sha256 == hashlib.sha256(b"core" * 1000).hexdigest()
    assert first.command_line == ["vol", "-f", str(path)] and not first.notes
    assert first.started == second.started and ISO_UTC.match(first.finished) and first.finished <= second.finished
    assert (first.tool_version, first.python_version) == (__version__, platform.python_version())


def test_an_image_that_cannot_be_hashed_says_why(tmp_path):
    unreadable = provenance.RunRecorder(_Context((tmp_path / "gone.lime").as_uri()), argv=[]).provenance()
    assert unreadable.image_name == "gone.lime" and unreadable.image_sha256 is None
    assert unreadable.notes and unreadable.notes[0].startswith("not hashed:")
    remote = provenance.RunRecorder(_Context("http://example.invalid/x.lime"), argv=[]).provenance()
    assert remote.image_name == "x.lime" and remote.image_sha256 is None and "not a local file" in remote.notes[0]
    unknown = provenance.RunRecorder(_Context(None), argv=[]).provenance()
    assert unknown.image_name == "" and unknown.notes


# -- only the provenance differs between runs (hand-built representations) --------------------------------
def test_bundles_of_two_runs_differ_only_in_the_provenance(analysed):  # noqa: F811
    target, base, result, model_diff = analysed
    recorded = model_diff.with_class_attributes(_contents(model_diff).class_attributes)
    later = replace(RUN, started="2024-06-01T09:00:00Z", finished="2024-06-01T09:01:00Z", command_line=["vol", "other"])
    one, two = (bundle_write.build(_contents(model_diff), target, base, result, recorded, provenance=p) for p in (RUN, later))
    assert {n for n in one.members if one.members[n] != two.members[n]} == {"manifest.json"}
    manifests = [json.loads(b.members["manifest.json"]) for b in (one, two)]
    assert manifests[0]["provenance"] == RUN.to_json() and manifests[1]["provenance"] == later.to_json()
    assert [{k: v for k, v in m.items() if k != "provenance"} for m in manifests] == [
        {k: v for k, v in manifests[0].items() if k != "provenance"}] * 2
    assert json.loads(_build(analysed, _contents(model_diff)).members["manifest.json"])["provenance"] is None


def _without_custody(page: str) -> str:
    start = page.index('<section id="provenance">')
    return page[:start] + page[page.index("</section>", start):]


def test_reports_of_two_runs_differ_only_in_the_chain_of_custody(analysed):  # noqa: F811
    target, base, result, model_diff = analysed
    later = replace(RUN, finished="2024-06-01T09:01:00Z", image_sha256="cd" * 32)
    pages = [report.render_html(target, base, result, model_diff, image="dump.lime", provenance=p) for p in (RUN, later)]
    assert pages[0] != pages[1] and _without_custody(pages[0]) == _without_custody(pages[1])
    text = Page(pages[0]).text
    for needle in ("ab" * 32, "3,221,225,472 bytes", "dump.lime", "2024-05-01T13:00:00Z", "2024-05-01T13:02:11Z",
                   "2.28.2", "3.11.9", shlex.join(RUN.command_line)):
        assert needle in text, needle
    bare = report.render_html(target, base, result, model_diff, image="dump.lime")
    assert "Not recorded" in Page(bare).text


# -- linux.zen.patchgen --dump on corpus cores -------------------------------------------------------------
# A small plain-Python core (23 MB) and a torch core of 700 MB, which is announced before it is hashed.
@pytest.mark.image
@pytest.mark.parametrize("deployment", ("micrograd-derivative-3.12", "llama2-torchonly-3.11"))
def test_patchgen_records_the_chain_of_custody(deployment, patchgen_dump):
    run = patchgen_dump(deployment)
    data = run.core.read_bytes()
    sha256, size = hashlib.sha256(data).hexdigest(), len(data)
    del data
    members = bundle_format.read_members(run.out / bundle_write.bundle_name(run.pid, run.root))
    assert bundle_format.verify(members) == []
    recorded = json.loads(members["manifest.json"])["provenance"]
    assert recorded["image"] == {"name": run.core.name, "size": size, "sha256": sha256}
    started, finished = recorded["analysis"]["started"], recorded["analysis"]["finished"]
    assert ISO_UTC.match(started) and ISO_UTC.match(finished) and started <= finished
    assert finished <= datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    import volatility3.framework.constants as volatility_constants
    assert recorded["versions"] == {"volatility3_zen": __version__, "volatility3": volatility_constants.PACKAGE_VERSION,
                                    "python": platform.python_version()}  # the tests run vol with this interpreter
    assert recorded["command_line"][1:] == run.argv[1:] and recorded["command_line"][0].endswith("vol")
    assert recorded["notes"] == []
    page = Page((run.out / report.report_name(run.pid, run.root)).read_bytes().decode("utf-8"))
    custody = page.raw[page.raw.index('<section id="provenance">'):]
    custody = Page(custody[:custody.index("</section>") + len("</section>")]).text
    for needle in (run.core.name, f"{size:,} bytes", sha256, started, finished, __version__,
                   volatility_constants.PACKAGE_VERSION, shlex.join(recorded["command_line"])):
        assert needle in custody, needle
    announced = [line for line in run.stderr.splitlines() if "hashing the image" in line]
    assert len(announced) == (1 if size >= provenance.ANNOUNCE_SIZE else 0), run.stderr[-2000:]

from __future__ import annotations
import json, struct
from functools import partial
import pytest
from sqlalchemy import select
from dicom_node.db.models import Job, Study
from tests.conftest import start_node
from tests.support.hostile import StudyCase, ct_datasets, _edit, _each, _set, _raw_in_all, store_all
from tests.support.node import NodeConfig, status_code
from tests.support.run_jobs import complete_and_run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
eight = partial(ct_datasets, n_slices=8)

def same_position(datasets):
    for ds in datasets:
        ds.ImagePositionPatient = [0, 0, 0]

PROBES = [
    ("IOP zeros", _each(_set(ImageOrientationPatient=[0, 0, 0, 0, 0, 0]))),
    ("IOP parallel", _each(_set(ImageOrientationPatient=[1, 0, 0, 1, 0, 0]))),
    ("PixelSpacing zero", _each(_set(PixelSpacing=[0, 0]))),
    ("PixelSpacing negative", _each(_set(PixelSpacing=[-1, -1]))),
    ("SliceThickness abc", _raw_in_all({"SliceThickness": "abc"})),
    ("RescaleSlope zero", _each(_set(RescaleSlope=0))),
    ("all same position", same_position),
    ("BitsAllocated 8", _each(_set(BitsAllocated=8, BitsStored=8, HighBit=7))),
    ("BitsAllocated 32", _each(_set(BitsAllocated=32))),
    ("PixelRepresentation 5", _raw_in_all({"PixelRepresentation": struct.pack("<H", 5)})),
    ("PhotometricInterpretation RGB", _each(_set(PhotometricInterpretation="RGB"))),
    ("Rows 0", _each(_set(Rows=0))),
    ("InstanceNumber abc", _raw_in_all({"InstanceNumber": "abc"})),
    ("PixelSpacing huge", _each(_set(PixelSpacing=[1e30, 1e30]))),
    ("IPP huge", _each(lambda ds: setattr(ds, "ImagePositionPatient", [1e300, 1e300, float(ds.InstanceNumber) * 1e300]))),
]
CASES = [StudyCase("probe", f"probe/{label}", "dead", _edit(eight, change)) for label, change in PROBES]

def test_probe(tmp_path):
    running, stop = start_node(NodeConfig(workdir=tmp_path / "node", job_max_attempts=3))
    try:
        for i, case in enumerate(CASES):
            folder = tmp_path / f"s{i}"; folder.mkdir(); paths = []
            for k, data in enumerate(case.files()):
                p = folder / f"{k}.dcm"; p.write_bytes(data); paths.append(p)
            print(case.name, {status_code(s) for s in store_all(running.port, paths)})
        complete_and_run(running)
        with running.sessions() as s:
            rows = {u: (j.state, j.attempts, j.last_error or j.reason or j.warnings) for u, j in s.execute(select(Study.study_instance_uid, Job).join(Job, Job.study_id == Study.id)).all()}
        for case in CASES:
            print("OUT", case.name, rows.get(case.study_instance_uid))
    finally:
        stop()

"""Which records of a .pt2 archive would run code in torch.export.load (see trt_runtime/pt2check.py)."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import pytest
import torch

from trt_runtime.pt2check import pickled_weights, unsafe_records


class WithConstant(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)
        self.register_buffer("scale", torch.ones(3))

    def forward(self, x):
        return self.linear(x) * self.scale + torch.arange(3.0)


@pytest.fixture(scope="module")
def program() -> bytes:
    ep = torch.export.export(WithConstant(), (torch.randn(2, 3),))
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    return buffer.getvalue()


def _edit(archive: bytes, change) -> bytes:
    """A copy of ``archive`` where ``change(name, data)`` returns new data, or None to drop the record;
    ``change("+", prefix)`` may return extra (name, data) records."""
    src = zipfile.ZipFile(io.BytesIO(archive))
    prefix = src.namelist()[0].split("/")[0]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = change(info.filename[len(prefix) + 1:], src.read(info))
            if data is not None:
                dst.writestr(info, data)
        for name, data in change("+", prefix) or []:
            dst.writestr(f"{prefix}/{name}", data)
    return out.getvalue()


def _mark_pickled(name, data):
    if name.endswith("_weights_config.json"):
        config = json.loads(data)
        for meta in config["config"].values():
            meta["use_pickle"] = True
        return json.dumps(config).encode()
    return None if name == "+" else data


def test_a_plain_exported_program_runs_no_code(program):
    assert unsafe_records(io.BytesIO(program)) == []
    assert pickled_weights(io.BytesIO(program)) == []


def test_weights_marked_use_pickle_are_reported(program):
    found = unsafe_records(io.BytesIO(_edit(program, _mark_pickled)))
    assert any("(linear.weight) is stored as pickle" in r for r in found)
    assert len(pickled_weights(io.BytesIO(_edit(program, _mark_pickled)))) == 3  # weight, bias, buffer


@pytest.mark.parametrize("extra, expect", [
    ("data/constants/opaque_obj_0", "pickled opaque object"),
    ("data/aotinductor/model/model.so", "native AOTInductor"),
    ("data/weights/model.pt", "unexpected record"),
    ("serialized_state_dict.pt", "unexpected record"),
])
def test_records_that_run_code_or_are_unknown_are_reported(program, extra, expect):
    archive = _edit(program, lambda name, data: [(extra, b"\x80\x04N.")] if name == "+" else data)
    assert any(expect in r for r in unsafe_records(io.BytesIO(archive)))


def test_sample_inputs_the_restricted_unpickler_refuses_are_reported(program, tmp_path):
    hostile = io.BytesIO()
    torch.save({"x": pickle.loads(pickle.dumps(zipfile.ZipInfo("x")))}, hostile)  # not weights_only-loadable

    def swap(name, data):
        return None if name == "+" else hostile.getvalue() if name.startswith("data/sample_inputs/") else data

    assert any("sample inputs" in r for r in unsafe_records(io.BytesIO(_edit(program, swap))))


def test_legacy_or_broken_archives_are_reported(program):
    no_format = _edit(program, lambda name, data: None if name in ("+", "archive_format") else data)
    assert any("archive_format" in r for r in unsafe_records(io.BytesIO(no_format)))
    assert unsafe_records(io.BytesIO(b"not a zip"))[0].startswith("not a zip archive")
    bad_config = _edit(program, lambda name, data: b"{" if name.endswith("_weights_config.json") else
                       None if name == "+" else data)
    assert any("unreadable payload config" in r for r in unsafe_records(io.BytesIO(bad_config)))

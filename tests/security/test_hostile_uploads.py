"""Hostile uploads through the real API (uvicorn, Celery worker over Redis, Postgres, SeaweedFS S3).

Every sample of tests/hostile_corpus.py (pickle scanner bypasses, torch zips with malicious
data.pkl, .pt2 hiding a pickle, object arrays in .npy/.npz, zip bombs, lying safetensors headers,
NaN/Inf weights, ...) plus hostile ONNX graphs built here (external data escaping the upload,
custom-domain and unknown ops, giant declared shapes, a graph whose output would exhaust memory)
and malformed multipart bodies must end as a clear 4xx, or as a scan that is `failed` with a reason
or `succeeded` with verdict `rejected` and a load error. Every pickle payload would create a canary
file if it ever ran: the canary must not exist. The service must still answer afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from svc_helpers import upload, wait_scan
from svc_models import make_benign

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.hostile_corpus import CANARY_NAME, SAMPLES, write_corpus  # noqa: E402

FORMAT_ONLY = {"profile": "quick", "only": ["format"]}
# a full quick scan over hostile ONNX graphs: the executor runs them, so runtime limits are exercised
FULL_QUICK = {"profile": "quick", "only": ["format", "static", "dynamic.gradient_health"]}


# -- hostile ONNX graphs -----------------------------------------------------------------------
def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _onnx_model(nodes: list, initializers: list, out_shape: list, opsets: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [_vi("z", ["batch", 4])], [_vi("x", out_shape)], initializers)
    model = helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _linear(extra: list | None = None, opsets: list | None = None) -> onnx.ModelProto:
    """z (batch, 4) -> MatMul W -> [extra] -> Tanh -> x (batch, 6)."""
    w = numpy_helper.from_array(np.arange(24, dtype=np.float32).reshape(4, 6) / 24, "W")
    extra = extra or []
    last = extra[-1].output[0] if extra else "h"
    nodes = [helper.make_node("MatMul", ["z", "W"], ["h"]), *extra, helper.make_node("Tanh", [last], ["x"])]
    return _onnx_model(nodes, [w], ["batch", 6], opsets)


def _external_w(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "96")):
        w.external_data.add(key=key, value=value)
    return model


def _giant_declared() -> onnx.ModelProto:
    model = _linear()
    model.graph.value_info.append(_vi("h", [1 << 20, 1 << 20]))
    return model


def _memory_exhausting_output() -> onnx.ModelProto:
    """Tile (batch, 6) by (1, 2^31): 12 Gi elements, which no worker should try to allocate."""
    reps = numpy_helper.from_array(np.array([1, 1 << 31], np.int64), "reps")
    w = numpy_helper.from_array(np.ones((4, 6), np.float32), "W")
    nodes = [
        helper.make_node("MatMul", ["z", "W"], ["h"]),
        helper.make_node("Tile", ["h", "reps"], ["t"]),
        helper.make_node("Tanh", ["t"], ["x"]),
    ]
    return _onnx_model(nodes, [w, reps], ["batch", "wide"])


def _expand_bomb() -> onnx.ModelProto:
    """Expand (batch, 6) to (batch, 2^20, 2^20, 6) through a computed shape constant."""
    w = numpy_helper.from_array(np.ones((4, 6), np.float32), "W")
    shape = numpy_helper.from_array(np.array([1, 1 << 20, 1 << 20, 6], np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["z", "W"], ["h"]),
        helper.make_node("Expand", ["h", "shape"], ["e"]),
        helper.make_node("Tanh", ["e"], ["x"]),
    ]
    return _onnx_model(nodes, [w, shape], ["batch", "a", "b", 6])


ONNX_SAMPLES: dict[str, object] = {
    "onnx_external_traversal.onnx": lambda: _external_w(_linear(), "../../../../etc/passwd"),
    "onnx_external_absolute.onnx": lambda: _external_w(_linear(), "/etc/passwd"),
    "onnx_external_missing.onnx": lambda: _external_w(_linear(), "weights.bin"),
    "onnx_custom_domain.onnx": lambda: _linear(
        [helper.make_node("Exec", ["h"], ["c"], domain="com.evil")],
        [helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)],
    ),
    "onnx_unknown_op.onnx": lambda: _linear([helper.make_node("TotallyNotAnOp", ["h"], ["c"])]),
    "onnx_giant_declared_shape.onnx": _giant_declared,
    "onnx_tile_bomb.onnx": _memory_exhausting_output,
    "onnx_expand_bomb.onnx": _expand_bomb,
}


def _assert_refused(scan: dict, report: dict | None, name: str) -> None:
    """A scan over a hostile file ends failed with a reason, or with verdict rejected and a load error."""
    if scan["status"] == "failed":
        assert scan["error"] and "internal error" not in scan["error"], (name, scan["error"])
        return
    assert scan["status"] == "succeeded", (name, scan)
    assert scan["verdict"] in ("rejected", "inconclusive"), (name, scan["verdict"])
    assert report is not None
    if scan["verdict"] == "rejected":
        assert report.get("load_error"), (name, report.get("load_error"))
    else:  # a loadable ONNX whose execution trips a runtime limit: the checks that ran it error out
        errored = [c for c in report["checks"] if c["status"] == "error"]
        assert errored, (name, [(c["name"], c["status"]) for c in report["checks"]])


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def test_every_hostile_sample_is_refused_and_nothing_runs(prod_api, prod_worker, tenant_keys, hostile_dir) -> None:
    corpus = write_corpus(hostile_dir)
    for name, make in ONNX_SAMPLES.items():
        path = hostile_dir / name
        path.write_bytes(make().SerializeToString())  # type: ignore[operator]
        corpus[name] = (path, "invalid")
    assert len(corpus) == len(SAMPLES) + len(ONNX_SAMPLES) >= 55
    submitted: dict[str, str] = {}
    refused_at_upload: dict[str, int] = {}
    with prod_api.client(tenant_keys["alice"]) as alice:
        for name, (path, _expected) in corpus.items():
            config = FULL_QUICK if name in ONNX_SAMPLES else FORMAT_ONLY
            r = upload(alice, path, config=config)
            if r.status_code == 202:
                submitted[name] = r.json()["id"]
            else:
                assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
                assert r.json()["error"]["message"], (name, r.text)
                refused_at_upload[name] = r.status_code
        outcomes: dict[str, str] = {}
        for name, scan_id in submitted.items():
            scan = wait_scan(alice, scan_id, timeout_s=300)
            report = None
            if scan["status"] == "succeeded":
                r = alice.get(f"/v1/scans/{scan_id}/report")
                assert r.status_code == 200, (name, r.text)
                report = r.json()
            _assert_refused(scan, report, name)
            outcomes[name] = f"{scan['status']}/{scan['verdict']}"
            if SAMPLES.get(name) is not None and SAMPLES[name].expected == "rejected":
                assert scan["verdict"] == "rejected", (name, scan)
        print(f"{len(corpus)} hostile uploads: {len(refused_at_upload)} refused at upload, outcomes {outcomes}")
    assert not list(hostile_dir.rglob(CANARY_NAME)), "a pickle payload ran"
    assert not Path("/tmp", CANARY_NAME).exists()


def test_malformed_multipart_bodies_are_4xx(prod_api, tenant_keys) -> None:
    bodies: list[tuple[str, bytes]] = [
        ("multipart/form-data; boundary=xx", b"--xx\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--xx--\r\n"),
        ("multipart/form-data; boundary=xx", b'--xx\r\nContent-Disposition: form-data; name="model"\r\n\r\n'),
        ("multipart/form-data; boundary=xx", b"--yy\r\n\r\n--yy--"),
        ("multipart/form-data", b"--xx\r\n"),  # no boundary
        ("multipart/form-data; boundary=" + "b" * 300, b"--" + b"b" * 300 + b"\r\n"),
        ("multipart/form-data; boundary=xx", b"\x00\xff" * 2000),
        (
            "multipart/form-data; boundary=xx",
            b'--xx\r\nContent-Disposition: form-data; name="config"\r\n\r\n' + b"{" * 70_000 + b"\r\n--xx--\r\n",
        ),
        (
            "multipart/form-data; boundary=xx",
            b'--xx\r\nContent-Disposition: form-data; name="model"; filename="../../etc/passwd"\r\n\r\n'
            b'abc\r\n--xx\r\nContent-Disposition: form-data; name="config"\r\n\r\nnot json\r\n--xx--\r\n',
        ),
        ("text/plain", b"hello"),
    ]
    with prod_api.client(tenant_keys["bob"]) as bob:
        for content_type, body in bodies:
            r = bob.post("/v1/scans", content=body, headers={"content-type": content_type})
            assert 400 <= r.status_code < 500, (content_type[:60], body[:60], r.status_code, r.text[:300])
            assert r.json()["error"]["code"], r.text


def test_service_still_answers_after_the_corpus(prod_api, prod_worker, tenant_keys, tmp_path: Path) -> None:
    model = make_benign(tmp_path / "benign.safetensors")
    with prod_api.client(tenant_keys["alice"]) as alice:
        assert alice.get("/healthz").status_code == 200
        assert alice.get("/readyz").status_code == 200
        r = upload(alice, model, config={"profile": "quick", "only": ["format", "static.bias_outliers"]})
        assert r.status_code == 202, r.text
        scan = wait_scan(alice, r.json()["id"])
        assert scan["status"] == "succeeded" and scan["verdict"] == "clean", scan

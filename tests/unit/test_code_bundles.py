"""Code bundles: a user's model builder, validated at upload without importing it.

- ``unpack``: every bad archive is refused with the member at fault named, nothing left behind;
- the routes in process (``make_app``, ``FakeRay``): 201/401/422 answers and the runtime env a
  job gets;
- ``check_user_model``: a user's mistakes fail with the tail of their traceback.

The bundle trained and predicting on Ray is in ``tests/e2e/test_code_bundles_e2e.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from bundlekit import BROKEN, NETWORK, tar_bytes, zip_bytes
from fakeray import FakeRay
from fastapi.testclient import TestClient
from inprocess import LOCAL, TOKEN
from torch import nn

from service.files.code_bundles import BundleError, module_name, unpack
from workers.nets import apply_norm
from workers.usercode import UserCodeError, check_user_model

BAD_IDS = [
    "text",
    "empty",
    "absolute",
    "dotdot",
    "zip-link",
    "tar-link",
    "no-python",
    "syntax",
    "shadows-torch",
    "shadows-workers",
    "pip-options",
    "too-many-files",
    "too-large",
]


# -- unpack ------------------------------------------------------------------------------------
def _unpack(tmp_path: Path, data: bytes, **limits):
    archive = tmp_path / "bundle"
    archive.write_bytes(data)
    target = tmp_path / "unpacked"
    options = {"max_bytes": 1 << 20, "max_files": 50, **limits}
    return unpack(archive, target, **options), target


def test_unpack_finds_modules_packages_and_requirements(tmp_path: Path) -> None:
    data = zip_bytes(
        {
            "project-main/net.py": NETWORK,
            "project-main/pkg/__init__.py": "",
            "project-main/pkg/layers.py": "X = 1\n",
            "project-main/requirements.txt": "# deps\neinops==0.8.0\n\n",
            "project-main/README.md": "hello",
            "project-main/__pycache__/net.cpython-311.pyc": b"\x00",
            "__MACOSX/._net.py": b"\x00",
        }
    )
    info, target = _unpack(tmp_path, data)
    assert info.modules == ["net", "pkg", "pkg.layers"]  # the common folder is stripped
    assert info.requirements == ["einops==0.8.0"]
    assert info.files == 5
    assert (target / "net.py").read_text() == NETWORK
    assert not (target / "__pycache__").exists()


def test_unpack_takes_tar_gz(tmp_path: Path) -> None:
    info, target = _unpack(tmp_path, tar_bytes({"net.py": NETWORK}))
    assert info.modules == ["net"] and (target / "net.py").exists()


@pytest.mark.parametrize(
    ("data", "limits", "message"),
    [
        (b"just some text", {}, "not a .zip or .tar.gz archive"),
        (b"", {}, "not a .zip or .tar.gz archive"),
        (zip_bytes({"/etc/net.py": "x = 1"}), {}, "/etc/net.py: absolute paths"),
        (zip_bytes({"a/../../net.py": "x = 1"}), {}, "'..' is not allowed"),
        (zip_bytes({"net.py": "x = 1"}, links={"evil.py": "/etc/passwd"}), {}, "evil.py: links"),
        (tar_bytes({"net.py": "x = 1"}, ("evil.py", "/etc/passwd")), {}, "evil.py: links"),
        (zip_bytes({"README.md": "no code"}), {}, "no importable .py files"),
        (zip_bytes({"net.py": "def broken(:\n"}), {}, "net.py: line 1"),
        (zip_bytes({"torch.py": "x = 1"}), {}, "'torch' would shadow"),
        (zip_bytes({"workers/__init__.py": ""}), {}, "'workers' would shadow"),
        (zip_bytes({"net.py": "x = 1", "requirements.txt": "--index-url http://x\n"}), {}, "pip"),
        (zip_bytes({f"m{i}.py": "x = 1" for i in range(6)}), {"max_files": 5}, "6 files"),
        (zip_bytes({"net.py": "x = 1" * 100}), {"max_bytes": 100}, "500 bytes unpacked"),
    ],
    ids=BAD_IDS,
)
def test_bad_bundles_are_refused_and_leave_nothing(
    tmp_path: Path, data: bytes, limits: dict, message: str
) -> None:
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(".", r"\.")):
        _unpack(tmp_path, data, **limits)
    assert not (tmp_path / "unpacked").exists()


@pytest.mark.parametrize(
    ("path", "name"),
    [("net.py", "net"), ("pkg/__init__.py", "pkg"), ("pkg/mod.py", "pkg.mod"),
     ("my-net.py", None), ("data.csv", None), ("2net.py", None)],
)  # fmt: skip
def test_module_names(path: str, name: str | None) -> None:
    from pathlib import PurePosixPath

    assert module_name(PurePosixPath(path)) == name


# -- the routes, in process -------------------------------------------------------------------


def _client(make_app, home: Path, **settings) -> tuple[TestClient, FakeRay]:
    ray = FakeRay(cpus=2)
    app = make_app(home, ray, **settings)
    headers = {"Authorization": f"Bearer {TOKEN}"} if settings.get("api_token", TOKEN) else {}
    return TestClient(app, base_url=LOCAL, headers=headers), ray


def _upload(client: TestClient, data: bytes, name: str = "net.zip"):
    return client.post("/v1/code", files={"file": (name, data, "application/zip")})


def test_upload_list_and_a_job_gets_the_bundle_as_its_working_dir(tmp_path: Path, make_app) -> None:
    client, ray = _client(make_app, tmp_path)
    data = zip_bytes({"net.py": NETWORK, "requirements.txt": "einops\n"})
    response = _upload(client, data)
    assert response.status_code == 201, response.text
    bundle = response.json()
    assert bundle["id"].startswith("code-") and bundle["modules"] == ["net"]
    assert bundle["size_bytes"] == len(data) and bundle["requirements"] == ["einops"]
    assert [b["id"] for b in client.get("/v1/code").json()["bundles"]] == [bundle["id"]]
    assert client.get(f"/v1/code/{bundle['id']}").json() == bundle
    assert client.get("/v1/code/code-000000000000").status_code == 404

    spec = {"dataset": "digits", "code": bundle["id"], "model": "net:build_model", "epochs": 1}
    job = client.post("/v1/jobs", json=spec)
    assert job.status_code == 201, job.text
    client.app.state.services.scheduler.tick()
    submitted = ray.jobs[job.json()["id"]]
    assert submitted.runtime_env == {
        "working_dir": str(tmp_path.resolve() / "code" / bundle["id"]),
        "pip": ["einops"],
    }
    assert (tmp_path / "code" / bundle["id"] / "net.py").read_text() == NETWORK


def test_bad_uploads_are_4xx_naming_the_file_and_leave_nothing(tmp_path: Path, make_app) -> None:
    client, _ = _client(make_app, tmp_path, max_code_bytes=4096)
    cases = [
        (b"not an archive", 422, "not a .zip or .tar.gz"),
        (zip_bytes({"../net.py": "x = 1"}), 422, "../net.py"),
        (zip_bytes({"net.py": "def f(:\n"}), 422, "net.py: line 1"),
        (zip_bytes({"notes.txt": "none"}), 422, "no importable .py files"),
        (b"x" * 5000, 413, "larger than 4096 bytes"),
    ]
    for data, status, message in cases:
        response = _upload(client, data)
        assert response.status_code == status, response.text
        assert message in response.text
        if status == 422:
            assert response.json()["detail"][0]["loc"] == ["body", "file"]
    assert client.get("/v1/code").json()["bundles"] == []
    assert list((tmp_path / "code").iterdir()) == []


def test_jobs_naming_a_missing_bundle_or_module_are_422(tmp_path: Path, make_app) -> None:
    client, _ = _client(make_app, tmp_path)
    bundle = _upload(client, zip_bytes({"net.py": NETWORK})).json()["id"]
    cases = [
        ({"code": "code-000000000000", "model": "net:build_model"}, "code", "unknown code"),
        ({"code": bundle, "model": "other:build_model"}, "model", "has no module 'other'"),
        ({"model": "net:build_model"}, "model", "needs code"),
        ({"code": bundle, "model": "resnet"}, "model", "is built in"),
        ({"code": bundle, "model": "net"}, "model", "<module>:<function>"),
        ({"code": "../etc", "model": "net:build_model"}, "code", "id of an uploaded code"),
    ]
    for fields, field, message in cases:
        response = client.post("/v1/jobs", json={"dataset": "digits", **fields})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"][-1] == field and message in error["msg"], error


def test_uploads_need_the_token_on_loopback_too(tmp_path: Path, make_app) -> None:
    """There is always a token (made into $SYNCBN_HOME/api-token when none is set): a bundle
    runs on the cluster, so nobody without it uploads one, wherever the service listens."""
    data = zip_bytes({"net.py": NETWORK})
    anonymous, _ = _client(make_app, tmp_path / "a", host="127.0.0.1", api_token=None)
    refused = _upload(anonymous, data)
    assert refused.status_code == 401, refused.text
    token = (tmp_path / "a" / "api-token").read_text().strip()
    anonymous.headers["Authorization"] = f"Bearer {token}"
    assert _upload(anonymous, data).status_code == 201


# -- the user's mistakes, in the driver -------------------------------------------------------
def _check(tmp_path: Path, monkeypatch, source: str, entry: str = "usernet:build_model") -> None:
    package = tmp_path / "bundle"
    package.mkdir(exist_ok=True)
    (package / "usernet.py").write_text(source)
    monkeypatch.syspath_prepend(str(package))
    sys.modules.pop("usernet", None)
    x = np.random.default_rng(0).normal(size=(2, 8, 8)).astype(np.float32)
    check_user_model(entry, lambda m: apply_norm(m, "sync"), x, "classification", 10, ())


@pytest.mark.parametrize(
    ("source", "entry", "message"),
    [
        ("import not_a_module\n", "usernet:build_model", "importing 'usernet' failed"),
        ("x = 1\n", "usernet:build_model", "has no function 'build_model'"),
        (BROKEN, "usernet:build_model", "my builder cannot handle (8, 8)"),
        ("def build_model(s, n):\n    return 3\n", "usernet:build_model", "returned a int"),
        (
            "import torch\ndef build_model(s, n):\n    return torch.nn.Linear(3, n)\n",
            "usernet:build_model",
            "forward on a batch of shape (2, 8, 8) failed",
        ),
        (
            "import torch\ndef build_model(s, n):\n    return torch.nn.Flatten()\n",
            "usernet:build_model",
            "output (2, 64) does not fit the labels",
        ),
        (
            "import torch\nclass MyBN(torch.nn.BatchNorm1d):\n    pass\n"
            "def build_model(s, n):\n    return torch.nn.Sequential(torch.nn.Flatten(), "
            "torch.nn.Linear(64, n), MyBN(n))\n",
            "usernet:build_model",
            "cannot convert its BatchNorm layers: ",
        ),
    ],
    ids=[
        "import",
        "no-function",
        "raises",
        "not-a-module",
        "forward",
        "output-shape",
        "bn-subclass",
    ],
)
def test_user_mistakes_fail_with_their_traceback(tmp_path, monkeypatch, source, entry, message):
    with pytest.raises(UserCodeError) as caught:
        _check(tmp_path, monkeypatch, source, entry)
    text = str(caught.value)
    assert text.startswith(f"your code ({entry}):") and message in text
    if "raises" in text or "my builder" in text:
        assert "usernet.py" in text and "in helper" in text  # the user's own frames


def test_a_good_builder_passes_the_check(tmp_path, monkeypatch) -> None:
    _check(tmp_path, monkeypatch, NETWORK)
    assert isinstance(sys.modules["usernet"].build_model((8, 8), 10), nn.Module)


def test_the_guides_example_bundle_passes_the_check(tmp_path, monkeypatch) -> None:
    readme = (Path(__file__).parents[2] / "docs" / "guide.md").read_text()
    source = readme.split("cat > mynet.py <<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    _check(tmp_path, monkeypatch, source)

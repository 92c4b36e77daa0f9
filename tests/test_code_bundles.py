"""Code bundles: a user's model builder, validated at upload without importing it, run by Ray.

- ``unpack``: every bad archive is refused with the member at fault named, nothing left behind;
- the routes in process (``FakeRay``): 201/401/422 answers and the runtime env a job gets;
- ``check_user_model``: a user's mistakes fail with the tail of their traceback;
- end to end (real uvicorn and Ray): a bundle's model trains, its BN layers reported by the
  user's names, predictions run on Ray with the bundle; a builder that raises fails the job
  at once with the user's traceback.
"""

from __future__ import annotations

import io
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import safetensors.torch
import torch
from fakeray import FakeRay
from fastapi.testclient import TestClient
from sklearn.datasets import load_digits
from torch import nn

from service.app import create_app
from service.files.code_bundles import BundleError, module_name, unpack
from service.settings import Settings
from workers.data.arrays import standardize
from workers.nets import apply_norm
from workers.usercode import UserCodeError, check_user_model

TOKEN = "code-token"

# A user's network: its own layer names, BatchNorm2d inside a Sequential and on its own.
NETWORK = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, channels, num_classes):
            super().__init__()
            self.stem = nn.Conv2d(channels, 8, 3, padding=1, bias=False)
            self.stem_norm = nn.BatchNorm2d(8)
            self.encoder = nn.Sequential(
                nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
            )
            self.classifier = nn.Linear(16, num_classes)

        def forward(self, x):
            if x.dim() == 3:
                x = x.unsqueeze(1)
            x = torch.relu(self.stem_norm(self.stem(x)))
            return self.classifier(self.encoder(x).mean(dim=(2, 3)))


    def build_model(input_shape, num_classes):
        channels = input_shape[0] if len(input_shape) == 3 else 1
        return TinyNet(channels, num_classes)
    """
)
BROKEN = textwrap.dedent(
    """
    def build_model(input_shape, num_classes):
        return helper(input_shape)


    def helper(shape):
        raise RuntimeError(f"my builder cannot handle {shape}")
    """
)


def zip_bytes(files: dict[str, str | bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0
            archive.writestr(info, target)
    return buffer.getvalue()


def tar_bytes(files: dict[str, str], symlink: tuple[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type, info.linkname = tarfile.SYMTYPE, symlink[1]
            archive.addfile(info)
    return buffer.getvalue()


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
def _client(tmp_path: Path, **settings) -> tuple[TestClient, FakeRay]:
    ray = FakeRay(cpus=2)
    options = {"api_token": TOKEN, **settings}
    app = create_app(Settings(home=tmp_path, database_url="sqlite:///:memory:", **options), ray=ray)
    headers = {"Authorization": f"Bearer {TOKEN}"} if options.get("api_token") else {}
    return TestClient(app, base_url="http://127.0.0.1", headers=headers), ray


def _upload(client: TestClient, data: bytes, name: str = "net.zip"):
    return client.post("/v1/code", files={"file": (name, data, "application/zip")})


def test_upload_list_and_a_job_gets_the_bundle_as_its_working_dir(tmp_path: Path) -> None:
    client, ray = _client(tmp_path)
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


def test_bad_uploads_are_4xx_naming_the_file_and_leave_nothing(tmp_path: Path) -> None:
    client, _ = _client(tmp_path, max_code_bytes=4096)
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


def test_jobs_naming_a_missing_bundle_or_module_are_422(tmp_path: Path) -> None:
    client, _ = _client(tmp_path)
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


def test_uploads_need_the_token_on_loopback_too(tmp_path: Path) -> None:
    """There is always a token (made into $SYNCBN_HOME/api-token when none is set): a bundle
    runs on the cluster, so nobody without it uploads one, wherever the service listens."""
    data = zip_bytes({"net.py": NETWORK})
    anonymous, _ = _client(tmp_path / "a", host="127.0.0.1", api_token=None)
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


def test_the_readme_example_bundle_passes_the_check(tmp_path, monkeypatch) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    source = readme.split("cat > mynet.py <<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    _check(tmp_path, monkeypatch, source)


# -- end to end: real uvicorn, real Ray ---------------------------------------------------------
def _scale(service, job_id: str) -> tuple[float, float]:
    """The standardization in the job's model recipe."""
    recipe = service.client.get(f"/v1/jobs/{job_id}/models").json()["recipe"]
    scale = recipe["preprocess"]["standardize"]
    return scale["mean"], scale["std"]


def test_a_bundle_trains_reports_its_own_layer_names_and_predicts_on_ray(service) -> None:
    response = service.client.post(
        "/v1/code", files={"file": ("tinynet.tar.gz", tar_bytes({"tinynet.py": NETWORK}))}
    )
    assert response.status_code == 201, response.text
    code = response.json()["id"]
    job = service.submit(
        dataset="digits", code=code, model="tinynet:build_model", workers=2,
        batch_size_per_worker=16, epochs=2, lr=0.1,
    )  # fmt: skip
    done = service.wait_final(job["id"])
    assert done["state"] == "succeeded", done
    assert done["result"]["test_accuracy"] > 0.5
    workers = service.client.get(f"/v1/jobs/{job['id']}/workers").json()["workers"]
    assert [w["rank"] for w in workers] == [0, 1]
    for worker in workers:
        assert set(worker["bn"]) == {"stem_norm", "encoder.1"}
        assert (
            worker["bn"]["stem_norm"]["global_count"]
            == 2 * worker["bn"]["stem_norm"]["local_count"]
        )

    # Predictions run on Ray with the bundle (the service never imports it) and equal the
    # user's network built here from the downloaded file.
    images = load_digits().images[:4]
    response = service.client.post(
        f"/v1/jobs/{job['id']}/predict", json={"inputs": images.tolist()}
    )
    assert response.status_code == 200, response.text
    from ray.job_submission import JobSubmissionClient

    runs = JobSubmissionClient(service.ray_address).list_jobs()
    assert any(str(r.submission_id).startswith("predict-") for r in runs)
    namespace: dict = {}
    exec(NETWORK, namespace)
    model = namespace["build_model"]((8, 8), 10)
    weights = service.client.get(f"/v1/jobs/{job['id']}/model").content
    model.load_state_dict(safetensors.torch.load(weights))
    x = torch.from_numpy(standardize(images, *_scale(service, job["id"])))
    with torch.no_grad():
        expected = torch.softmax(model.eval()(x), 1).numpy()
    np.testing.assert_allclose(response.json()["probabilities"], expected, atol=1e-5)
    check_predictions_are_capped(service, job["id"], images.tolist())


def check_predictions_are_capped(service, job_id: str, inputs: list) -> None:
    """Row 8 of issue 20: a flood of predictions (each a Ray Job for a bundle's model) is served
    at most SYNCBN_MAX_CONCURRENT_PREDICTS (2) at a time; the rest get a 429 at once with
    Retry-After, and /healthz answers quickly meanwhile (the thread pool is never exhausted)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_: int) -> httpx.Response:
        return service.client.post(f"/v1/jobs/{job_id}/predict", json={"inputs": inputs})

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        health = httpx.get(f"{service.url}/healthz", timeout=5)  # while they are served
        answers = [future.result() for future in futures]
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses, statuses
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["retry-after"] == "2"
    assert "SYNCBN_MAX_CONCURRENT_PREDICTS" in refused.json()["detail"]
    assert health.status_code == 200


def test_a_builder_that_raises_fails_the_job_at_once_with_its_traceback(service) -> None:
    bundle = zip_bytes({"brokennet.py": BROKEN})
    response = service.client.post("/v1/code", files={"file": ("broken.zip", bundle)})
    assert response.status_code == 201, response.text
    job = service.submit(
        dataset="digits", code=response.json()["id"], model="brokennet:build_model",
        max_failures=3,
    )  # fmt: skip
    done = service.wait_final(job["id"], timeout_s=120)
    assert done["state"] == "failed", done
    reason = done["reason"]
    assert "your code (brokennet:build_model): the builder raised an exception" in reason
    assert "brokennet.py" in reason and "my builder cannot handle (8, 8)" in reason
    assert done["progress"]["step"] == 0  # no worker trained, nothing retried
    metrics = service.client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert metrics["reports"] == []


def test_cli_uploads_lists_and_submits_a_bundle(idle_service, tmp_path: Path) -> None:
    archive = tmp_path / "clinet.zip"
    archive.write_bytes(zip_bytes({"clinet.py": NETWORK}))
    uploaded = idle_service.cli("upload-code", str(archive))
    assert uploaded.returncode == 0, uploaded.stderr
    code = uploaded.stdout.split()[1].rstrip(":")
    assert code.startswith("code-") and "modules clinet" in uploaded.stdout
    listed = idle_service.cli("code")
    assert listed.returncode == 0 and f"{code}  clinet.zip  modules clinet" in listed.stdout
    submitted = idle_service.cli(
        "--json", "submit", "--dataset", "digits", "--code", code, "--model", "clinet:build_model"
    )
    assert submitted.returncode == 0, submitted.stderr
    assert '"model": "clinet:build_model"' in submitted.stdout
    missing = idle_service.cli("submit", "--dataset", "digits", "--code", code, "--model", "x:f")
    assert missing.returncode != 0 and "has no module 'x'" in missing.stdout + missing.stderr

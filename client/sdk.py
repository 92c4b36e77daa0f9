"""The Python SDK of syncbn-service: ``Client``, one typed method per REST route.

    from client import Client

    c = Client()  # $SYNCBN_URL, else the service of $SYNCBN_HOME, else http://127.0.0.1:8000
    job = c.submit({"dataset": "digits", "workers": 2, "batch_size_per_worker": 8})
    done = c.wait(job.id, on_report=lambda r: print(r.epoch, r.step))
    c.download_model(done.id)
    mine = c.jobs(mine=True)  # only the jobs of the token's user (c.me())

Answers are the service's own pydantic models (``contract.api``), inputs a
``contract.spec.JobSpec`` or a dict; errors are ``client.errors`` exceptions. The ``syncbn``
CLI is built on it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from client import paths
from client.errors import WaitTimeout
from client.events import EndEvent, JobEvent, messages, typed
from client.http import UPLOAD_TIMEOUT_S, Download, Transport, local_token, output_path
from contract.api import (
    CodeBundleList,
    CodeBundleOut,
    DatasetList,
    DatasetOut,
    DiskUsageOut,
    Health,
    JobList,
    JobOut,
    LogsOut,
    MetricsOut,
    ModelsOut,
    PredictOut,
    StudyList,
    StudyOut,
    WorkersOut,
)
from contract.layout import local_service_url
from contract.protocol import ReportEvent
from contract.spec import JobSpec
from contract.team import (
    AuditList,
    CreatedUser,
    MeOut,
    Quotas,
    TokenCreated,
    TokenOut,
    UserList,
    UserOut,
)

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV, TOKEN_ENV = "SYNCBN_URL", "SYNCBN_API_TOKEN"
Model = TypeVar("Model", bound=BaseModel)
Spec = JobSpec | Mapping[str, Any]
"""A job's spec: a ``JobSpec``, or a dict of its fields (the service fills in the rest)."""
QuotasIn = Quotas | Mapping[str, int | None]
"""A user's quota overrides: a ``Quotas``, or a dict of its fields (None: the default)."""


def default_url() -> str:
    """``$SYNCBN_URL``, else the URL the service of ``$SYNCBN_HOME`` recorded when it started
    (on this machine), else ``DEFAULT_URL``."""
    return os.environ.get(URL_ENV) or local_service_url() or DEFAULT_URL


def pause(seconds: float) -> None:
    """The wait between two polls of ``Client.wait_study`` (and before a stream resumes)."""
    time.sleep(seconds)


def as_body(spec: Spec | BaseModel) -> dict[str, Any]:
    """A spec or arm as JSON: a model's fields that were set, or the dict as given."""
    if isinstance(spec, BaseModel):
        return spec.model_dump(mode="json", exclude_unset=True)
    return dict(spec)


def _quotas(quotas: QuotasIn) -> dict[str, Any]:
    """Quota overrides as JSON: every field (one left out: None, the default setting)."""
    return Quotas.model_validate(dict(quotas)).model_dump(mode="json")


def _deadline(timeout_s: float | None) -> float | None:
    return None if timeout_s is None else time.monotonic() + timeout_s


def _check(deadline: float | None, what: str) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise WaitTimeout(f"{what} is not over yet")


class Client:
    """The service at ``url`` with API token ``token``.

    ``url``: default ``default_url()``. ``token``: default ``$SYNCBN_API_TOKEN``, else for a
    service on this machine the token ``make run`` keeps in ``$SYNCBN_HOME/api-token``.
    ``timeout_s``: of one request (uploads, predictions and downloads get 300 s).
    ``http``: an httpx client to send with (e.g. ``fastapi.testclient.TestClient``).
    The service's version is compared with the client's once, on the first answer: another
    major version is a ``RuntimeWarning``."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        timeout_s: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        url = url or default_url()
        token = token or os.environ.get(TOKEN_ENV) or local_token(url)
        self.transport = Transport(url, token, timeout_s, http)
        self.me_name: str | None = None
        """The token's user, once ``me()`` (or ``mine=True``) asked."""

    @property
    def url(self) -> str:
        return self.transport.url

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, model: type[Model], method: str, path: str, **kwargs: Any) -> Model:
        return model.model_validate(self.transport.request(method, path, **kwargs))

    def _get(self, model: type[Model], path: str, **kwargs: Any) -> Model:
        return self._call(model, "GET", path, **kwargs)

    def _post(self, model: type[Model], path: str, **kwargs: Any) -> Model:
        return self._call(model, "POST", path, **kwargs)

    def _owner(self, owner: str | None, mine: bool) -> str | None:
        """A list's ``owner`` filter: ``owner``, or with ``mine`` the token's user."""
        if mine and owner is not None:
            raise ValueError("give owner or mine, not both")
        if not mine:
            return owner
        return self.me_name or self.me().name

    def _delete(self, path: str) -> None:
        self.transport.request("DELETE", path)

    # -- the service -------------------------------------------------------------------------
    def health(self) -> Health:
        """``/healthz``: the service answers; its ``version``."""
        return self._get(Health, paths.HEALTH)

    def ready(self) -> Health:
        """``/readyz``: the database and the Ray cluster (``status`` "not ready" on a 503)."""
        return self._get(Health, paths.READY, accept=(503,))

    # -- jobs --------------------------------------------------------------------------------
    def submit(self, spec: Spec) -> JobOut:
        """Queue a job (a 422 names the spec's ``field``)."""
        return self._post(JobOut, paths.JOBS, json=as_body(spec))

    def job(self, job_id: str) -> JobOut:
        """One job: state, progress, transitions and result."""
        return self._get(JobOut, paths.item(paths.JOBS, job_id))

    def jobs(
        self,
        state: str | None = None,
        limit: int = 50,
        offset: int = 0,
        owner: str | None = None,
        mine: bool = False,
    ) -> JobList:
        """Jobs, newest first (only those in ``state``, of ``owner``, or with ``mine`` of the
        token's user, if given)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if state is not None:
            params["state"] = str(state)
        if (who := self._owner(owner, mine)) is not None:
            params["owner"] = who
        return self._get(JobList, paths.JOBS, params=params)

    def cancel(self, job_id: str) -> JobOut:
        """Cancel a job (queued: never runs; on Ray: stopped)."""
        return self._post(JobOut, paths.item(paths.JOBS, job_id, "cancel"))

    def pin(self, job_id: str) -> JobOut:
        """Keep the job's checkpoints, model files and log past the service's retention
        (``SYNCBN_RETENTION_DAYS``); idempotent."""
        return self._post(JobOut, paths.item(paths.JOBS, job_id, "pin"))

    def unpin(self, job_id: str) -> JobOut:
        """Let the retention remove the job's files once it is due; idempotent."""
        return self._call(JobOut, "DELETE", paths.item(paths.JOBS, job_id, "pin"))

    def delete_job(self, job_id: str) -> None:
        """Delete a job that is over, with its files."""
        self._delete(paths.item(paths.JOBS, job_id))

    def workers(self, job_id: str) -> WorkersOut:
        """The latest report of every rank."""
        return self._get(WorkersOut, paths.item(paths.JOBS, job_id, "workers"))

    def metrics(self, job_id: str) -> MetricsOut:
        """Every report and evaluation of the job."""
        return self._get(MetricsOut, paths.item(paths.JOBS, job_id, "metrics"))

    def logs(self, job_id: str, tail: int = 200) -> LogsOut:
        """The last ``tail`` lines of the job's Ray log."""
        path = paths.item(paths.JOBS, job_id, "logs")
        return self._get(LogsOut, path, params={"tail": tail})

    def _lines(self, job_id: str, after: int, deadline: float | None) -> Iterator[str]:
        timeout = httpx.Timeout(30.0, read=None)  # the service pings an idle stream
        params = {"after": after} if after else {}
        path = paths.item(paths.JOBS, job_id, "events")
        with self.transport.stream(path, timeout=timeout, params=params) as response:
            for line in response.iter_lines():
                _check(deadline, f"job {job_id}")
                yield line

    def events(
        self, job_id: str, after: int = 0, timeout_s: float | None = None
    ) -> Iterator[JobEvent]:
        """The job's events from the start (or after event id ``after``) until it is over:
        ``ReportEvent``, ``ExceptionEvent``, ``StateEvent``, last an ``EndEvent``."""
        lines = self._lines(job_id, after, _deadline(timeout_s))
        for message in messages(lines):
            yield typed(message)

    def wait(
        self,
        job_id: str,
        on_report: Callable[[ReportEvent], None] | None = None,
        timeout_s: float | None = None,
        on_event: Callable[[JobEvent], None] | None = None,
    ) -> JobOut:
        """Follow the job's event stream until it is over; the final job. ``on_report`` gets
        each report, ``on_event`` every event. A stream cut before the end is resumed where
        it stopped. ``WaitTimeout`` after ``timeout_s`` (the job goes on)."""
        deadline, after = _deadline(timeout_s), 0
        while True:
            for message in messages(self._lines(job_id, after, deadline)):
                after = message.id or after
                event = typed(message)
                if on_event is not None:
                    on_event(event)
                if on_report is not None and isinstance(event, ReportEvent):
                    on_report(event)
                if isinstance(event, EndEvent):
                    return self.job(job_id)
            job = self.job(job_id)
            if job.state.is_final:
                return job
            _check(deadline, f"job {job_id}")
            pause(1.0)

    # -- studies -----------------------------------------------------------------------------
    def create_study(
        self,
        base: Spec,
        seeds: Sequence[int] | None = None,
        arms: Sequence[str | Mapping[str, Any] | BaseModel] | None = None,
    ) -> StudyOut:
        """Queue a study: ``base`` (a spec without ``norm`` and ``seed``) run once per arm
        (a preset's name, or ``{"name", "overrides"}``) and seed (default: 0 1 2)."""
        body: dict[str, Any] = {"base": as_body(base)}
        if seeds is not None:
            body["seeds"] = list(seeds)
        if arms is not None:
            body["arms"] = [a if isinstance(a, str) else as_body(a) for a in arms]
        return self._post(StudyOut, paths.STUDIES, json=body)

    def study(self, study_id: str) -> StudyOut:
        """One study: its arms, the verdict and the recommendation."""
        return self._get(StudyOut, paths.item(paths.STUDIES, study_id))

    def studies(self, limit: int = 50, owner: str | None = None, mine: bool = False) -> StudyList:
        """Studies, newest first (only those of ``owner``, or with ``mine`` of the token's
        user, if given)."""
        params: dict[str, Any] = {"limit": limit}
        if (who := self._owner(owner, mine)) is not None:
            params["owner"] = who
        return self._get(StudyList, paths.STUDIES, params=params)

    def cancel_study(self, study_id: str) -> StudyOut:
        """Cancel every unfinished job of the study."""
        return self._post(StudyOut, paths.item(paths.STUDIES, study_id, "cancel"))

    def delete_study(self, study_id: str) -> None:
        """Delete a study that is over, with its jobs."""
        self._delete(paths.item(paths.STUDIES, study_id))

    def wait_study(
        self,
        study_id: str,
        poll_s: float = 2.0,
        on_update: Callable[[StudyOut], None] | None = None,
        timeout_s: float | None = None,
    ) -> StudyOut:
        """Poll the study every ``poll_s`` until it is over; the final study. ``on_update``
        gets each poll's study. ``WaitTimeout`` after ``timeout_s`` (the study goes on)."""
        deadline = _deadline(timeout_s)
        study = self.study(study_id)
        while study.state == "running":
            _check(deadline, f"study {study_id}")
            pause(poll_s)
            study = self.study(study_id)
            if on_update is not None:
                on_update(study)
        return study

    # -- uploads -----------------------------------------------------------------------------
    def _upload(self, model: type[Model], path: str, file: Path, form: dict[str, str]) -> Model:
        with Path(file).open("rb") as handle:
            files = {"file": (Path(file).name, handle, "application/octet-stream")}
            return self._post(model, path, files=files, data=form, timeout=UPLOAD_TIMEOUT_S)

    def upload_dataset(self, path: str | Path, image_size: str | None = None) -> DatasetOut:
        """Upload a ``.npz`` (x, y[, x_test, y_test, classes]) or an image-folder ``.zip``
        (``image_size``: resize every image, e.g. ``"32x32"``)."""
        form = {"image_size": image_size} if image_size else {}
        return self._upload(DatasetOut, paths.DATASETS, Path(path), form)

    def datasets(self) -> DatasetList:
        """The uploaded datasets."""
        return self._get(DatasetList, paths.DATASETS)

    def delete_dataset(self, dataset_id: str) -> None:
        """Delete an uploaded dataset no job uses."""
        self._delete(paths.item(paths.DATASETS, dataset_id))

    def upload_code(self, path: str | Path) -> CodeBundleOut:
        """Upload a ``.zip``/``.tar.gz`` of Python files with a model builder."""
        return self._upload(CodeBundleOut, paths.CODE, Path(path), {})

    def code_bundles(self) -> CodeBundleList:
        """The uploaded code bundles."""
        return self._get(CodeBundleList, paths.CODE)

    def code_bundle(self, code_id: str) -> CodeBundleOut:
        """One uploaded code bundle."""
        return self._get(CodeBundleOut, paths.item(paths.CODE, code_id))

    def delete_code(self, code_id: str) -> None:
        """Delete a code bundle no job uses."""
        self._delete(paths.item(paths.CODE, code_id))

    # -- trained models ----------------------------------------------------------------------
    def models(self, job_id: str) -> ModelsOut:
        """The job's kept model files (oldest first) and the newest one's recipe."""
        return self._get(ModelsOut, paths.item(paths.JOBS, job_id, "models"))

    def download_model(
        self, job_id: str, output: str | Path | None = None, epoch: int | None = None
    ) -> Download:
        """Save the job's model (``.safetensors``; the newest checkpoint, or ``epoch``'s) to
        ``output`` (a file, or a folder), else ``./<job>-epoch<N>.safetensors``; checked
        against its SHA-256."""
        folder = None if output is None else Path(output)

        def where(headers: httpx.Headers) -> Path:
            fallback = f"{job_id}-epoch{int(headers['x-syncbn-epoch'])}.safetensors"
            return output_path(folder, headers.get("content-disposition"), fallback)

        params = {} if epoch is None else {"epoch": epoch}
        return self.transport.download(
            paths.item(paths.JOBS, job_id, "model"), where, params=params
        )

    def predict(self, job_id: str, inputs: Any, epoch: int | None = None) -> PredictOut:
        """Predict raw samples (a list or an array of the model's input shape, as the dataset
        gives them) with the job's model (the newest, or ``epoch``'s)."""
        samples = inputs.tolist() if hasattr(inputs, "tolist") else inputs
        body = {"inputs": samples, **({} if epoch is None else {"epoch": epoch})}
        path = paths.item(paths.JOBS, job_id, "predict")
        return self._post(PredictOut, path, json=body, timeout=UPLOAD_TIMEOUT_S)

    def predict_images(
        self, job_id: str, images: Iterable[str | Path], epoch: int | None = None
    ) -> PredictOut:
        """Predict image files with a model trained on an image folder."""
        files = [("files", (Path(f).name, Path(f).read_bytes())) for f in images]
        form = {} if epoch is None else {"epoch": str(epoch)}
        path = paths.item(paths.JOBS, job_id, "predict", "images")
        return self._post(PredictOut, path, files=files, data=form, timeout=UPLOAD_TIMEOUT_S)

    # -- the team: users, tokens, the audit log ----------------------------------------------
    def me(self) -> MeOut:
        """Who the token signs in: name, role, the quotas in force and what they use now."""
        out = self._get(MeOut, paths.ME)
        self.me_name = out.name
        return out

    def users(self) -> UserList:
        """Every user, revoked ones too, with their tokens' names (admin)."""
        return self._get(UserList, paths.USERS)

    def user(self, name: str) -> UserOut:
        """One user (admin)."""
        return self._get(UserOut, paths.item(paths.USERS, name))

    def add_user(
        self, name: str, role: str = "member", quotas: QuotasIn | None = None
    ) -> CreatedUser:
        """Add a user (admin) with their first token, ``default``: ``.token.token``, shown
        only in this answer. ``quotas``: their overrides (None: the service's defaults)."""
        body = {"name": name, "role": role, "quotas": _quotas(quotas or {})}
        return self._post(CreatedUser, paths.USERS, json=body)

    def update_user(
        self, name: str, role: str | None = None, quotas: QuotasIn | None = None
    ) -> UserOut:
        """Change a user's role and/or replace their quota overrides (admin; a field left out
        of ``quotas`` goes back to the default)."""
        body: dict[str, Any] = {}
        if role is not None:
            body["role"] = role
        if quotas is not None:
            body["quotas"] = _quotas(quotas)
        return self._call(UserOut, "PATCH", paths.item(paths.USERS, name), json=body)

    def revoke_user(self, name: str) -> UserOut:
        """Revoke a user and every token of theirs (admin); what they made stays theirs."""
        return self._call(UserOut, "DELETE", paths.item(paths.USERS, name))

    def add_token(self, user: str, name: str | None = None) -> TokenCreated:
        """Add a token to ``user`` (admin), named ``name`` (None: ``token-<n>``, the first n
        not taken): ``.token``, shown only in this answer. To rotate one: add a new one,
        switch to it, revoke the old one."""
        path = paths.item(paths.USERS, user, "tokens")
        return self._post(TokenCreated, path, json={"name": name})

    def revoke_token(self, user: str, name: str) -> TokenOut:
        """Revoke ``user``'s token ``name`` (admin); refused from its next request on."""
        path = paths.item(paths.USERS, user, "tokens", name)
        return self._call(TokenOut, "DELETE", path)

    def audit(
        self,
        limit: int = 50,
        offset: int = 0,
        actor: str | None = None,
        action: str | None = None,
        object_id: str | None = None,
        status: int | None = None,
        since: datetime | str | None = None,
    ) -> AuditList:
        """The audit log, newest first (admin): every write, who, what, which object, when and
        the answer's status; only the entries matching the filters given (``since``: a
        datetime or ISO 8601, no zone meaning UTC)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        filters = {"actor": actor, "action": action, "object_id": object_id, "status": status}
        params |= {key: value for key, value in filters.items() if value is not None}
        if since is not None:
            params["since"] = since.isoformat() if isinstance(since, datetime) else since
        return self._get(AuditList, paths.AUDIT, params=params)

    # -- operations --------------------------------------------------------------------------
    def admin_usage(self, refresh: bool = False) -> DiskUsageOut:
        """What ``$SYNCBN_HOME`` holds (admin): bytes by kind and by owner, against the disk
        budget (``SYNCBN_DISK_BUDGET_BYTES``) and the free space; ``refresh``: walk the home
        now rather than reuse the service's last measure."""
        params = {"refresh": "true"} if refresh else {}
        return self._get(DiskUsageOut, paths.ADMIN_USAGE, params=params)

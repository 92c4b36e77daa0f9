"""Response bodies of the REST API (request bodies: ``workers.spec.JobSpec``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.states import JobState
from workers.protocol import WorkerReport
from workers.spec import JobSpec


class TransitionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    state: JobState
    reason: str | None = None
    at: datetime


class Progress(BaseModel):
    epoch: int = Field(description="last reported epoch (1-based; 0 before the first report)")
    step: int = Field(description="optimizer steps done")
    epochs: int
    steps_per_epoch: int
    fraction: float = Field(ge=0, le=1)


class Result(BaseModel):
    test_accuracy: float | None = Field(description="pixel accuracy for segmentation")
    test_loss: float | None
    test_miou: float | None = Field(None, description="segmentation: mean IoU over classes")
    epochs_completed: int
    wall_time_s: float | None = None


class JobOut(BaseModel):
    id: str
    state: JobState
    reason: str | None = Field(None, description="why queued, why failed, or who cancelled")
    spec: JobSpec
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress
    result: Result | None = Field(None, description="set when the job succeeded")
    transitions: list[TransitionOut] = []


class JobList(BaseModel):
    jobs: list[JobOut]
    total: int
    limit: int
    offset: int


class WorkersOut(BaseModel):
    job_id: str
    epoch: int | None = None
    step: int | None = None
    workers: list[WorkerReport] = Field(description="the latest report of every rank")


class ReportOut(BaseModel):
    kind: str
    epoch: int
    step: int
    time: float
    workers: list[WorkerReport]


class EvaluationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    step: int
    test_accuracy: float | None
    test_loss: float | None
    test_miou: float | None = None


class MetricsOut(BaseModel):
    job_id: str
    reports: list[ReportOut]
    evaluations: list[EvaluationOut]


class LogsOut(BaseModel):
    job_id: str
    logs: str


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    size_bytes: int
    n_train: int
    n_test: int
    input_shape: list[int]
    num_classes: int
    task: str = Field("classification", description="classification or segmentation")
    class_names: list[str] | None = Field(None, description="in label order, when known")
    created_at: datetime


class DatasetList(BaseModel):
    datasets: list[DatasetOut]


class CodeBundleOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="name it in JobSpec.code")
    name: str = Field(description="the uploaded file's name")
    size_bytes: int
    sha256: str
    files: int = Field(description="files in the bundle")
    modules: list[str] = Field(description='importable modules: use "<module>:<function>"')
    requirements: list[str] = Field(description="requirements.txt lines, pip-installed by Ray")
    created_at: datetime


class CodeBundleList(BaseModel):
    bundles: list[CodeBundleOut]


class IngestAck(BaseModel):
    stored: bool


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]]

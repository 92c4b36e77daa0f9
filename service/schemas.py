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


class ModelFileOut(BaseModel):
    epoch: int = Field(description="the checkpoint's epoch (1-based)")
    size_bytes: int
    sha256: str = Field(description="also the download's ETag")
    metrics: dict[str, float | None] = Field(description="that epoch's evaluation")
    bn_statistics: str = Field(description="whose BatchNorm running statistics the file holds")
    url: str = Field(description="GET it for the .safetensors file")


class ModelsOut(BaseModel):
    job_id: str
    models: list[ModelFileOut] = Field(description="the kept checkpoints' files, oldest first")
    recipe: dict[str, Any] | None = Field(
        None, description="the newest file's recipe (how to rebuild and feed the model)"
    )


class PredictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] = Field(
        description="raw samples as the dataset provides them (digits: load_digits().images, "
        "values 0-16), each of the model's input shape; preprocessing comes from the recipe",
        min_length=1,
    )
    epoch: int | None = Field(None, ge=1, description="a kept checkpoint (default: the newest)")


class PredictOut(BaseModel):
    job_id: str
    epoch: int
    task: str
    classes: list[str] | None = Field(description="class names in label order, when known")
    predictions: list[int] | None = Field(None, description="classification: a class per sample")
    masks: list[Any] | None = Field(None, description="segmentation: (N, H, W) pixel classes")
    probabilities: list[Any] = Field(
        description="softmax over the classes: (N, K), or (N, K, H, W) for segmentation"
    )


class IngestAck(BaseModel):
    stored: bool


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]]

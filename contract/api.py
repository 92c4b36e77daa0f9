"""Request and response bodies of the REST API, shared by the service and the SDK
(``client.sdk``); the job spec itself is ``contract.spec.JobSpec``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    field_validator,
    model_validator,
)

from contract.arms import ARM_NAME_PATTERN, DEFAULT_ARMS, MAX_ARMS, PRESETS, Arm
from contract.protocol import WorkerReport
from contract.spec import JobSpec, PresetName
from contract.states import JobState


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
    study_id: str | None = Field(None, description="the study this job is an arm x seed of")
    arm: str | None = None
    owner: str = Field("admin", description="who made it (a user's name)")
    pinned: bool = Field(
        False, description="its checkpoints and log are kept past SYNCBN_RETENTION_DAYS"
    )
    files_removed_at: datetime | None = Field(
        None,
        description="when the retention removed its checkpoints, model files and log (its "
        "statistics and result stay)",
    )


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
    reason: str | None = Field(None, description="why there is no log: removed by the retention")


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
    owner: str = Field("admin", description="who made it (a user's name)")


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
    owner: str = Field("admin", description="who made it (a user's name)")


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
    reason: str | None = Field(
        None, description="why there is no model file: removed by the retention (when, why)"
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


class ArmWithOverrides(BaseModel):
    """A study arm as an object: its name, and the JobSpec fields it changes (none for a
    preset)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ARM_NAME_PATTERN, description="unique in the study")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="JobSpec fields this arm changes in the base (any but seed)",
        examples=[{"sync_group_size": 2}],
    )


class ArmIn(ArmWithOverrides):
    """A study arm: a preset's name (a string), or a name with the JobSpec fields it changes."""

    @model_validator(mode="before")
    @classmethod
    def _preset_by_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if not isinstance(data, dict | ArmIn):
            raise ValueError(
                f'must be a preset\'s name ({", ".join(PRESETS)}) or {{"name", "overrides"}}'
            )
        return data

    @field_validator("overrides")
    @classmethod
    def _not_the_seed(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        if "seed" in overrides:
            raise ValueError("a study sets seed itself (use seeds): leave it out")
        return overrides

    @model_validator(mode="after")
    def _preset_or_overrides(self) -> ArmIn:
        presets = ", ".join(PRESETS)
        if self.name in PRESETS and self.overrides:
            raise ValueError(
                f"{self.name!r} is a preset and takes no overrides: give this arm another name"
            )
        if self.name not in PRESETS and not self.overrides:
            raise ValueError(
                f"{self.name!r} is not a preset ({presets}): give a preset's name, or an "
                'object {"name": ..., "overrides": {JobSpec fields}}'
            )
        return self

    def arm(self) -> Arm:
        return Arm(self.name, self.overrides)


ArmField = Annotated[
    ArmIn,
    PlainValidator(ArmIn.model_validate, json_schema_input_type=PresetName | ArmWithOverrides),
]
"""An arm in a request: the schema says "a preset's name or an ArmWithOverrides" (both named,
so generated clients get a model for each); ``ArmIn`` validates either."""


class StudyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: dict[str, Any] = Field(
        description="a JobSpec without norm and seed: what every arm shares",
        examples=[{"dataset": "digits", "workers": 4, "batch_size_per_worker": 2, "epochs": 4}],
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, max_length=20)
    arms: list[ArmField] | None = Field(
        None,
        min_length=1,
        max_length=MAX_ARMS,
        description="presets (" + ", ".join(f"{k}: {v}" for k, v in PRESETS.items()) + ") or "
        '{"name", "overrides"} objects; default: ' + ", ".join(DEFAULT_ARMS),
    )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        if any(not 0 <= s <= 2**31 - 1 for s in seeds):
            raise ValueError("seeds must be in [0, 2**31 - 1]")
        return seeds

    @field_validator("arms")
    @classmethod
    def _distinct_arms(cls, arms: list[ArmIn] | None) -> list[ArmIn] | None:
        names = [arm.name for arm in arms or []]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"arm names must be distinct: {', '.join(twice)} more than once")
        return arms


class CurvePoint(BaseModel):
    epoch: int
    mean: float | None
    std: float | None
    n: int = Field(description="seeds that reached this epoch")


class StudyJobOut(BaseModel):
    id: str
    seed: int
    state: JobState
    reason: str | None = None
    metric: float | None = None


class ArmOut(BaseModel):
    name: str
    spec: JobSpec = Field(description="the arm's JobSpec (seed: the first seed's)")
    jobs: list[StudyJobOut]
    metric: str = Field(description="test_accuracy, or test_miou for segmentation")
    metric_mean: float | None = None
    metric_std: float | None = None
    step_time_s_mean: float | None = None
    sync_time_share: float | None = Field(None, description="syncbn collectives / step time")
    allreduce_bytes_per_step: float | None = Field(
        None, description="bytes one rank all-reduces for BatchNorm per step (0: none)"
    )
    curve: list[CurvePoint] = Field(description="the test metric by epoch over the seeds")


class RecommendationOut(BaseModel):
    arm: str
    reason: str = Field(description="why, with the numbers")


class StudyOut(BaseModel):
    id: str
    state: Literal["running", "succeeded", "partially_failed", "failed", "cancelled"]
    reasons: list[str] = Field(description="why jobs failed, one line each")
    base: dict[str, Any]
    seeds: list[int]
    arms: list[ArmOut]
    skipped: dict[str, str] = Field(description="arms asked for but not run, and why")
    verdict: str | None = Field(description="what syncbn bought, in plain words")
    recommendation: RecommendationOut | None = Field(
        description="the cheapest arm, by step time, among those within seed noise of the "
        "best metric; null before any result"
    )
    created_at: datetime
    owner: str = Field("admin", description="who made it (a user's name)")


class StudyList(BaseModel):
    studies: list[StudyOut]


class IngestAck(BaseModel):
    stored: bool


class Health(BaseModel):
    status: str
    version: str = Field(description="the service's package version (syncbn-service)")
    checks: dict[str, str] = {}


class ErrorOut(BaseModel):
    detail: str | list[dict[str, Any]]


class OwnerDiskUsage(BaseModel):
    owner: str
    datasets_bytes: int
    code_bytes: int
    runs_bytes: int = Field(description="their jobs' checkpoints, model files and statistics")
    logs_bytes: int = Field(description="their jobs' kept logs")
    total_bytes: int
    max_upload_bytes: int | None = Field(description="their upload quota in force (null: none)")
    max_model_bytes: int | None = Field(description="their model quota in force (null: none)")


DiskKind = Literal["database", "datasets", "code", "runs", "logs", "other"]


class DiskUsageOut(BaseModel):
    """What ``$SYNCBN_HOME`` holds (bytes on disk), against its budget and file system."""

    home: str
    measured_at: datetime = Field(description="when the home was last walked")
    complete: bool = Field(
        description="false: the walk stopped at its bound of entries (lower bounds, then)"
    )
    used_bytes: int
    budget_bytes: int | None = Field(description="SYNCBN_DISK_BUDGET_BYTES (null: unset)")
    limit_bytes: int = Field(description="what the home may use: the budget, else used + free")
    free_bytes: int = Field(description="free on the file system")
    filesystem_bytes: int = Field(description="the file system's size")
    reserve_bytes: int = Field(
        description="free bytes of the file system kept for the database (full under it)"
    )
    state: Literal["ok", "warning", "full"] = Field(
        description="warning from 90 % of the budget or of the file system; full: uploads, "
        "new jobs and studies are refused (507)"
    )
    detail: str = Field(description="the state in words, as /readyz gives it")
    by_kind: dict[DiskKind, int]
    by_owner: list[OwnerDiskUsage] = Field(description="the largest first")
    unowned_bytes: int = Field(
        description="under datasets/, code/ and runs/ but of no row: an upload being received, "
        "what a crash left"
    )

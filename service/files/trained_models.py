"""A job's trained model files and predictions with them.

Rank 0 of a job writes ``contract.recipe.MODEL_FILE`` into every checkpoint under
``<runs>/<job>/``; Ray Train keeps the last two. The service only reads their headers (the
recipe: epoch, metrics) and serves them as they are: it never unpickles anything.

The files are the job's, so untrusted (its user code shares them): a recipe is validated with
bounds (``contract.recipe.Recipe``) and a file that fails is refused with the reason
(``KeptModels.refused``), never used. Only the job's own files are read: every path component
under the run folder is opened without following links (``O_NOFOLLOW``, relative to the folder
opened before it), so a symbolic link, or a folder that became one, is refused, and a file is
served only while it is the one whose recipe was checked (``ModelFile.identity``). What is kept
in memory is bounded in bytes: recipes (``RECIPE_CACHE_BYTES``), digests, loaded models
(``MODEL_CACHE_BYTES``, at most ``MODEL_CACHE_ENTRIES``).

Predictions run in eval mode. A built-in model runs in the service process (off the event
loop, the loaded model cached); a code bundle's model is never imported by the service: it
runs as a short Ray Job (``python -m workers predict``) with the bundle's runtime env, which
reads the inputs from and writes the outputs to ``$SYNCBN_HOME/predictions/<id>/``.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from contract.recipe import MAX_HEADER_BYTES, MODEL_FILE, STATE_FILE, RecipeError, recipe_from
from service.cluster import Cluster, is_terminal, predict_entrypoint
from service.errors import Conflict
from service.files.lru import LRU

INPUTS_FILE, OUTPUTS_FILE = "inputs.npy", "outputs.npz"
POLL_S = 0.2
CHECKPOINTS = "checkpoint_*"
MAX_CHECKPOINTS = 8
"""Checkpoint folders of a job read at most, the newest by name (Ray Train keeps 2)."""
MAX_RUN_ENTRIES = 1000
"""Entries of a job's run folder looked at, at most (Ray Train writes a few)."""
ENTRY_BYTES = 1024
"""What a cache entry costs besides its value (key, bookkeeping), counted in its weight."""
RECIPE_CACHE_BYTES = 8 << 20
"""Recipes kept in memory at most: their JSON bytes plus ``ENTRY_BYTES`` each. A real recipe
is about 1 kB (11 kB with 255 class names), so about 4,000 of them; one of the largest a
valid header allows (1 MiB) does not crowd out more than 8 MiB of others. Parsed, a recipe
takes about as much memory as its JSON (its lists are short, its strings bounded)."""
MODEL_CACHE_BYTES = 512 << 20
MODEL_CACHE_ENTRIES = 4
"""Built-in models kept loaded for predictions at most (their files' bytes, and how many): a
model's memory is about its file's size; one larger than the bound is loaded per request."""
DIGEST_CACHE_ENTRIES = 1024
"""SHA-256 digests (64 hex characters each) kept at most."""


class PredictionError(RuntimeError):
    """A prediction on Ray failed; the message ends with the tail of its logs."""


_recipes = LRU(RECIPE_CACHE_BYTES)
_digests = LRU(DIGEST_CACHE_ENTRIES * (64 + ENTRY_BYTES), DIGEST_CACHE_ENTRIES)
_models = LRU(MODEL_CACHE_BYTES, MODEL_CACHE_ENTRIES)

Identity = tuple[int, int, int, int, int]
"""A file's device, inode, size, mtime and ctime (ns): another file, or the same one changed,
has another (the ctime cannot be set by the job)."""


def _identity(info: os.stat_result) -> Identity:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


class Refusal(Exception):
    """A path under a job's run folder that the service does not read (a link, not a plain
    file or folder)."""


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LINK_ERRORS = {errno.ELOOP, errno.EMLINK, errno.ENOTDIR}
LINK = "a symbolic link: the service reads only the job's own files"


def _open(name: str | Path, flags: int, dir_fd: int | None = None) -> int:
    """``os.open`` without following a link at the last component; ``Refusal`` when it is one
    (or not a folder where one is wanted), ``FileNotFoundError`` when it is not there."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in _LINK_ERRORS:
            raise
        try:
            link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
        except OSError:
            link = False
        if link:
            raise Refusal(LINK) from None
        raise Refusal("not a folder") from None


@contextlib.contextmanager
def _run_folder(job_dir: Path) -> Iterator[int]:
    """The job's run folder, opened without following a link (its parent is the service's)."""
    fd = _open(job_dir, _DIR)
    try:
        yield fd
    finally:
        os.close(fd)


def _open_model(job_fd: int, folder: str) -> BinaryIO:
    """``<folder>/MODEL_FILE`` of the run folder ``job_fd``, each component opened without
    following a link; ``Refusal`` unless it is a plain file (a FIFO would block the reader)."""
    folder_fd = _open(folder, _DIR, dir_fd=job_fd)
    try:
        fd = _open(MODEL_FILE, _FILE, dir_fd=folder_fd)
    finally:
        os.close(folder_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Refusal("not a plain file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


@dataclass(frozen=True)
class ModelFile:
    """One kept model file of a job, as it was when its recipe was checked."""

    epoch: int
    path: Path
    recipe: dict[str, Any]
    identity: Identity

    @property
    def name(self) -> str:
        """``<checkpoint folder>/model.safetensors``: what messages show."""
        return f"{self.path.parent.name}/{self.path.name}"

    @property
    def size(self) -> int:
        return self.identity[2]

    def open(self) -> BinaryIO:
        """The file, opened as ``model_files`` did; ``FileNotFoundError`` if it was removed or
        replaced since (ask again), ``Conflict`` if a link took its place."""
        try:
            with _run_folder(self.path.parent.parent) as job_fd:
                handle = _open_model(job_fd, self.path.parent.name)
        except Refusal as exc:
            raise Conflict(f"the model file {self.name} is refused: {exc}") from None
        if _identity(os.fstat(handle.fileno())) != self.identity:
            handle.close()
            raise FileNotFoundError(self.path)
        return handle

    @property
    def etag(self) -> str:
        """A strong ETag: the file's SHA-256."""
        key = (str(self.path), self.identity)
        digest = _digests.get(key)
        if digest is None:
            sha = hashlib.sha256()
            with self.open() as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(block)
            digest = sha.hexdigest()
            _digests.put(key, digest, len(digest) + ENTRY_BYTES)
        return digest


@dataclass(frozen=True)
class Refused:
    """A file or folder of a job's run folder that is not used, and why."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass(frozen=True)
class KeptModels:
    """A job's valid model files by epoch (oldest first), and what was refused."""

    files: dict[int, ModelFile]
    refused: tuple[Refused, ...] = ()


@dataclass(frozen=True)
class _Invalid:
    """A cached refusal of a file's recipe."""

    reason: str


def model_files(runs_dir: Path, job_id: str) -> KeptModels:
    """The job's kept model files by epoch (none before its first checkpoint), and those it
    refuses: a link, a file that is not a valid syncbn model file. A file shorter than its
    header says is being written (or copied by Ray Train), and a checkpoint without one is
    not complete: both are skipped."""
    job_dir = runs_dir / job_id
    refused: list[Refused] = []
    try:
        with _run_folder(job_dir) as job_fd:
            folders = _checkpoint_folders(job_fd, refused)
            found: dict[int, ModelFile] = {}
            for folder in folders:
                path = job_dir / folder / MODEL_FILE
                try:
                    file = _read(job_fd, folder, path)
                except FileNotFoundError:
                    continue  # being written, or removed by Ray Train meanwhile
                except Refusal as exc:
                    refused.append(Refused(f"{folder}/{MODEL_FILE}", str(exc)))
                    continue
                if isinstance(file, Refused):
                    refused.append(file)
                elif file is not None:
                    found[file.epoch] = file
    except FileNotFoundError:
        return KeptModels({})
    except Refusal as exc:
        return KeptModels({}, (Refused(f"the run folder {job_id}", str(exc)),))
    return KeptModels(dict(sorted(found.items())), tuple(refused))


def has_training_state(runs_dir: Path, job_id: str) -> bool:
    """Whether a checkpoint of the job's run folder holds its training state (``STATE_FILE``):
    what a resumed job continues from. A restored backup has none (only the model files)."""
    try:
        with _run_folder(runs_dir / job_id) as job_fd:
            for folder in _checkpoint_folders(job_fd, []):
                try:
                    found = os.stat(f"{folder}/{STATE_FILE}", dir_fd=job_fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(found.st_mode):
                    return True
    except (OSError, Refusal):
        pass
    return False


def _checkpoint_folders(job_fd: int, refused: list[Refused]) -> list[str]:
    """The names of the run folder's checkpoint folders (links are refused), at most
    ``MAX_CHECKPOINTS``: the newest by name."""
    folders = []
    with os.scandir(job_fd) as entries:
        for count, entry in enumerate(entries):
            if count == MAX_RUN_ENTRIES:
                refused.append(
                    Refused("the run folder", f"over {MAX_RUN_ENTRIES} entries: the rest not read")
                )
                break
            if not fnmatch.fnmatchcase(entry.name, CHECKPOINTS):
                continue
            if entry.is_symlink():
                refused.append(Refused(entry.name, LINK))
            elif entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
    folders.sort()
    if len(folders) > MAX_CHECKPOINTS:
        refused.append(
            Refused(
                "the run folder",
                f"{len(folders)} checkpoint folders (Ray Train keeps 2): only the newest "
                f"{MAX_CHECKPOINTS} by name are read",
            )
        )
    return folders[-MAX_CHECKPOINTS:]


def _read(job_fd: int, folder: str, path: Path) -> ModelFile | Refused | None:
    """The model file of ``folder`` with its checked recipe (cached by the file's identity), the
    reason it is refused, or None while it is incomplete."""
    with _open_model(job_fd, folder) as handle:
        identity = _identity(os.fstat(handle.fileno()))
        key = (str(path), identity)
        recipe = _recipes.get(key)
        if recipe is None:
            try:
                recipe, size = recipe_from(handle)
            except RecipeError as exc:
                if exc.incomplete:
                    return None
                recipe, size = _Invalid(str(exc)), len(str(exc))
            _recipes.put(key, recipe, size + ENTRY_BYTES)
    if isinstance(recipe, _Invalid):
        return Refused(f"{folder}/{MODEL_FILE}", recipe.reason)
    return ModelFile(recipe["epoch"], path, recipe, identity)


def _load(file: ModelFile) -> Any:
    """``file``'s built-in model in eval mode, read through ``file.open`` (no link followed);
    ``Conflict`` saying why it cannot be (the file's tensors are the job's)."""
    from safetensors.torch import load

    from workers.nets import model_from_recipe  # torch: loaded with the first prediction

    try:
        model = model_from_recipe(file.recipe)
        expected = sum(t.nelement() * t.element_size() for t in model.state_dict().values())
        if file.size > 8 + MAX_HEADER_BYTES + expected:
            raise Conflict(
                f"the model file of epoch {file.epoch} ({file.name}) holds {file.size} bytes, "
                f"more than its model's {expected} bytes of weights: refused"
            )
        with file.open() as handle:
            data = handle.read()
        model.load_state_dict(load(data))
    except (FileNotFoundError, Conflict):
        raise
    except Exception as exc:  # whatever the job wrote: the builder, safetensors, torch say why
        reason = str(exc).replace("\n", " ")
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise Conflict(
            f"the model file of epoch {file.epoch} ({file.name}) cannot be loaded: {reason}"
        ) from None
    return model.eval()


def predict_builtin(file: ModelFile, raw: np.ndarray) -> dict[str, np.ndarray]:
    """Predictions of a built-in model, in this process (the model is loaded once)."""
    key = (str(file.path), file.identity)
    model = _models.get(key)
    if model is None:
        model = _load(file)
        _models.put(key, model, file.size)
    from workers.export import predict

    return predict(model, file.recipe, raw)


def predict_on_ray(
    ray: Cluster,
    python: str,
    file: ModelFile,
    raw: np.ndarray,
    scratch: Path,
    runtime_env: dict[str, Any],
    timeout_s: float,
) -> dict[str, np.ndarray]:
    """Predictions of a code bundle's model, as a Ray Job with the bundle's ``runtime_env``;
    ``PredictionError`` (with the logs' tail) if it fails or takes over ``timeout_s``."""
    run_id = f"predict-{uuid.uuid4().hex[:12]}"
    folder = scratch / run_id
    folder.mkdir(parents=True)
    try:
        np.save(folder / INPUTS_FILE, raw)
        command = predict_entrypoint(python, file.path, folder / INPUTS_FILE, folder / OUTPUTS_FILE)
        ray.submit(run_id, command, {}, runtime_env)
        deadline = time.monotonic() + timeout_s
        status = ray.status(run_id)
        while not is_terminal(status):
            if time.monotonic() > deadline:
                ray.stop(run_id)
                raise PredictionError(f"prediction {run_id} took over {timeout_s:.0f} s")
            time.sleep(POLL_S)
            status = ray.status(run_id)
        if status != "SUCCEEDED":
            tail = ray.logs(run_id, max_bytes=16 << 10, lines=25)
            raise PredictionError(f"prediction {run_id} on Ray: {status}\n{tail}")
        with np.load(folder / OUTPUTS_FILE, allow_pickle=False) as outputs:
            return {key: outputs[key] for key in outputs.files}
    finally:
        shutil.rmtree(folder, ignore_errors=True)

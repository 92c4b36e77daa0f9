"""Command line: run one job from a JSON spec on the current Ray cluster.

    python -m workers run SPEC.json [--storage DIR] [--address ADDR] [--name NAME] [--resume]
                                    [--datasets-dir DIR] [--json] [--verbose]
    python -m workers predict MODEL.safetensors INPUTS.npy OUTPUTS.npz

Without ``--address`` (or ``RAY_ADDRESS``) a local Ray instance is started. Shows a progress
bar over the epochs (and the steps of the current epoch when step reports are on), then a
per-worker table and the test accuracy. ``--json`` prints the result as one JSON object on
stdout (the progress goes to stderr). Exit status: 0 done, 1 training failed, 2 invalid spec
or dataset, 3 infeasible on this cluster.

``predict`` runs a model file (``workers.export``) on raw samples and writes
``workers.export.predict``'s arrays; a code bundle's builder is imported from ``sys.path``
(the service runs it as a Ray Job whose working_dir is the bundle).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from client.render import ProgressView, worker_table
from contract.layout import Layout
from contract.protocol import OUTCOME_FILE, JobOutcome, text_tail, write_outcome
from contract.spec import JobSpec

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INFEASIBLE = 0, 1, 2, 3
MAX_ERROR_BYTES = 16 << 10
"""The end of an error message kept in the outcome file (``JobOutcome``)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one training job from a JSON JobSpec file")
    run.add_argument(
        "spec", help="JobSpec JSON file ('-' for stdin, or the JSON itself if it starts with '{')"
    )
    run.add_argument(
        "--storage",
        default=str(Layout.of().runs),
        help="storage path for runs (default: $SYNCBN_HOME/runs)",
    )
    run.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    run.add_argument("--name", default=None, help="unique run name (default: generated)")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run --name from its last checkpoint if it exists (else start it)",
    )
    run.add_argument("--datasets-dir", default=None, help="where uploaded datasets live")
    run.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    run.add_argument("--verbose", action="store_true", help="show Ray worker logs")
    predict = sub.add_parser("predict", help="predict raw samples with a model file")
    predict.add_argument("model", help="model file (.safetensors) of a job")
    predict.add_argument("inputs", help="raw samples (.npy), shaped (N, *input_shape)")
    predict.add_argument("outputs", help="where to write the predictions (.npz)")
    return parser.parse_args(argv)


def predict_file(model_path: str, inputs: str, outputs: str) -> int:
    """Predict ``inputs`` with the model file ``model_path`` into ``outputs``."""
    import numpy as np

    from contract.recipe import read_recipe
    from workers.export import load_model, predict
    from workers.nets import model_for, saved_layers

    recipe = read_recipe(model_path)
    spec = JobSpec.model_validate(recipe["spec"])
    model = None
    if not recipe["builtin"]:
        built = model_for(spec, tuple(recipe["input_shape"]), recipe["num_classes"], recipe["task"])
        model = saved_layers(built, spec)
    model, recipe = load_model(model_path, model)
    result = predict(model, recipe, np.load(inputs, allow_pickle=False))
    np.savez(outputs, **result)
    return EXIT_OK


def load_spec(source: str | Path) -> JobSpec:
    """Read and validate a JobSpec: a JSON file, ``-`` (stdin) or inline JSON (``{...}``)."""
    source = str(source)
    if source == "-":
        text = sys.stdin.read()
    elif source.lstrip().startswith("{"):
        text = source
    else:
        text = Path(source).read_text(encoding="utf-8")
    return JobSpec.model_validate_json(text)


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, naming the field."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(spec)"
        lines.append(f"  {field}: {error['msg']}")
    return "invalid job spec:\n" + "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from contract.capacity import InfeasibleJobError
    from contract.datasets import DatasetError, steps_per_epoch
    from workers.driver import JobError, JobFailedError, prepare_data, run_job
    from workers.reporting import HttpSink, follow_events
    from workers.usercode import UserCodeError

    console = Console(stderr=args.json)
    if args.name:  # an earlier attempt's outcome (a resumed run) is not this one's
        (Path(args.storage) / args.name / OUTCOME_FILE).unlink(missing_ok=True)
    try:
        spec = load_spec(args.spec)
    except ValidationError as exc:
        console.print(format_validation_error(exc), markup=False)
        return EXIT_INVALID
    except OSError as exc:
        console.print(f"cannot read spec: {exc}", markup=False)
        return EXIT_INVALID

    try:
        data = prepare_data(spec, args.datasets_dir)
    except DatasetError as exc:
        return finish(console, args, EXIT_INVALID, f"invalid dataset: {exc}")
    except UserCodeError as exc:
        return finish(console, args, EXIT_INVALID, str(exc))
    console.print(f"dataset {data.describe()}", markup=False)
    steps = steps_per_epoch(len(data.x_train), spec.workers, spec.batch_size_per_worker)

    import ray

    if not ray.is_initialized():
        ray.init(address=args.address, log_to_driver=args.verbose)

    stop = threading.Event()
    threads: list[threading.Thread] = []
    view = ProgressView(console, spec, steps)

    def on_start(name: str, run_dir: Path) -> None:
        console.print(f"run [bold]{name}[/bold] in {run_dir}")

        def follow() -> None:
            for event in follow_events(run_dir / "stats.jsonl", stop):
                view.handle(event)

        thread = threading.Thread(target=follow, name="stats-follower", daemon=True)
        thread.start()
        threads.append(thread)

    status, result, error = EXIT_OK, None, None
    with view:
        try:
            result = run_job(
                spec,
                args.storage,
                args.name,
                datasets_dir=args.datasets_dir,
                data=data,
                resume=args.resume,
                sink=HttpSink.from_env(),
                on_start=on_start,
            )
        except DatasetError as exc:
            status, error = EXIT_INVALID, f"invalid dataset: {exc}"
        except UserCodeError as exc:
            status, error = EXIT_INVALID, str(exc)
        except InfeasibleJobError as exc:
            status, error = EXIT_INFEASIBLE, str(exc)
        except JobFailedError as exc:
            status, error = EXIT_FAILED, str(exc)
        except JobError as exc:
            status, error = EXIT_INVALID, str(exc)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)

    return finish(console, args, status, error, result, spec.norm)


def finish(
    console: Any,
    args: argparse.Namespace,
    status: int,
    error: str | None,
    result: Any = None,
    norm: str | None = None,
) -> int:
    """Print the outcome, write it to the run's ``outcome.json`` (what the service reads) and
    with ``--json`` print it as one JSON line; ``status``."""
    if error is not None:
        console.print(error, markup=False, style="red")
    if result is not None:
        console.print(worker_table(result.workers, norm))
        console.print(
            f"test accuracy [bold]{result.test_accuracy:.4f}[/bold] "
            f"(loss {result.test_loss:.4f}) after {result.epochs_completed} epochs "
            f"in {result.wall_time_s:.1f} s"
        )
    if args.name:  # what the service reads: a file, not a line of stdout user code shares
        wall_time_s = result.wall_time_s if result is not None else None
        outcome = JobOutcome(
            status=status,
            error=None if error is None else text_tail(error, MAX_ERROR_BYTES),
            wall_time_s=wall_time_s,
        )
        write_outcome(Path(args.storage) / args.name, outcome)
    if args.json:
        payload = {
            "status": status,
            "error": error,
            "result": result.as_dict() if result else None,
        }
        print(json.dumps(payload))
    return status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "predict":
        return predict_file(args.model, args.inputs, args.outputs)
    return EXIT_INVALID  # pragma: no cover - argparse enforces the subcommands

"""Back up a home and restore it: ``python -m service backup FILE`` and ``python -m service
restore FILE`` (``docs/operations.md``).

A backup is one tar archive (gzip-compressed when FILE ends with ``.gz`` or ``.tgz``), taken
while the service and its jobs run::

    syncbn.db                   the SQLite database: SQLite's online backup, one read
                                transaction, so a consistent snapshot (writers go on: WAL)
    datasets/<id>.npz           each uploaded dataset the copied database lists
    code/<id>/...               each code bundle it lists (the unpacked files)
    runs/<job>/...              of each job it lists, what serves its models and its log:
                                driver.log, outcome.json, stats.jsonl and every checkpoint's
                                model.safetensors (with its recipe); not the training state
    manifest.json               last: the format and its version, when, the schema revision,
                                the service version, each file's path, size and SHA-256, and
                                what was skipped and why

The database is copied first, then the files of the rows it holds: a file the copy does not
refer to (an upload still being staged, a job made after the copy) is not in the archive. The
API token (``api-token``) is not either: it is a secret, and a restored home keeps its own
(users' tokens are in the database, as digests, and keep working). Job output is untrusted:
every file is opened relative to the folder opened before it, never through a link
(``O_NOFOLLOW``), and one job's bad output is skipped, never the whole backup, which stays
bounded: a link or a special file, a file or folder that cannot be read, a job file that
shrinks while it is read (each is copied aside first) or is over the bound the service reads
it with (``stats.jsonl``, ``outcome.json``, ``driver.log``; a model file: a valid header and
the size it declares), checkpoints past the ``MAX_CHECKPOINTS`` newest, a code bundle's
folders past ``MAX_TREE_DEPTH``. What is skipped is named in the manifest (at most
``MAX_SKIPPED_PER_ENTRY`` paths per job, dataset or code bundle, then how many more) and in
the output (escaped); the manifest never outgrows ``MAX_MANIFEST_BYTES``, what restore reads.

A restore goes into an empty home (no database, nothing in ``datasets/``, ``code/``, ``runs/``;
an ``api-token`` there is kept). The archive is unpacked into a staging folder of the home
first: only plain files, under relative paths without ``..``, each one listed in the manifest
with its size and SHA-256, all checked, and the database's integrity and schema revision too,
before anything is moved into place: the database first (copied beside its file, flushed,
linked to its name), then the folders; a failure on the way moves them back. A bad archive,
or an error of the file system, leaves the home as it was (``OperationError``, never a
traceback); what a killed restore left is removed by the next one.

With PostgreSQL (``DATABASE_URL``), ``pg_dump`` backs up the database and ``backup
--files-only`` the files (``docs/operations.md#postgresql``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.operations.backup.archive import DOCS, MANIFEST, OperationError
from service.operations.backup.home import shown
from service.operations.backup.restore import occupied, restore
from service.operations.backup.take import backup
from service.settings import Settings

__all__ = ["MANIFEST", "OperationError", "backup", "main", "occupied", "restore"]


# -- the command line --------------------------------------------------------------------------
def main(argv: list[str], settings: Settings | None = None) -> int:
    """``python -m service backup|restore FILE``: 0, or 2 with the reason on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Without a command: run the service. With one: back up or restore "
        f"SYNCBN_HOME and its database ({DOCS}).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser(
        "backup",
        help="write a consistent backup of the home and its SQLite database, while it runs",
        description="Write a tar archive (.tar.gz/.tgz: gzip) of the SQLite database (an "
        "online copy), the uploaded datasets and code bundles, and each job's model files and "
        "kept log, with a manifest of SHA-256s. The API token is not in it.",
    )
    up.add_argument("file", type=Path, help="the archive to write (never overwritten)")
    up.add_argument(
        "--files-only",
        action="store_true",
        help="no database: the files only (PostgreSQL: back the database up with pg_dump first)",
    )
    down = commands.add_parser(
        "restore",
        help="restore a backup into an empty home",
        description="Restore a backup into SYNCBN_HOME, which must hold no database and no "
        "files; every checksum is verified before anything is moved into place.",
    )
    down.add_argument("file", type=Path, help="the archive that backup wrote")
    args = parser.parse_args(argv)
    settings = settings or Settings()
    try:
        if args.command == "backup":
            backup(settings, args.file, files_only=args.files_only)
        else:
            restore(settings, args.file)
    except (OperationError, OSError) as exc:
        print(f"syncbn-service {args.command}: {shown(exc)}", file=sys.stderr, flush=True)
        return 2
    return 0

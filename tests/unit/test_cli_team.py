"""``syncbn users``, ``tokens``, ``whoami``, ``audit`` and ``--mine`` in process (issue 28): the
CLI's ``Client`` talks to the app through a ``TestClient`` (``service`` of
``test_cli_models.py``) as the admin (``TOKEN``) or with a token the CLI printed."""

from __future__ import annotations

import json
import re

import pytest
from inprocess import TOKEN
from test_cli_models import service  # noqa: F401 (fixture)

from client import cli
from client.commands.team import quota

SHOWN = re.compile(r"^token for (\S+) \(shown once\): (\S+)$", re.MULTILINE)


def syncbn(capsys, token: str, *args: str) -> tuple[int, str]:
    """``syncbn --token TOKEN ARGS``: (exit status, stdout and stderr)."""
    status = cli.main(["--token", token, *args])
    out = capsys.readouterr()
    return status, out.out + out.err


def add(capsys, name: str, *flags: str) -> str:
    """``syncbn users add NAME FLAGS`` as the admin; the token it printed."""
    status, out = syncbn(capsys, TOKEN, "users", "add", name, *flags)
    assert status == cli.EXIT_OK, out
    shown = SHOWN.search(out)
    assert shown is not None and shown.group(1) == name, out
    return shown.group(2)


def submit(capsys, token: str) -> str:
    status, out = syncbn(capsys, token, "--json", "submit", "--dataset", "synthetic")
    assert status == cli.EXIT_OK, out
    return json.loads(out)["id"]


def test_an_admin_adds_a_member_whose_printed_token_signs_them_in(service, capsys):  # noqa: F811
    alice = add(capsys, "alice", "--max-queued-jobs", "10", "--max-upload-bytes", "2000000")
    assert len(alice) >= 43
    status, out = syncbn(capsys, alice, "whoami")
    assert status == cli.EXIT_OK, out
    assert "alice (member)" in out and "quotas in force" in out
    assert re.search(r"queued jobs \(max_queued_jobs\)\s+│\s+10\s+│\s+0", out), out
    assert re.search(r"uploads .*2\.0 MB\s+│\s+0 B", out), out
    assert re.search(r"running workers .*no limit", out), out
    status, out = syncbn(capsys, alice, "--json", "whoami")
    me = json.loads(out)
    assert (me["name"], me["role"], me["quotas"]["max_queued_jobs"]) == ("alice", "member", 10)

    ours, hers = submit(capsys, TOKEN), submit(capsys, alice)
    status, out = syncbn(capsys, alice, "list", "--mine")
    assert status == cli.EXIT_OK, out
    assert hers in out and ours not in out and "1 job(s)" in out and "owner" in out
    status, out = syncbn(capsys, TOKEN, "list")
    assert hers in out and ours in out and re.search(rf"{hers}\s+│\s+alice", out), out
    status, out = syncbn(capsys, TOKEN, "list", "--json", "--owner", "alice")
    assert [j["id"] for j in json.loads(out)["jobs"]] == [hers]
    with pytest.raises(SystemExit) as both:
        cli.main(["list", "--mine", "--owner", "alice"])
    assert both.value.code == 2 and "not allowed with" in capsys.readouterr().err

    study = ["study", "--dataset", "synthetic", "--seeds", "0", "--json"]
    status, out = syncbn(capsys, alice, *study)
    assert status == cli.EXIT_OK, out
    her_study = json.loads(out)["id"]
    assert syncbn(capsys, TOKEN, *study)[0] == cli.EXIT_OK
    status, out = syncbn(capsys, alice, "studies", "--mine", "--json")
    assert [s["id"] for s in json.loads(out)["studies"]] == [her_study]
    status, out = syncbn(capsys, alice, "studies", "--mine")
    assert re.search(rf"{her_study}\s+│\s+alice", out) and out.count("s-") == 1, out


def test_a_member_is_refused_admin_commands_and_a_revoked_one_is_refused(service, capsys):  # noqa: F811
    alice = add(capsys, "alice")
    for command in (
        ["users", "list"],
        ["users", "add", "mallory"],
        ["tokens", "add", "alice"],
        ["audit"],
    ):
        status, out = syncbn(capsys, alice, *command)
        assert status == cli.EXIT_REJECTED, command
        assert "HTTP 403: only an admin may" in out and "(you are alice, a member)" in out

    status, out = syncbn(capsys, TOKEN, "users", "list")
    assert status == cli.EXIT_OK and "alice" in out and "member" in out and "default" in out
    assert alice not in out  # never the token
    status, out = syncbn(capsys, TOKEN, "users", "revoke", "alice")
    assert status == cli.EXIT_OK and "revoked user alice and all their tokens" in out
    status, out = syncbn(capsys, alice, "whoami")
    assert status == cli.EXIT_REJECTED and "HTTP 401: invalid token" in out, out
    status, out = syncbn(capsys, TOKEN, "--json", "users", "list")
    alice_out = next(u for u in json.loads(out)["users"] if u["name"] == "alice")
    assert alice_out["revoked_at"] is not None
    status, out = syncbn(capsys, TOKEN, "users", "revoke", "nobody")
    assert status == cli.EXIT_REJECTED and "HTTP 404" in out


def test_a_token_is_rotated_add_switch_revoke_the_old(service, capsys):  # noqa: F811
    old = add(capsys, "bob", "--role", "viewer")
    status, out = syncbn(capsys, TOKEN, "tokens", "add", "bob", "--name", "laptop")
    assert status == cli.EXIT_OK, out
    new = SHOWN.search(out).group(2)
    assert new != old and "its name: laptop (syncbn tokens revoke bob laptop)" in out
    assert "bob (viewer)" in syncbn(capsys, new, "whoami")[1]
    status, out = syncbn(capsys, TOKEN, "tokens", "revoke", "bob", "default")
    assert status == cli.EXIT_OK and "revoked token default; refused from its next" in out
    assert syncbn(capsys, old, "whoami")[0] == cli.EXIT_REJECTED
    assert syncbn(capsys, new, "whoami")[0] == cli.EXIT_OK
    status, out = syncbn(capsys, TOKEN, "users", "list")
    assert re.search(r"bob\s+│\s+viewer\s+│.*│\s+default \(revoked\), laptop\s+│", out), out
    status, out = syncbn(capsys, TOKEN, "--json", "tokens", "add", "bob", "--name", "laptop")
    assert status == cli.EXIT_REJECTED and "HTTP 409" in out
    for n in (3, 4):  # without --name: the service names it
        status, out = syncbn(capsys, TOKEN, "tokens", "add", "bob")
        assert status == cli.EXIT_OK and f"its name: token-{n} " in out, out


def test_users_set_changes_the_role_and_only_the_quotas_given(service, capsys):  # noqa: F811
    add(capsys, "carol", "--max-queued-jobs", "3", "--max-model-bytes", "5000")
    status, out = syncbn(capsys, TOKEN, "users", "set", "carol", "--max-upload-bytes", "1000")
    assert status == cli.EXIT_OK, out
    status, out = syncbn(capsys, TOKEN, "users", "set", "carol", "--role", "viewer", "--json")
    user = json.loads(out)
    assert user["role"] == "viewer"
    assert user["quotas"] == {
        "max_running_workers": None,
        "max_queued_jobs": 3,
        "max_upload_bytes": 1000,
        "max_model_bytes": 5000,
    }
    status, out = syncbn(capsys, TOKEN, "users", "set", "carol", "--max-queued-jobs", "default")
    assert status == cli.EXIT_OK and "max_queued_jobs" not in out and "max_model_bytes" in out
    status, out = syncbn(capsys, TOKEN, "users", "set", "carol")
    assert status == cli.EXIT_REJECTED and "nothing to change" in out
    status, out = syncbn(capsys, TOKEN, "users", "add", "Bad Name")
    assert status == cli.EXIT_REJECTED and "HTTP 422" in out and "name" in out


def test_audit_lists_the_writes_newest_first_and_filters(service, capsys):  # noqa: F811
    alice = add(capsys, "alice")
    job = submit(capsys, alice)
    syncbn(capsys, alice, "users", "list")  # a read: not in the log
    syncbn(capsys, alice, "users", "add", "mallory")  # a refused write: in it
    syncbn(capsys, TOKEN, "tokens", "add", "alice", "--name", "ci")
    status, out = syncbn(capsys, TOKEN, "audit", "--json")
    assert status == cli.EXIT_OK, out
    rows = [(e["actor"], e["action"], e["status"]) for e in json.loads(out)["entries"]]
    assert rows == [
        ("admin", "users-add-token", 201),
        ("alice", "users-create", 403),
        ("alice", "jobs-submit", 201),
        ("admin", "users-create", 201),
    ]
    status, out = syncbn(capsys, TOKEN, "audit")
    assert status == cli.EXIT_OK and "audit log (newest first)" in out and "4 of 4 entries" in out
    lines = [line.split("│")[2:4] for line in out.splitlines() if line.startswith("│")]
    assert [(actor.strip(), action.strip()) for actor, action in lines] == [r[:2] for r in rows]
    assert re.search(r"alice\s+│\s+users-create\s+│\s+user\s+│\s+403\s+│\s+only an admin", out)
    status, out = syncbn(capsys, TOKEN, "audit", "--actor", "alice", "--object", job)
    assert "1 of 1 entries" in out and "jobs-submit" in out and "users-create" not in out
    status, out = syncbn(capsys, TOKEN, "audit", "--action", "users-create", "--limit", "1")
    assert "1 of 2 entries" in out


def test_json_goes_before_or_after_a_subcommand(service, capsys):  # noqa: F811
    for args in (["--json", "users", "list"], ["users", "list", "--json"]):
        status, out = syncbn(capsys, TOKEN, *args)
        assert status == cli.EXIT_OK and json.loads(out)["users"][0]["name"] == "admin"
    status, out = syncbn(capsys, TOKEN, "users", "add", "dave", "--json")
    created = json.loads(out)
    assert created["token"]["user"] == "dave" and "shown once" not in out


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("12", 12), ("default", None)])
def test_quota_flags(text, value):
    assert quota(text) == value


@pytest.mark.parametrize("text", ["-1", "1.5", "lots"])
def test_bad_quota_flags_exit_2(capsys, text):
    with pytest.raises(SystemExit) as exited:
        cli.parse_args(["users", "add", "x", "--max-queued-jobs", text])
    assert exited.value.code == 2 and "max-queued-jobs" in capsys.readouterr().err


def test_pin_and_unpin_a_job_only_its_owner_or_an_admin(service, capsys):  # noqa: F811
    alice, bob = add(capsys, "alice"), add(capsys, "bob")
    job = submit(capsys, alice)
    status, out = syncbn(capsys, alice, "pin", job)
    assert status == cli.EXIT_OK and "pinned" in out and "by alice" in out, out
    status, out = syncbn(capsys, bob, "unpin", job)
    assert status == cli.EXIT_REJECTED and "HTTP 403" in out and "belongs to alice" in out, out
    status, out = syncbn(capsys, TOKEN, "--json", "unpin", job)
    assert status == cli.EXIT_OK and json.loads(out)["pinned"] is False, out


def test_a_507_is_its_own_error_class():
    import httpx

    from client.errors import InsufficientStorage, ServerError, error_for

    answer = httpx.Response(
        507, json={"detail": "the home uses 10 bytes (SYNCBN_DISK_BUDGET_BYTES)"}
    )
    error = error_for(answer)
    assert isinstance(error, InsufficientStorage) and isinstance(error, ServerError)
    assert error.setting == "SYNCBN_DISK_BUDGET_BYTES"

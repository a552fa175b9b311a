"""The README's curl examples, run as written against a live gunicorn: taken from the README
itself, so they can't drift from it.

Every command of the ``sh`` block in the README's "API" section runs, in order, in one bash
(so ``TOKEN=...`` and the cookie jar carry over), with these substitutions only: ``$URL`` is
the live server; the example ids in a path or a query stand for real ones (``1764061234567-0``: the message the
block sends, ``1764061239999-0``: its edit) and ``$ROOM`` for the private room it creates; a
25 s long-poll waits 1 s, and a stream (``curl -sN``) is read for 2 s. A command must exit 0
(a stream: curl's 28, its time up) and answer no JSON error.
"""

import json
import re
import subprocess

import pytest

from tests.helpers import GENEROUS_LIMITS, PASSWORD, ROOT, Api, gunicorn_with_redis

pytestmark = pytest.mark.gunicorn

MESSAGE_ID, EDIT_ID = "1764061234567-0", "1764061239999-0"


def readme_commands():
    """The API section's ``sh`` block as commands (continuation lines joined, comments dropped)."""
    section = (ROOT / "README.md").read_text().split("\n## API", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)[1]
    commands, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(current)
            current = ""
    return commands


def script(commands, folder):
    """One bash script: each command's output to ``out.<n>``, its status to ``rc.<n>``; the ids
    and the room it makes captured for the commands after it."""
    lines = ["cd " + str(folder)]
    for n, written in enumerate(commands):
        if written.startswith("URL="):
            continue
        # Ids in a path or a query stand for the real ones; one inside a JSON body is a valid cursor as it is.
        command = re.sub(rf"([/=]){MESSAGE_ID}", r"\1$MSG", written)
        command = re.sub(rf"([/=]){EDIT_ID}", r"\1$EDIT", command).replace("timeout=25", "timeout=1")
        command = command.replace("curl -sN", "curl -sN --max-time 2")
        lines.append(f"{{\n{command}\n}} > out.{n} 2>&1; echo $? > rc.{n}")  # a newline ends its comment
        pick = None
        if "-d 'text=hello'" in command:
            pick = "MSG", '["id"]'
        elif "-X PATCH" in command and "/messages/" in command:
            pick = "EDIT", '["id"]'
        elif '"private": true' in command:
            pick = "ROOM", '["room"]["name"]'
        if pick:
            name, path = pick
            lines.append(f"{name}=$(python3 -c 'import json,sys; print(json.load(sys.stdin){path})' < out.{n})")
    return "\n".join(lines) + "\n"


def test_the_readme_curl_examples_work_as_written(tmp_path):
    commands = readme_commands()
    assert len(commands) > 30 and any("api/auth/csrf" in c for c in commands)
    with gunicorn_with_redis(tmp_path, workers=2, env=dict(GENEROUS_LIMITS)) as (server, _):
        Api(server.url).post("/api/auth/register", {"username": "bob", "password": PASSWORD})  # the one invited
        bash = subprocess.run(["bash", "-c", script(commands, tmp_path)], check=False, capture_output=True,
                              text=True, timeout=300, env={"URL": server.url, "PATH": "/usr/bin:/bin"})
        assert bash.returncode == 0, bash.stderr
    for n, command in enumerate(commands):
        if command.startswith("URL="):
            continue
        status = int((tmp_path / f"rc.{n}").read_text())
        output = (tmp_path / f"out.{n}").read_text()
        streaming = "curl -sN" in command
        assert status == (28 if streaming else 0), (command, status, output[:300])
        if streaming:
            assert "event: ready" in output, (command, output[:300])
            continue
        if output.startswith("{"):
            answer = json.loads(output)
            assert "error" not in answer, (command, answer)

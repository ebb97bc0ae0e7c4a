"""supervisord's event listener for the stack: a program that went FATAL stops everything.

supervisord gives up on a program that keeps dying at start (FATAL) and carries on with the rest: a
gateway that cannot bind its port would leave transcoders, model_clients and the emulator running
behind a stack that can never take a call. Every program in supervisord.conf is one the stack cannot
live without, so on the first FATAL this writes why to the run directory (``common.stack`` prints it
and exits non-zero once supervisord is down) and asks supervisord to shut down.

The protocol (supervisord's event listener protocol): write READY, read one header line and a payload
of ``len`` bytes from stdin, answer ``RESULT 2\\nOK``. stdout is the protocol channel: nothing else may
be written there.
"""

from __future__ import annotations

import signal
import sys
import xmlrpc.client
from pathlib import Path
from typing import NamedTuple, TextIO

from supervisor.xmlrpc import SupervisorTransport

from common import settings as settings_module

FATAL_FILE = "stack.fatal"  # in the run directory: why the stack stopped itself


class Event(NamedTuple):
    name: str  # eventname, e.g. PROCESS_STATE_FATAL
    fields: dict[str, str]  # the payload's key:value pairs (processname, groupname, from_state)


def parse_event(header_line: str, payload: str) -> Event:
    header = dict(word.split(":", 1) for word in header_line.split())
    fields = dict(word.split(":", 1) for word in payload.split("\n", 1)[0].split())
    return Event(name=header.get("eventname", ""), fields=fields)


def fatal_line(process: str) -> str:
    """The one line the stack prints when it stopped because ``process`` went FATAL."""
    return f"stack: {process} could not start (FATAL): see its last line above; stopped everything"


def read_event(stdin: TextIO, stdout: TextIO) -> Event | None:
    """Wait for the next event; None when supervisord has gone (stdin closed)."""
    stdout.write("READY\n")
    stdout.flush()
    header_line = stdin.readline()
    if not header_line:
        return None
    length = int(dict(word.split(":", 1) for word in header_line.split())["len"])
    return parse_event(header_line, stdin.read(length))


def acknowledge(stdout: TextIO) -> None:
    stdout.write("RESULT 2\nOK")
    stdout.flush()


def record_fatal(run_dir: str, process: str) -> bool:
    """Write why the stack stops; False when an earlier FATAL already did (the first one is the cause)."""
    try:
        with open(Path(run_dir) / FATAL_FILE, "x") as f:
            f.write(fatal_line(process) + "\n")
    except FileExistsError:
        return False
    return True


def shut_down(run_dir: str) -> None:
    """supervisord's own shutdown, as on SIGTERM: every program stopped in reverse priority order."""
    transport = SupervisorTransport("", "", f"unix://{run_dir}/supervisor.sock")
    try:
        xmlrpc.client.ServerProxy("http://127.0.0.1", transport).supervisor.shutdown()
    except xmlrpc.client.Fault as e:  # already shutting down (a SIGTERM came first): nothing to do
        print(f"stack_watch: shutdown: {e.faultString}", file=sys.stderr, flush=True)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))  # supervisord stopping us: fine
    run_dir = settings_module.load().run_dir
    while (event := read_event(sys.stdin, sys.stdout)) is not None:
        fatal = event.name == "PROCESS_STATE_FATAL" and record_fatal(run_dir, event.fields["processname"])
        acknowledge(sys.stdout)
        if fatal:
            shut_down(run_dir)


if __name__ == "__main__":
    main()

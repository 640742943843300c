"""The command line: argparse, one function per subcommand; errors are one `error: ...` line, exit code 1."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from feedbackloop.api import (
    ABORT_ANNOTATION,
    KIND,
    PROMOTE_ANNOTATION,
    RETRAIN_REQUEST_ANNOTATION,
    ROLLBACK_ANNOTATION,
    RolloutKind,
    RolloutPhase,
)
from feedbackloop.core.spec import ArtifactsSpec, Mode
from feedbackloop.core.status import FeedbackLoopStatus, parse_status
from feedbackloop.kubectl_plugin import render, reports, versions
from feedbackloop.kubectl_plugin.cluster import Connection, LoopApi, connect
from feedbackloop.kubectl_plugin.errors import PluginError

PROG = "kubectl feedbackloop"
EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


@dataclass(frozen=True)
class Session:
    loops: LoopApi
    namespace: str  # -n, else the kubeconfig context's namespace, else "default"

    def loop(self, name: str) -> tuple[dict[str, Any], FeedbackLoopStatus]:
        body = self.loops.get(self.namespace, name)
        return body, parse_status(body.get("status"))

    def loop_label(self, name: str) -> str:
        return f'{KIND} "{name}" in namespace "{self.namespace}"'


def now() -> datetime:
    return datetime.now(UTC)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def retrain_request_id(at: datetime, nonce: str) -> str:
    """A fresh annotation value: the operator starts one retrain (or handles one abort, or one promote or
    rollback-to as its requested-at token) per distinct value."""
    return f"{at:%Y%m%dT%H%M%SZ}-{nonce}"


def busy_with(status: FeedbackLoopStatus) -> str | None:
    """What in-flight work makes the operator hold manual promote and rollback requests."""
    if status.active_retrain is not None:
        return f"retrain of {status.active_retrain.version}"
    if status.rollout is not None:
        return f"rollout of {status.rollout.version}"
    return None


# ---------------------------------------------------------------- read-only commands


def run_status(session: Session, args: argparse.Namespace) -> int:
    namespace = None if args.all_namespaces else session.namespace
    loops = session.loops.list(namespace)
    if not loops:
        where = "any namespace" if namespace is None else f'namespace "{namespace}"'
        print(f"No {KIND}s found in {where}.", file=sys.stderr)
        return EXIT_OK
    print(render.status_table(loops, now(), with_namespace=namespace is None))
    return EXIT_OK


def run_describe(session: Session, args: argparse.Namespace) -> int:
    body, _ = session.loop(args.name)
    print(render.describe_text(body, now()))
    return EXIT_OK


def run_history(session: Session, args: argparse.Namespace) -> int:
    _, status = session.loop(args.name)
    if not status.history:
        print(f"{session.loop_label(args.name)} has no history yet.", file=sys.stderr)
        return EXIT_OK
    print(render.history_table(status.history, now()))
    return EXIT_OK


def _artifacts_spec(body: dict[str, Any]) -> ArtifactsSpec | None:
    raw = (body.get("spec") or {}).get("artifacts")
    try:
        return ArtifactsSpec.model_validate(raw) if raw else None
    except ValidationError:
        return None  # an invalid spec.artifacts locates nothing; status-recorded URIs still work


def run_report(session: Session, args: argparse.Namespace) -> int:
    body, status = session.loop(args.name)
    version = versions.report_version(status, args.name, args.version)
    uri = versions.version_uri(status, _artifacts_spec(body), session.namespace, args.name, version)
    directory = (
        Path(args.output).expanduser().absolute()
        if args.output
        else reports.default_report_dir(os.environ, Path.home(), session.namespace, args.name, version)
    )
    endpoint = reports.s3_endpoint(args.s3_endpoint, os.environ)
    store = reports.open_store(endpoint, reports.s3_region(os.environ))
    path = reports.download_report(store, uri, version, directory, endpoint)
    print(path, flush=True)  # the path first, so a browser warning follows it
    if args.open and not webbrowser.open(path.resolve().as_uri()):
        warn(f"no browser could be started; open {path} yourself")
    return EXIT_OK


# ---------------------------------------------------------------- commands that change the loop


def _annotate(session: Session, name: str, annotation: str, value: str) -> None:
    session.loops.merge_patch(session.namespace, name, {"metadata": {"annotations": {annotation: value}}})


def run_retrain(session: Session, args: argparse.Namespace) -> int:
    body, status = session.loop(args.name)
    request_id = retrain_request_id(now(), secrets.token_hex(4))
    _annotate(session, args.name, RETRAIN_REQUEST_ANNOTATION, request_id)
    print(f"{session.loop_label(args.name)}: retrain requested ({RETRAIN_REQUEST_ANNOTATION}={request_id})")
    spec = body.get("spec") or {}
    if spec.get("suspend"):
        warn(f"the loop is suspended: the retrain waits until `{PROG} resume {args.name}`")
    elif spec.get("mode") == Mode.OBSERVE:
        warn("mode is Observe: the operator reports that it would retrain but starts no Job")
    elif status.active_retrain is not None:
        warn(f"retrain of {status.active_retrain.version} is running: this request waits until it ends")
    return EXIT_OK


def run_promote(session: Session, args: argparse.Namespace) -> int:
    body, status = session.loop(args.name)
    versions.check_promote(status, args.name, args.version)
    return _request_version(
        session, args.name, body, status, PROMOTE_ANNOTATION, args.version, "promotion of"
    )


def run_rollback(session: Session, args: argparse.Namespace) -> int:
    body, status = session.loop(args.name)
    versions.check_version_name(args.version)
    if not args.force:
        versions.check_rollback(status, args.name, args.version)
    return _request_version(
        session, args.name, body, status, ROLLBACK_ANNOTATION, args.version, "rollback to"
    )


def _request_version(
    session: Session,
    name: str,
    body: dict[str, Any],
    status: FeedbackLoopStatus,
    annotation: str,
    version: str,
    what: str,
) -> int:
    """Sets a promote or rollback annotation with a fresh requested-at token (asking again is a new request)
    and removes the other request annotation in the same patch, then says what happens next."""
    versions.check_not_in_flight(status, annotation, version)
    token = retrain_request_id(now(), secrets.token_hex(4))
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    request = versions.version_request(status, annotations, annotation, version, token)
    session.loops.merge_patch(session.namespace, name, {"metadata": {"annotations": request.annotations}})
    changed = ", ".join(
        f"{key} removed" if value is None else f"{key}={value}" for key, value in request.annotations.items()
    )
    print(f"{session.loop_label(name)}: {what} {version} requested ({changed})")
    if request.warning:
        warn(request.warning)
    if busy := busy_with(status):
        warn(f"{busy} is in flight: the {what.split()[0]} waits until it ends")
    return EXIT_OK


def run_abort(session: Session, args: argparse.Namespace) -> int:
    body, status = session.loop(args.name)
    request_id = retrain_request_id(now(), secrets.token_hex(4))
    _annotate(session, args.name, ABORT_ANNOTATION, request_id)
    print(f"{session.loop_label(args.name)}: abort requested ({ABORT_ANNOTATION}={request_id})")
    rollout = status.rollout
    if (body.get("spec") or {}).get("mode") == Mode.OBSERVE:
        warn("mode is Observe: the operator records the abort and changes nothing")
    elif rollout is None:
        warn("no rollout is in flight: the operator records the abort and changes nothing")
    elif rollout.kind is RolloutKind.ROLLBACK:
        warn(f"the rollback to {rollout.version} in flight is never aborted: it goes on")
    elif rollout.phase is RolloutPhase.ROLLING_BACK:
        warn(f"the rollback of {rollout.version} in flight is never aborted: it goes on")
    return EXIT_OK


def _set_suspend(session: Session, name: str, suspend: bool) -> int:
    session.loops.get(session.namespace, name)  # a clear "not found" before patching
    session.loops.merge_patch(session.namespace, name, {"spec": {"suspend": suspend}})
    done = "suspended" if suspend else "resumed"
    print(f"{session.loop_label(name)} {done} (spec.suspend={str(suspend).lower()})")
    return EXIT_OK


def run_suspend(session: Session, args: argparse.Namespace) -> int:
    return _set_suspend(session, args.name, suspend=True)


def run_resume(session: Session, args: argparse.Namespace) -> int:
    return _set_suspend(session, args.name, suspend=False)


# ---------------------------------------------------------------- arguments


Command = Callable[[Session, argparse.Namespace], int]


def _connection_options() -> argparse.ArgumentParser:
    # SUPPRESS defaults let the options stand before or after the subcommand without one erasing the other.
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument(
        "--kubeconfig", default=argparse.SUPPRESS, help="kubeconfig file (default: $KUBECONFIG)"
    )
    options.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context to use")
    options.add_argument(
        "-n",
        "--namespace",
        default=argparse.SUPPRESS,
        help="namespace (default: the context's namespace, else default)",
    )
    return options


def build_parser() -> argparse.ArgumentParser:
    options = _connection_options()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[options], description="Inspect and steer FeedbackLoops (feedbackloop.dev)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Command, help_text: str, *positionals: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[options], help=help_text, description=help_text)
        sub.set_defaults(run=run)
        for positional in positionals:
            sub.add_argument(positional.lower(), metavar=positional)
        return sub

    status = command("status", run_status, "a table of the loops in the namespace")
    status.add_argument("-A", "--all-namespaces", action="store_true", help="loops of every namespace")
    command("describe", run_describe, "conditions, last evaluation, models and gates of one loop", "NAME")
    command("history", run_history, "one row per version in status.history", "NAME")
    report = command("report", run_report, "download a version's error-analysis report (report.html)", "NAME")
    report.add_argument("version", metavar="VERSION", nargs="?", help="default: the version being served")
    report.add_argument("--open", action="store_true", help="open the report in a browser")
    report.add_argument("--output", metavar="DIR", help="directory to save it in (default: a cache dir)")
    report.add_argument("--s3-endpoint", metavar="URL", help="S3 endpoint (default: $FBL_S3_ENDPOINT_URL)")
    command("retrain", run_retrain, f"request a retrain ({RETRAIN_REQUEST_ANNOTATION})", "NAME")
    command(
        "promote", run_promote, f"roll out the validated candidate ({PROMOTE_ANNOTATION})", "NAME", "VERSION"
    )
    rollback = command(
        "rollback", run_rollback, f"roll back to a stored version ({ROLLBACK_ANNOTATION})", "NAME", "VERSION"
    )
    rollback.add_argument(
        "--force",
        action="store_true",
        help="skip the check against status (for a version the status no longer names); "
        "the operator still verifies its artifacts",
    )
    command("abort", run_abort, f"stop the rollout in flight and roll back ({ABORT_ANNOTATION})", "NAME")
    command("suspend", run_suspend, "set spec.suspend=true: the loop launches nothing new", "NAME")
    command("resume", run_resume, "set spec.suspend=false", "NAME")
    backtest = commands.add_parser(BACKTEST, help=BACKTEST_HELP, description=BACKTEST_HELP, add_help=False)
    backtest.add_argument("arguments", nargs=argparse.REMAINDER, help="see `feedbackloop backtest --help`")
    return parser


# ---------------------------------------------------------------- backtest: a tool of its own

BACKTEST = "backtest"
BACKTEST_HELP = "replay a labelled history through a loop's decisions, offline (`feedbackloop backtest`)"
BACKTEST_MODULE = "feedbackloop_backtest.cli"


def backtest_command(arguments: Sequence[str]) -> list[str]:
    """The `feedbackloop` console script installed beside this Python, else the module run by it. The plugin
    hands over rather than importing the backtest: it runs the trainer and a Prometheus, none of the plugin's
    business (see its import contract)."""
    script = Path(sys.executable).with_name("feedbackloop")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), BACKTEST, *arguments]
    return [sys.executable, "-m", BACKTEST_MODULE, BACKTEST, *arguments]


def _command_index(given: Sequence[str]) -> int:
    """Where the subcommand stands: after the connection options, each of which takes a value."""
    index = 0
    while index < len(given) and given[index].startswith("-") and given[index] not in ("-h", "--help"):
        index += 1 if "=" in given[index] else 2
    return index


def hand_over_backtest(arguments: Sequence[str]) -> int:
    command = backtest_command(arguments)
    try:
        os.execv(command[0], command)  # noqa: S606 - a fixed program beside this interpreter, no shell
    except OSError as err:
        print(f"error: cannot run {command[0]}: {err.strerror}", file=sys.stderr)
    return EXIT_ERROR


def open_session(args: argparse.Namespace) -> Session:
    connection: Connection = connect(getattr(args, "kubeconfig", None), getattr(args, "context", None))
    namespace = getattr(args, "namespace", None) or connection.default_namespace
    return Session(loops=LoopApi(connection.api_client), namespace=namespace)


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    start = _command_index(given)
    if given[start : start + 1] == [BACKTEST]:  # before parsing: its flags are its own parser's to check
        return hand_over_backtest(given[start + 1 :])
    args = build_parser().parse_args(given)  # usage errors exit with 2, as argparse does
    run: Command = args.run
    try:
        return run(open_session(args), args)
    except PluginError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

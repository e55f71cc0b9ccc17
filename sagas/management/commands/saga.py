"""The operator's command line: list, read and move sagas from a shell, without a browser.

Every move calls the engine function the API and the admin call
(``sagas.engine``), after the same input checks as the API (its input
serializers); the engine's typed errors become a ``CommandError`` with a
readable message and an exit status of its own, and nothing has changed.
``--user`` makes the command act as that user: their permissions are checked
through ``sagas.access`` and the events record them as ``by``; without it the
command acts as code does (no user, no permission check).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.core.serializers.json import DjangoJSONEncoder
from django.http import QueryDict
from django.utils import timezone
from rest_framework import serializers

from sagas import access, engine, terminal
from sagas.api.exceptions import IDEMPOTENCY_HEADER
from sagas.api.filters import SagaInstanceFilter
from sagas.api.serializers import (
    SagaCancelInputSerializer,
    SagaEventOutputSerializer,
    SagaInstanceOutputSerializer,
    SagaPauseInputSerializer,
    SagaResumeInputSerializer,
    SagaStartInputSerializer,
    StepCompleteInputSerializer,
    StepFailInputSerializer,
    StepSkipInputSerializer,
    idempotency_key_from,
)
from sagas.api.views import saga_get, saga_instances
from sagas.definitions import registry
from sagas.errors import (
    IdempotencyConflict,
    InvalidRequest,
    InvalidSagaInput,
    InvalidSignal,
    InvalidTransition,
    SagaError,
    SignalNotAllowed,
    UnknownSagaType,
    UnknownStep,
)
from sagas.models import SagaInstance, SagaStatus, StepStatus
from sagas.selectors import with_current_step
from sagas.sentences import describe_event
from sagas.timeline import build_bars, rows_of

# Exit statuses, one per kind of refusal (a usage error is argparse's 2 as well).
BAD_INPUT, NOT_FOUND, FORBIDDEN, NOT_ALLOWED = 2, 3, 4, 5
DEFAULT_LIMIT, MAX_LIMIT = 50, 1000
DEFAULT_EVENTS = 20
TIMELINE_LIMIT = 1000  # events read for the timeline, as the admin's picture

# What an option is called here, for a field an input serializer or the engine names.
OPTION_OF = {"saga_type": "saga_type", "version": "--version", "input": "--input", "reason": "--reason",
             "result": "--result", "error": "--error", "idempotency_key": "--idempotency-key",
             IDEMPOTENCY_HEADER: "--idempotency-key"}


def _messages(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{key}: {_messages(v)}" for key, v in value.items())
    if isinstance(value, (list, tuple)):
        return " ".join(_messages(v) for v in value)
    return str(value)


def field_errors(errors: Any, *, inside: str | None = None) -> str:
    """Field errors (field -> messages) as one line naming the options; ``inside``: the option whose JSON
    holds the fields (an input schema's own fields)."""
    if not isinstance(errors, dict):
        return f"{inside or 'input'}: {_messages(errors)}"
    parts = []
    for field, messages in errors.items():
        if field in OPTION_OF and (inside is None or field in ("input", "idempotency_key")):
            name = OPTION_OF[field]
        elif inside is not None:
            name = f"{inside} field {field!r}"
        else:
            name = field
        parts.append(f"{name}: {_messages(messages)}")
    return "; ".join(parts)


def refusal(exc: Exception) -> CommandError:
    """The engine's typed error as a readable ``CommandError`` with its exit status (as the API maps them)."""
    if isinstance(exc, SagaInstance.DoesNotExist):
        return CommandError(str(exc) or "no such saga", returncode=NOT_FOUND)
    if isinstance(exc, UnknownStep):
        return CommandError(str(exc), returncode=NOT_FOUND)
    if isinstance(exc, UnknownSagaType):
        if exc.version is not None and exc.saga_type in registry:
            return CommandError(f"saga type {exc.saga_type!r} has no version {exc.version}", returncode=NOT_FOUND)
        known = ", ".join(sorted({saga.name for saga in registry}))
        return CommandError(f"{exc} (registered: {known})", returncode=NOT_FOUND)
    if isinstance(exc, InvalidSagaInput):
        return CommandError(f"invalid input: {field_errors(exc.errors, inside='--input')}", returncode=BAD_INPUT)
    if isinstance(exc, (InvalidRequest, InvalidSignal)):
        return CommandError(field_errors(exc.errors), returncode=BAD_INPUT)
    if isinstance(exc, (InvalidTransition, IdempotencyConflict)):
        return CommandError(f"not allowed: {exc}", returncode=NOT_ALLOWED)
    if isinstance(exc, SignalNotAllowed):
        return CommandError(f"not permitted: {exc}", returncode=FORBIDDEN)
    return CommandError(str(exc))


def found(saga_id: str) -> SagaInstance:
    """The saga ``saga_id`` names (with its steps), or a refusal saying there is none."""
    try:
        return saga_get(saga_id)
    except SagaInstance.DoesNotExist:
        raise CommandError(f"no saga {saga_id}", returncode=NOT_FOUND) from None


def checked(serializer_class: type[serializers.Serializer], data: dict) -> dict:
    """``data`` through the API's input serializer for the same move: its checks, its defaults."""
    params = serializer_class(data=data)
    if not params.is_valid():
        raise CommandError(field_errors(params.errors), returncode=BAD_INPUT)
    return params.validated_data


def json_argument(text: str | None, *, option: str) -> Any:
    """``text`` as JSON; ``@path`` reads it from a file, ``@-`` from standard input. None stays None."""
    if text is None:
        return None
    if text.startswith("@"):
        path = text[1:]
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{option}: cannot read {path!r}: {getattr(exc, 'strerror', None) or exc}",
                               returncode=BAD_INPUT) from None

    def not_a_number(word: str):
        raise ValueError(f"{word} is not a JSON number")

    try:
        return json.loads(text, parse_constant=not_a_number)
    except json.JSONDecodeError as exc:
        raise CommandError(f"{option} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                           returncode=BAD_INPUT) from None
    except ValueError as exc:
        raise CommandError(f"{option} is not valid JSON: {exc}", returncode=BAD_INPUT) from None


def limit_argument(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_LIMIT}, not {value}")
    return value


def events_argument(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def width_argument(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if not 40 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be 40 to 1000, not {value}")
    return value


class Command(BaseCommand):
    help = ("The operator's command line: list and show sagas, start one, and cancel, pause, resume, skip a step, "
            "signal a waiting step or retry compensation, through the same engine functions as the API and the "
            "admin. 'manage.py saga SUBCOMMAND --help' tells each one's options.")

    def add_arguments(self, parser) -> None:
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument("--user", metavar="USERNAME",
                            help="act as this user: their permissions are checked (sagas.access) and the events "
                                 "record them as 'by'. Without it the command acts as code does: no user, no check")
        common.add_argument("--json", action="store_true", help="print JSON (the API's shapes) instead of tables")
        common.add_argument("--unmask", action="store_true",
                            help="show sensitive fields unmasked (with --user: only if that user holds "
                                 f"{access.VIEW_SENSITIVE}, who then sees them unmasked anyway)")
        common.add_argument("--width", type=width_argument, metavar="COLUMNS",
                            help=f"draw tables this wide (default: the terminal's width, or "
                                 f"{terminal.DEFAULT_WIDTH} into a file or a pipe)")
        # Django's own option, taken after the subcommand too (left unset there, it keeps the one before).
        common.add_argument("--no-color", action="store_true", default=argparse.SUPPRESS,
                            help="no colour in the output")

        moves = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

        def add(name: str, summary: str) -> argparse.ArgumentParser:
            return moves.add_parser(name, parents=[common], help=summary, description=summary)

        listing = add("list", "Sagas, newest first, filtered as GET /api/sagas/ filters them.")
        listing.add_argument("--status", action="append", default=[], metavar="STATUS",
                             help=f"only these statuses (repeat it, or separate them with commas): "
                                  f"{', '.join(SagaStatus.values)}")
        listing.add_argument("--saga-type", metavar="NAME", help="only this saga type")
        listing.add_argument("--created-after", metavar="ISO8601", help="created at or after this moment")
        listing.add_argument("--created-before", metavar="ISO8601", help="created before this moment")
        listing.add_argument("--parent", metavar="SAGA_ID", help="only the child sagas of this saga")
        listing.add_argument("--limit", type=limit_argument, default=DEFAULT_LIMIT, metavar="N",
                             help=f"at most N sagas (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})")

        show = add("show", "One saga: its header, its steps, its timeline and its recent events in words.")
        show.add_argument("saga_id", metavar="SAGA_ID")
        show.add_argument("--events", type=events_argument, default=DEFAULT_EVENTS, metavar="N",
                          help=f"the last N events (default {DEFAULT_EVENTS}; 0 for none)")

        start = add("start", "Start a saga (as POST /api/sagas/).")
        start.add_argument("saga_type", metavar="SAGA_TYPE")
        start.add_argument("--input", metavar="JSON", help="its input, a JSON object, or @FILE (@- reads stdin)")
        start.add_argument("--version", metavar="N", help="a registered version (default: the latest)")
        start.add_argument("--idempotency-key", metavar="KEY",
                           help="the same key for the same saga type starts nothing new")

        cancel = add("cancel", "Cancel a pending, running or paused saga (before its pivot): what ran is undone.")
        cancel.add_argument("saga_id", metavar="SAGA_ID")
        cancel.add_argument("--reason", help="recorded as the saga's error and in its event (default: cancelled)")

        pause = add("pause", "Pause a pending, running or compensating saga: nothing more starts until resumed.")
        pause.add_argument("saga_id", metavar="SAGA_ID")
        pause.add_argument("--reason", default="", help="recorded in its saga_paused event")

        resume = add("resume", "Resume a paused saga.")
        resume.add_argument("saga_id", metavar="SAGA_ID")
        resume.add_argument("--input", metavar="JSON",
                            help="fields merged over the saga's input first (a JSON object, or @FILE)")

        skip = add("skip", "Skip a step that failed for good after the pivot of a paused saga (done by hand).")
        skip.add_argument("saga_id", metavar="SAGA_ID")
        skip.add_argument("step", metavar="STEP")
        skip.add_argument("--reason", required=True, help="why; recorded in its event")
        skip.add_argument("--result", metavar="JSON", help="the step's output, as its action would have returned it")

        signal = add("signal", "Complete or fail a waiting step.")
        signal.add_argument("saga_id", metavar="SAGA_ID")
        signal.add_argument("step", metavar="STEP")
        signal.add_argument("signal", choices=("complete", "fail"), metavar="complete|fail")
        said = signal.add_mutually_exclusive_group()
        said.add_argument("--result", metavar="JSON", help="complete: merged over the action's output")
        said.add_argument("--error", help="fail: why (required with fail)")

        retry = add("retry-compensation", "Retry the failed compensations of a failed saga.")
        retry.add_argument("saga_id", metavar="SAGA_ID")

    # --- running -----------------------------------------------------------------------------------

    def handle(self, *args, subcommand: str, **options) -> None:
        self.user = self._acting_user(options.get("user"))
        self.json = options["json"]
        self.unmasked = self._unmasked(options["unmask"])
        colour = not options.get("no_color") and (options.get("force_color") or self.stdout.isatty())
        width = options.get("width") or (
            shutil.get_terminal_size((terminal.DEFAULT_WIDTH, 24)).columns if self.stdout.isatty() else None)
        self.console = terminal.console(colour=colour, width=width)
        run = getattr(self, f"do_{subcommand.replace('-', '_')}")
        try:
            run(**options)
        except (SagaError, SagaInstance.DoesNotExist) as exc:
            raise refusal(exc) from None

    def _acting_user(self, username: str | None):
        if username is None:
            return None
        users = get_user_model()._default_manager
        user = users.filter(**{get_user_model().USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(f"no user named {username!r}", returncode=NOT_FOUND)
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive: they may do nothing", returncode=FORBIDDEN)
        return user

    def _unmasked(self, unmask: bool) -> bool:
        """Whether sensitive fields show as stored: ``--unmask``, or a ``--user`` who may see them."""
        if self.user is None:
            return unmask
        sees = access.sees_sensitive(self.user)
        if unmask and not sees:
            raise CommandError(f"--unmask: user {self.user.get_username()!r} lacks the permission "
                               f"{access.VIEW_SENSITIVE}", returncode=FORBIDDEN)
        return sees

    def _name(self) -> str:
        return self.user.get_username()

    def _saga(self, saga_id: str, move: str = "view") -> SagaInstance:
        """The saga ``saga_id`` names, if the acting user may make ``move`` on it (as the API's ``saga_for``).

        A saga the user may not read is as unknown as a missing one.
        """
        saga = found(saga_id)
        if self.user is None:
            return saga
        if not access.may(self.user, "view", saga):
            raise CommandError(f"no saga {saga_id} that user {self._name()!r} may read", returncode=NOT_FOUND)
        if move != "view" and not access.may(self.user, move, saga):
            raise CommandError(f"not permitted: user {self._name()!r} may not {move.replace('_', ' ')} this saga: "
                               f"it needs the permission {access.MOVES[move]}{self._type_note(saga.saga_type)}",
                               returncode=FORBIDDEN)
        return saga

    @staticmethod
    def _type_note(saga_type: str) -> str:
        definition = access.definition_named(saga_type)
        return f" and {definition.permission}" if definition and definition.permission else ""

    # --- what is shown -------------------------------------------------------------------------------

    def _shown(self, saga_type: str, value: Any) -> Any:
        return value if self.unmasked else access.masked(value, access.sensitive_fields(saga_type))

    def _text(self, text: str, saga: SagaInstance) -> str:
        """An error or a sentence, with the values of the saga's sensitive input written as the mask."""
        return text if self.unmasked else access.masked_text(text, saga.saga_type, saga.input)

    def _saga_data(self, saga: SagaInstance) -> dict:
        data = SagaInstanceOutputSerializer(saga).data
        if self.unmasked:
            return data
        data = access.masked_saga(data)
        data["error"] = self._text(data["error"], saga)
        for step in data["steps"]:
            step["error"] = self._text(step["error"], saga)
            step["compensation_error"] = self._text(step["compensation_error"], saga)
        return data

    def _write_json(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, cls=DjangoJSONEncoder, indent=2, ensure_ascii=False))

    def _print(self, *parts) -> None:
        self.stdout.write(terminal.rendered(self.console, *parts), ending="")

    def _moved(self, saga: SagaInstance, done: str) -> None:
        """After a move: the saga as it is now (JSON), or a line saying what was done and where it stands."""
        saga = saga_get(saga.pk)
        if self.json:
            self._write_json(self._saga_data(saga))
            return
        line = terminal.Text(f"{done}: saga {saga.pk} ({saga.saga_type} v{saga.version}) is now ")
        line.append_text(terminal.status_text(saga.status))
        line.append(".")
        self._print(line, terminal.Text(f"See it with: manage.py saga show {saga.pk}", style="dim"))

    # --- reading ---------------------------------------------------------------------------------------

    def do_list(self, *, status: list[str], saga_type: str | None, created_after: str | None,
                created_before: str | None, parent: str | None, limit: int, **options) -> None:
        query = QueryDict(mutable=True)
        query.setlist("status", [s.strip() for given in status for s in given.split(",") if s.strip()])
        for name, value in (("saga_type", saga_type), ("created_after", created_after),
                            ("created_before", created_before), ("parent", parent)):
            if value is not None:
                query[name] = value
        base = saga_instances() if self.json else with_current_step(SagaInstance.objects.all())
        if self.user is not None:
            base = access.visible(self.user, base)
        filters = SagaInstanceFilter(data=query, queryset=base)
        if not filters.is_valid():
            raise CommandError(field_errors({f"--{k.replace('_', '-')}": v for k, v in filters.errors.items()}),
                               returncode=BAD_INPUT)
        sagas = list(filters.qs.order_by("-created_at", "-id")[: limit + 1])
        more, sagas = len(sagas) > limit, sagas[:limit]
        if self.json:
            self._write_json([self._saga_data(saga) for saga in sagas])
            return
        rows = [{"id": s.pk, "saga_type": s.saga_type, "version": s.version, "status": s.status,
                 "current_step": s.current_step, "current_step_status": s.current_step_status,
                 "created_at": s.created_at, "finished_at": s.finished_at, "error": self._text(s.error, s)}
                for s in sagas]
        footer = f"{len(rows)} saga{'s' if len(rows) != 1 else ''}, newest first"
        if more:
            footer += f"; more match: raise --limit (now {limit}) or narrow the filters"
        self._print(terminal.saga_table(rows), terminal.Text(footer, style="dim"))

    def do_show(self, *, saga_id: str, events: int, **options) -> None:
        saga = self._saga(saga_id)
        data = self._saga_data(saga)
        recent = list(saga.events.select_related("step").order_by("-created_at", "-id")[:events])[::-1]
        for event in recent:  # as the reader may see them (never saved)
            event.detail = self._shown(saga.saga_type, event.detail)
        sentences = [self._text(describe_event(event), saga) for event in recent]
        if self.json:
            data["events"] = [{**SagaEventOutputSerializer(event).data, "sentence": sentence}
                              for event, sentence in zip(recent, sentences)]
            self._write_json(data)
            return
        records = list(saga.steps.all())
        parts = [self._header(saga, data), terminal.Text(""), terminal.steps_table(data["steps"]),
                 *self._waiting_hint(saga, records), terminal.Text(""), terminal.Text("Timeline", style="bold"),
                 self._timeline(saga, records)]
        if events:
            total = saga.events.count()
            title = f"Events (the last {len(recent)} of {total})" if total > len(recent) else "Events"
            parts += [terminal.Text(""), terminal.events_table(
                [(e.created_at, s, e.kind) for e, s in zip(recent, sentences)], title=title)]
        self._print(*parts)

    def _header(self, saga: SagaInstance, data: dict):
        status = terminal.status_text(saga.status)
        if saga.status == SagaStatus.PAUSED:
            status.append(f" (from {saga.paused_from or '?'}; cause: {saga.pause_cause or '?'})", style="")
        started_by = saga.started_by.get_username() if saga.started_by_id and saga.started_by else None
        return terminal.header([
            ("saga", terminal.Text(str(saga.pk), style="bold")),
            ("type", f"{saga.saga_type} v{saga.version}"),
            ("status", status),
            ("created", f"{terminal.when(saga.created_at)} UTC"),
            ("started", terminal.when(saga.started_at) if saga.started_at else None),
            ("finished", f"{terminal.when(saga.finished_at)} (took "
                         f"{terminal.duration(saga.started_at or saga.created_at, saga.finished_at)})"
             if saga.finished_at else None),
            ("cancel requested", terminal.when(saga.cancel_requested_at) if saga.cancel_requested_at else None),
            ("started by", started_by or "code (no user)"),
            ("idempotency key", saga.idempotency_key),
            ("resubmitted from", saga.resubmitted_from_id),
            ("parent", f"{saga.parent_id} (its step {saga.parent_step.name})" if saga.parent_id else None),
            ("children", ", ".join(data["children"]) or None),
            ("input", terminal.cut(data["input"], 1000)),
            ("error", terminal.Text(data["error"], style="red") if data["error"] else None),
        ])

    def _waiting_hint(self, saga: SagaInstance, records) -> list:
        waiting = [r for r in records if r.status == StepStatus.WAITING and not (r.result or {}).get("saga_id")]
        return [terminal.Text(f"{r.name} waits for a signal: manage.py saga signal {saga.pk} {r.name} "
                              f"complete|fail", style="cyan") for r in waiting]

    def _timeline(self, saga: SagaInstance, records):
        events = list(saga.events.order_by("created_at", "id")[:TIMELINE_LIMIT])
        try:
            pivot = engine.definition_of(saga).pivot_index
        except SagaError:  # its definition is no longer registered: the picture without the pivot
            pivot = None
        now = timezone.now()
        bars = build_bars(events, records, now=now)
        end = max([saga.finished_at or now, *(bar.end for bar in bars)])
        return terminal.timeline(bars, rows_of(records, pivot), start=saga.created_at, end=end,
                                 width=self.console.width)

    # --- moves -----------------------------------------------------------------------------------------

    def do_start(self, *, saga_type: str, input: str | None, version: str | None, idempotency_key: str | None,
                 **options) -> None:
        data = {"saga_type": saga_type}
        if input is not None:
            data["input"] = json_argument(input, option="--input")
        if version is not None:
            data["version"] = version
        params = checked(SagaStartInputSerializer, data)
        try:
            key = idempotency_key_from({IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key is not None else {})
        except serializers.ValidationError as exc:
            raise CommandError(field_errors(exc.detail), returncode=BAD_INPUT) from None
        if self.user is not None and not access.may(self.user, "start", saga_type=saga_type):
            raise CommandError(f"not permitted: user {self._name()!r} may not start {saga_type}: it needs the "
                               f"permission {access.MOVES['start']}{self._type_note(saga_type)}", returncode=FORBIDDEN)
        saga = engine.start_saga(saga_type, input=params["input"], idempotency_key=key,
                                 version=params.get("version"), by=self.user)
        self._moved(saga, "Started" if saga.created_now else
                    f"Idempotency key {key!r} was used already: nothing new started")

    def do_cancel(self, *, saga_id: str, reason: str | None, **options) -> None:
        params = checked(SagaCancelInputSerializer, {"reason": reason} if reason is not None else {})
        saga = self._saga(saga_id, "cancel")
        reason = params.get("reason")
        self._moved(engine.cancel(saga, by=self.user, **({"reason": reason} if reason else {})), "Cancelled")

    def do_pause(self, *, saga_id: str, reason: str, **options) -> None:
        params = checked(SagaPauseInputSerializer, {"reason": reason})
        saga = self._saga(saga_id, "pause")
        self._moved(engine.pause(saga, reason=params.get("reason", ""), by=self.user), "Paused")

    def do_resume(self, *, saga_id: str, input: str | None, **options) -> None:
        given = json_argument(input, option="--input")
        params = checked(SagaResumeInputSerializer, {"input": given} if given is not None else {})
        saga = self._saga(saga_id, "resume")
        self._moved(engine.resume(saga, input=params["input"], by=self.user), "Resumed")

    def do_skip(self, *, saga_id: str, step: str, reason: str, result: str | None, **options) -> None:
        given = json_argument(result, option="--result")
        params = checked(StepSkipInputSerializer, {"reason": reason, **({"result": given} if given is not None else {})})
        saga = self._saga(saga_id, "skip")
        self._moved(engine.skip_step(saga, step, result=params["result"], reason=params["reason"], by=self.user),
                    f"Skipped {step}")

    def do_signal(self, *, saga_id: str, step: str, signal: str, result: str | None, error: str | None,
                  **options) -> None:
        """Signals keep their own permission (the step's ``signal_permission``, which the engine checks for
        a user), so, as in the API, the saga need not be one the user may read."""
        if signal == "complete":
            if error is not None:
                raise CommandError("--error goes with fail; complete takes --result", returncode=BAD_INPUT)
            given = json_argument(result, option="--result")
            params = checked(StepCompleteInputSerializer, {"result": given} if given is not None else {})
            saga = engine.complete_step(found(saga_id), step, result=params["result"], by=self.user)
            self._moved(saga, f"Completed {step}")
            return
        if result is not None:
            raise CommandError("--result goes with complete; fail takes --error", returncode=BAD_INPUT)
        if error is None:
            raise CommandError("signal fail needs --error: why the step fails", returncode=BAD_INPUT)
        params = checked(StepFailInputSerializer, {"error": error})
        saga = engine.fail_step(found(saga_id), step, error=params["error"], by=self.user)
        self._moved(saga, f"Failed {step}")

    def do_retry_compensation(self, *, saga_id: str, **options) -> None:
        saga = self._saga(saga_id, "retry_compensation")
        self._moved(engine.retry_compensation(saga, by=self.user), "Retrying compensation")

"""corporate.system_deployment: Build -> Test -> release gate (waits) -> Deploy -> Monitor.

Before production, a release manager (``corporate.release_deploy``) opens the
release gate: complete to go, fail with a reason to stop; no answer before
the deadline stops the release too (the build is discarded, the tests
invalidated).

Deploy records the version it replaces; when the health check after it fails,
the saga compensates and Deploy's compensation puts that version back live.
One release at a time per service: a deployment stays ``deployed`` until
Monitor verifies it (or it is rolled back), and another one is refused
meanwhile, so a rollback always restores the version just before it.
"""
from __future__ import annotations

from django.db import transaction
from django.utils import timezone
from rest_framework import serializers

from sagas import PermanentError, Saga, Step

from ..models import (
    Build,
    BuildStatus,
    Deployment,
    DeploymentStatus,
    HealthCheck,
    Service,
    TestRun,
    TestRunStatus,
)
from .common import (
    COMPENSATION_RETRY,
    DAY,
    REHEARSAL_DEADLINE,
    REHEARSAL_VERSION,
    STEP_RETRY,
    STEP_TIMEOUT,
    VERSION,
    decision,
    flag,
    reference_field,
)

NAME = "corporate.system_deployment"
RELEASE_PERMISSION = "corporate.release_deploy"
TEST_SUITE_SIZE = 120


class DeploymentInput(serializers.Serializer):
    service = serializers.PrimaryKeyRelatedField(queryset=Service.objects.all())
    version = serializers.RegexField(r"^[0-9A-Za-z][0-9A-Za-z.\-+]*$", max_length=50)
    tests_pass = serializers.BooleanField(required=False, default=True)
    healthy = serializers.BooleanField(required=False, default=True)
    reference = reference_field()

    def validate(self, data: dict) -> dict:
        if data["service"].live_version == data["version"]:
            raise serializers.ValidationError({"version": [f"{data['version']} is already live"]})
        return data


def _build(ctx) -> Build:
    return Build.objects.select_related("service").get(pk=ctx.results["build"]["build"])


# --- 1. Build --------------------------------------------------------------------------


def build(ctx) -> dict:
    service = Service.objects.get(pk=ctx.input["service"])
    version = ctx.input["version"]
    artifact = Build.objects.create(saga_id=ctx.saga_id, service=service, version=version,
                                    artifact=f"registry.local/{service.name}:{version}")
    return {"build": artifact.pk, "artifact": artifact.artifact}


def discard_build(ctx) -> None:
    Build.objects.filter(pk=ctx.result["build"]).exclude(status=BuildStatus.DISCARDED).update(
        status=BuildStatus.DISCARDED
    )


# --- 2. Test ---------------------------------------------------------------------------


def run_tests(ctx) -> dict:
    artifact = _build(ctx)
    if not flag(ctx.input, "tests_pass", True):
        raise PermanentError(f"tests failed for {artifact.artifact}: 3 of {TEST_SUITE_SIZE} failing")
    run = TestRun.objects.create(build=artifact, tests_run=TEST_SUITE_SIZE)
    return {"test_run": run.pk, "tests_run": TEST_SUITE_SIZE}


def invalidate_tests(ctx) -> None:
    TestRun.objects.filter(pk=ctx.result["test_run"]).exclude(status=TestRunStatus.INVALIDATED).update(
        status=TestRunStatus.INVALIDATED
    )


# --- 3. the release gate (a person decides: the saga waits) ----------------------------


def request_release(ctx) -> dict:
    """Ask the release managers to let this artifact go to production."""
    return {"artifact": ctx.results["build"]["artifact"], "tests_run": ctx.results["test"]["tests_run"],
            "asked": "release managers"}


# Nothing to undo: asking changes no row.


# --- 4. Deploy -------------------------------------------------------------------------


def deploy(ctx) -> dict:
    decision(ctx, "release_gate", "the release manager")
    artifact = _build(ctx)
    with transaction.atomic():
        service = Service.objects.select_for_update().get(pk=artifact.service_id)
        if service.frozen:
            raise PermanentError(f"{service.name} is under a change freeze")
        pending = Deployment.objects.filter(service=service, status=DeploymentStatus.DEPLOYED).first()
        if pending is not None:
            raise PermanentError(f"{service.name} {pending.to_version} is still being verified")
        release = Deployment.objects.create(saga_id=ctx.saga_id, service=service,
                                            from_version=service.live_version, to_version=artifact.version)
        service.live_version = artifact.version
        service.save(update_fields=["live_version"])
    return {"deployment": release.pk, "previous_version": release.from_version, "version": release.to_version}


def roll_back(ctx) -> None:
    with transaction.atomic():
        release = Deployment.objects.select_for_update().get(pk=ctx.result["deployment"])
        if release.status == DeploymentStatus.ROLLED_BACK:
            return
        service = Service.objects.select_for_update().get(pk=release.service_id)
        if service.live_version == release.to_version:
            service.live_version = release.from_version
            service.save(update_fields=["live_version"])
        release.status = DeploymentStatus.ROLLED_BACK
        release.rolled_back_at = timezone.now()
        release.save(update_fields=["status", "rolled_back_at"])


# --- 5. Monitor (nothing to undo: it only observes) ------------------------------------


def monitor(ctx) -> dict:
    release_id = ctx.results["deploy"]["deployment"]
    healthy = flag(ctx.input, "healthy", True)
    detail = "error rate 0.1%, p95 latency 120 ms" if healthy else "error rate 14% after the release"
    with transaction.atomic():
        HealthCheck.objects.get_or_create(deployment_id=release_id, attempt=ctx.attempt,
                                          defaults={"healthy": healthy, "detail": detail})
        if healthy:
            Deployment.objects.filter(pk=release_id, status=DeploymentStatus.DEPLOYED).update(
                status=DeploymentStatus.VERIFIED
            )
    if not healthy:
        raise PermanentError(f"health check failed: {detail}")
    return {"healthy": True, "detail": detail}


def build_saga(*, version: int, release_deadline: float) -> Saga:
    return Saga(
        name=NAME,
        version=version,
        description="Release a service: build, test, deploy, watch its health; roll back when it is unhealthy.",
        input_schema=DeploymentInput,
        rehearsal=version == REHEARSAL_VERSION,
        steps=[
            Step("build", build, compensation=discard_build, transactional=True,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 description="Build the artifact for the version. Undo: discard it."),
            Step("test", run_tests, compensation=invalidate_tests, transactional=True,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 description="Run the test suite against the artifact; failing tests stop the release. "
                             "Undo: invalidate the test run so the artifact cannot be promoted."),
            Step("release_gate", request_release, retry=STEP_RETRY, timeout=STEP_TIMEOUT,
                 wait_for_signal=True, signal_timeout=release_deadline, signal_permission=RELEASE_PERMISSION,
                 description=f"Gate: a release manager lets the tested artifact go to production (complete) or "
                             f"stops it (fail, with a reason); needs {RELEASE_PERMISSION}. No answer in time stops "
                             f"the release. Nothing to undo: asking changes no row."),
            Step("deploy", deploy, compensation=roll_back, transactional=True,
                 retry=STEP_RETRY, compensation_retry=COMPENSATION_RETRY, timeout=STEP_TIMEOUT,
                 description="Make the version live, recording the previous live version; refused under a change "
                             "freeze or while another release of the service is being verified. "
                             "Undo: roll back to the previous version."),
            Step("monitor", monitor, compensation=None,
                 retry=STEP_RETRY, timeout=STEP_TIMEOUT,
                 description="Health check after the release; an unhealthy service fails the saga, which rolls "
                             "the deployment back. No compensation: watching changes nothing."),
        ],
    )


saga = build_saga(version=VERSION, release_deadline=1 * DAY)
rehearsal = build_saga(version=REHEARSAL_VERSION, release_deadline=REHEARSAL_DEADLINE)
definitions = (rehearsal, saga)  # every registered version; ``saga`` is the latest

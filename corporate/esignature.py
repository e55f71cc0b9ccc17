"""A simulated e-signature service (it stands in for DocuSign and the like).

Our side sends an envelope with a callback URL that holds the contract wait's
one-time token; the service keeps it (``SignatureEnvelope``) and calls it when
the signer signs or declines, as ``POST /api/signals/{token}/complete/`` (or
``.../fail/``). Nothing here logs or prints the URL: it is a credential.
"""
from __future__ import annotations

from django.urls import reverse

from sagas.engine import complete_step_by_token, fail_step_by_token

from .models import ContractStatus, SignatureEnvelope


def callback_url(token: str) -> str:
    """The path the service calls when the contract is signed (``.../fail/`` when it is declined)."""
    return reverse("sagas_api:signal-complete", args=[token])


def envelope_send(*, envelope_id: str, signer: str, document: str, callback: str) -> SignatureEnvelope:
    """The service receives an envelope (idempotent on ``envelope_id``: a retried send changes nothing)."""
    envelope, _ = SignatureEnvelope.objects.get_or_create(
        envelope_id=envelope_id, defaults={"signer": signer, "document": document, "callback_url": callback})
    return envelope


def envelope_void(*, envelope_id: str) -> None:
    SignatureEnvelope.objects.filter(envelope_id=envelope_id, status=ContractStatus.SENT).update(
        status=ContractStatus.VOIDED)


def envelopes_pending():
    return SignatureEnvelope.objects.filter(status=ContractStatus.SENT)


def _token(envelope: SignatureEnvelope) -> str:
    return envelope.callback_url.rstrip("/").split("/")[-2]


def envelope_sign(*, envelope: SignatureEnvelope) -> None:
    """The signer signs: the service calls the callback (the token path the API endpoint calls)."""
    complete_step_by_token(_token(envelope), result={"signed": True, "envelope": envelope.envelope_id})
    SignatureEnvelope.objects.filter(pk=envelope.pk).update(status=ContractStatus.SIGNED)


def envelope_decline(*, envelope: SignatureEnvelope, reason: str = "the signer declined to sign") -> None:
    fail_step_by_token(_token(envelope), error=reason)
    SignatureEnvelope.objects.filter(pk=envelope.pk).update(status=ContractStatus.DECLINED)


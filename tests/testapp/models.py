from django.db import models


class Call(models.Model):
    """One invocation of a test action or compensation, as the worker saw it."""

    saga_id = models.UUIDField(db_index=True)
    step = models.CharField(max_length=50)
    kind = models.CharField(max_length=20)  # "action" or "compensation"
    attempt = models.PositiveIntegerField()
    pid = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]


class Ledger(models.Model):
    """Rows written by the transactional test step."""

    saga_id = models.UUIDField()
    amount = models.IntegerField()


class Seen(models.Model):
    """What a waiting test step saw: its wait's token (kind ``token``), or its compensation's ``ctx.result``."""

    saga_id = models.UUIDField(db_index=True)
    step = models.CharField(max_length=50)
    kind = models.CharField(max_length=20)
    data = models.JSONField(null=True)

    class Meta:
        ordering = ["id"]

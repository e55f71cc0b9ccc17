# /metrics tells root sagas from child sagas (a ``role`` label): a child's own figure in MetricTotal is
# ``child:<status>`` from now on. The children folded before this counted under ``<status>``, as roots:
# their counts move to their own figure here, so that a scrape shows what reading every row would.

from collections import Counter

from django.db import migrations
from django.db.models import Count


def _folded_children(apps) -> Counter:
    """(saga_type, status) -> folded child sagas, read with the models as of this migration."""
    SagaInstance = apps.get_model("sagas", "SagaInstance")
    rows = (SagaInstance.objects.filter(metrics_folded=True, depth__gt=0).order_by()
            .values_list("saga_type", "status").annotate(n=Count("id")))
    return Counter({(saga_type, status): n for saga_type, status, n in rows})


def _move(apps, sign: int) -> None:
    """Move the folded children's counts from ``<status>`` to ``child:<status>`` (``sign`` -1: back)."""
    from sagas.metrics.figures import saga_figure
    from sagas.metrics.totals import add

    moved: Counter = Counter()
    for (saga_type, status), n in _folded_children(apps).items():
        moved[(saga_type, "", saga_figure(status, 0))] -= sign * n
        moved[(saga_type, "", saga_figure(status, 1))] += sign * n
    if moved:
        add(moved)


def children_apart(apps, schema_editor):
    _move(apps, 1)


def children_together(apps, schema_editor):
    _move(apps, -1)


class Migration(migrations.Migration):

    dependencies = [
        ('sagas', '0014_child_sagas'),
    ]

    operations = [
        migrations.RunPython(children_apart, children_together),
    ]

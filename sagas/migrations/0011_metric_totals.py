"""/metrics reads only the sagas not folded yet: the figures of the others are summed in MetricTotal."""

from django.db import migrations, models


def fold_finished_sagas(apps, schema_editor):
    """The sagas that finished before the totals existed are folded now, in one pass, while this migration
    holds the saga table: from its first scrape /metrics reads only the sagas still moving.

    It runs the app's own code (the figures are defined once, in ``sagas.metrics.figures``); a database
    with no finished saga (a new one) reads nothing more.
    """
    from sagas.metrics.totals import fold_everything
    from sagas.models import FINAL_SAGA_STATUSES, SagaInstance

    if SagaInstance.objects.filter(status__in=FINAL_SAGA_STATUSES).exists():
        fold_everything(children=False)  # child sagas (their ``depth``) came later: every saga here is a root


class Migration(migrations.Migration):

    dependencies = [
        ('sagas', '0010_pause_and_pivot'),
    ]

    operations = [
        migrations.CreateModel(
            name='MetricTotal',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('saga_type', models.CharField(max_length=200)),
                ('step', models.CharField(blank=True, default='', max_length=200)),
                ('figure', models.CharField(max_length=40)),
                ('value', models.FloatField(default=0)),
            ],
        ),
        migrations.AddField(
            model_name='sagainstance',
            name='metrics_folded',
            field=models.BooleanField(db_default=False, default=False, editable=False),
        ),
        migrations.AddIndex(
            model_name='sagainstance',
            index=models.Index(condition=models.Q(('metrics_folded', False)), fields=['saga_type', 'status'], name='saga_metrics_unfolded_idx'),
        ),
        migrations.AddConstraint(
            model_name='metrictotal',
            constraint=models.UniqueConstraint(fields=('saga_type', 'step', 'figure'), name='metric_total_unique'),
        ),
        migrations.RunPython(fold_finished_sagas, migrations.RunPython.noop),
    ]

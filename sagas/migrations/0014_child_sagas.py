# Child sagas: a saga started by another's step (ChildSaga), its parent, that step and its depth.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('sagas', '0013_bulkaction'),
    ]

    operations = [
        migrations.AddField(
            model_name='sagainstance',
            name='depth',
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='sagainstance',
            name='parent',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='children', to='sagas.sagainstance'),
        ),
        migrations.AddField(
            model_name='sagainstance',
            name='parent_step',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='child_sagas', to='sagas.steprecord'),
        ),
    ]

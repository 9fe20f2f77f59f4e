"""Meters now live in the commercial core (billing 0007): the counters point there and the
model leaves metering's state. Its table, ``metering_meter``, stays where it is."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_meter_moves_to_core"),
        ("invoicing", "0005_meter_in_core"),
        ("metering", "0008_sums_rule_index_only"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="dailyusage",
                    name="meter",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.meter",
                    ),
                ),
                migrations.AlterField(
                    model_name="periodusage",
                    name="meter",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.meter",
                    ),
                ),
                migrations.DeleteModel(name="Meter"),
            ],
        ),
    ]

"""Invoice lines point at the meter's new home (billing 0007); the table is the same, so
only the state changes."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0007_meter_moves_to_core"),
        ("invoicing", "0004_payments_safety"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="invoiceline",
                    name="meter",
                    field=models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="billing.meter",
                    ),
                ),
            ],
        ),
    ]

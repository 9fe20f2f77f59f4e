"""The counters' JSON lists of distinct values, moved into ``PeriodDistinctValue`` by 0010,
are dropped."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("metering", "0010_period_distinct_values"),
    ]

    operations = [
        migrations.RemoveField(model_name="periodusage", name="distinct_values"),
    ]

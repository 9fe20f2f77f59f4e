"""Pricing files: meters and plans declared in YAML or JSON, loaded idempotently.

A pricing file is the declarative source of a deployment's prices (format: docs/pricing-file.md)::

    meters:
      - {code: output_tokens, event_name: llm.completion, aggregation: sum,
         property: usage.output_tokens, group_by: [model], unit: tokens}
    plans:
      - code: pro
        name: Pro
        base_fee: 49.00
        charges:
          - {meter: output_tokens, unit_price: 0.0000006}

``parse.parse_pricing`` turns the text into ``MeterSpec`` and ``billing.services.PlanSpec`` objects
and refuses anything doubtful with the file and the place at fault
(``pricing.yaml:14: plans[1].charges[0].tiers: a graduated charge needs tiers``). It touches
no database. ``load.load_pricing`` then, in one transaction, ensures every meter
(``services.ensure_meter``) and publishes every plan (``services.publish_plan``): an unchanged
file changes nothing, a changed plan becomes its next version, and any failure leaves the
database as it was.

Amounts are exact. A number in the file is read from the characters written there, never
through a float: YAML and JSON numbers reach this module as ``Number`` (the scalar's text
beside what YAML or JSON would have made of it), and money fields build their ``Decimal``
from the text. A value finer than the field keeps (1e-12 for prices, 1e-4 for margins) is
refused, not rounded.

The package, one step a module:

    reading   the text read as YAML or JSON exactly (``load_document``), and the error
              every step raises (``PricingFileInvalid``)
    values    each value checked where it stands (``ValueReader``: strings, choices, exact
              decimals, whole numbers, free-form JSON), its location kept for the message
    parse     the document: meters, plans, charges and tiers as specs (``parse_pricing``)
    load      the specs applied in one transaction (``apply_pricing``, ``load_pricing``)
"""

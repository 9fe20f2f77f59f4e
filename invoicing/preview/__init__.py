"""Usage previews: a past period priced again under a draft plan version or a changed model
price, beside what it was priced at, per customer — before anything is published.

Nothing is written. Every preview runs in a transaction that PostgreSQL is told is read only
(``SET TRANSACTION READ ONLY``: any INSERT, UPDATE or DELETE, ours or a trigger's, is
refused) and that is rolled back at the end. The figures come from the usage counters, never
from raw events: the draft plan version's (``invoicing.preview.plans``) and the model price's
(``invoicing.preview.prices``), each described there. The shared parts (the read-only
transaction, totals per currency) are ``invoicing.preview.common``.
"""

from invoicing.preview.common import PreviewUnsupported, Totals, read_only
from invoicing.preview.plans import (
    BATCH,
    MAX_SUBSCRIPTIONS,
    CustomerChange,
    MeterChange,
    PlanPreview,
    PreviewCadenceMismatch,
    draft_plan_of,
    draft_terms,
    preview_plan_version,
)
from invoicing.preview.prices import (
    PRICE_COLUMNS,
    ModelChange,
    PricePreview,
    last_month,
    preview_model_price,
)

__all__ = [
    "BATCH",
    "MAX_SUBSCRIPTIONS",
    "PRICE_COLUMNS",
    "CustomerChange",
    "MeterChange",
    "ModelChange",
    "PlanPreview",
    "PreviewCadenceMismatch",
    "PreviewUnsupported",
    "PricePreview",
    "Totals",
    "draft_plan_of",
    "draft_terms",
    "last_month",
    "preview_model_price",
    "preview_plan_version",
    "read_only",
]

"""The customer portal: server-rendered pages (``templates/portal/``) with htmx, for the
people of a paying customer. Every view is wrapped in ``views.common.portal_view``: a
signed-in member sees only its own customer's data (``request.customer``), and another
customer's ids answer 404.

``views/`` (one module per page family), ``selectors`` (its reads, within one customer),
``services`` (its writes: members, sign-in links), ``ratelimit``, ``spreadsheet`` (CSV
cells no spreadsheet runs as formulas), ``urls``."""

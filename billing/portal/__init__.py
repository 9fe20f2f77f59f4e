"""The customer portal: server-rendered pages (``templates/portal/``) with htmx, for the
people of a paying customer. Every view is wrapped in ``views.portal_view``: a signed-in
member sees only its own customer's data (``request.customer``), and another customer's
ids answer 404."""

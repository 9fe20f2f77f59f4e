"""The customer portal: server-rendered pages (``templates/portal/``) with htmx, for the
people of a paying customer. Every view reads through ``portal.access``: a signed-in user
sees only its own customer's data, and another customer's ids answer 404."""

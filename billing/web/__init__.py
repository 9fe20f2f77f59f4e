"""HTTP plumbing every interface shares (the API, the portal, the admin).

``middleware``: the API's error body for every error under /api/, the
Content-Security-Policy header, who a client is for the sign-in limits; ``jsonstrict``:
JSON read strictly (duplicate keys, NUL characters and NaN refused), for API bodies and
JSON typed into the admin; ``money``: an amount in HTML, rounded with the exact figure on
hover.
"""

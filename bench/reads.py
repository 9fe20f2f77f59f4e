"""Reads at scale (issue 17, item 8): `make bench-reads`.

Seeds (bench/reads_seed.py, set-based SQL into the real tables) about 100,000 customers, 10
million events and 10 million ledger transactions at ``--scale 1`` — or keeps the seed a
previous run left in the bench database at the same scale — then times every read a
customer, a portal member and finance staff make, through gunicorn over HTTP, at 1 and 8
concurrent clients:

- every GET route under /api/v1/ (enumerated from the URLconf: a route added later is
  timed, or listed as skipped with the reason, never silently missed);
- every portal page and live fragment;
- the finance home, every admin changelist and the change page of every model that has a
  row, and the admin's own GET pages (reports, previews, audit).

Prints a table (p50 / p95 per read and clients, the target, OK / FAIL at 1 client), the
checks and one JSON line. Targets: API and portal p95 < 50 ms at 1 client, admin < 300 ms.

    python bench/reads.py [--scale 1] [--clients 1,8] [--requests 10] [--database-name N]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from bench import reads_seed  # noqa: E402
from bench.harness.db import clone_database, drop_database, with_database  # noqa: E402
from bench.harness.processes import (  # noqa: E402
    HttpClient,
    HttpServer,
    migrate,
    parse_counts,
    run_command,
    setup_django,
)
from bench.harness.report import Check, finish, print_checks, progress  # noqa: E402
from bench.harness.stats import percentile_ms  # noqa: E402

TARGET_MS = {"api": 50.0, "portal": 50.0, "admin": 300.0}
# Reads not timed, and why (every other GET route is).
SKIPPED = {
    "/api/v1/exports/<str:kind>": "bulk export of a whole period (streams every row; not a page)",
    "/portal/invoices/<int:invoice_id>/pay": "a form's POST target (GET answers 405)",
    "/portal/plan/change/": "a form's POST target",
    "/portal/plan/cancel/": "a form's POST target",
    "/portal/login/link/<str:token>/": "a sign-in link, not a read",
}
# Reads a route needs a query for (the API's filters a client sends).
QUERIES = {"/api/v1/events": "?customer={external_id}"}
ADMIN_SKIP = re.compile(
    r"(logout|password_change|/delete/|/history/|autocomplete|jsi18n|/r/|refresh|/add/"
    r"|two-factor|/export|/exports|/pdf|/approve|/reject|/top-up|/adjust|/grant|/invite"
    r"|/void|/credit-note|/send|/retry|/resend|/rotate|/change-plan|/cancel)"
)


@dataclass
class Read:
    kind: str  # api, portal, admin
    route: str
    path: str
    timings: dict[int, list[float]] = field(default_factory=dict)
    statuses: set[int] = field(default_factory=set)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1 = 100,000 customers")
    parser.add_argument("--clients", default="1,8", help="client counts, e.g. 1,8")
    parser.add_argument("--requests", type=int, default=10, help="timed requests per client")
    parser.add_argument(
        "--database-name", default=None, help="default: <DATABASE_URL's>_bench_reads"
    )
    parser.add_argument(
        "--template-database",
        default=None,
        help="when the database is (re)created, as a copy of this one (migrated, no one"
        " connected to it: the test suite passes its own) rather than empty",
    )
    parser.add_argument(
        "--seed-only", action="store_true", help="seed (or keep the seed) and time nothing"
    )
    parser.add_argument("--only", default="", help="time only reads whose route matches this regex")
    args = parser.parse_args(argv)
    args.client_counts = parse_counts(parser, "--clients", args.clients)
    return args


def bench_database(args: argparse.Namespace) -> tuple[str, str]:
    """The bench database's server URL and name."""
    base = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres"
    name = args.database_name or f"{base.rsplit('/', 1)[-1].split('?')[0]}_bench_reads"
    return base, name


def seeded_scale(base: str, name: str) -> float | None:
    """The scale the bench database holds a complete seed of; None if none (or no database)."""
    with psycopg.connect(with_database(base, "postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return None
    with psycopg.connect(with_database(base, name), autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('bench_reads_seed')").fetchone()[0]:
            return None
        row = conn.execute("SELECT scale FROM bench_reads_seed").fetchone()
        return row[0] if row else None


def ensure_seed(url: str, scale: float) -> tuple[reads_seed.SeedInfo, bool]:
    with psycopg.connect(url) as conn:
        info = reads_seed.existing(conn)
        if info is not None and info.scale == scale:
            progress(f"seed at scale {scale} present ({info.customers:,} customers): kept")
            return info, False
        progress(f"seeding scale {scale} …")
        shared = reads_seed.seed_shared()
        info = reads_seed.seed(conn, scale, shared)
        progress(f"seeded in {info.seconds:.0f} s; VACUUM ANALYZE …")
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM (ANALYZE)")
        return info, True


# --- what the reads need: a customer and its rows, the three kinds of client --------------


def probe(info: reads_seed.SeedInfo) -> dict[str, Any]:
    """A seeded customer in the middle of the id range, its rows, a key and two sessions."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    from billing.models import Customer, Plan, Subscription
    from billing.portal import services as portal
    from invoicing.models import Invoice
    from ledger.models import Transaction
    from metering.models import Event
    from tests.factories import APIKeyFactory

    customer = Customer.objects.get(pk=info.first_customer + info.customers // 2)
    member = customer.portal_members.first() if hasattr(customer, "portal_members") else None
    if member is None:
        member = portal.invite_member(customer=customer, email=f"bench+{customer.pk}@example.com")
    portal_client = Client()
    portal_client.force_login(member.user)
    user = get_user_model().objects.filter(username="bench-reads-admin").first()
    if user is None:
        user = get_user_model().objects.create_superuser(
            "bench-reads-admin", "bench@example.com", None
        )
    admin_client = Client()
    admin_client.force_login(user)
    key = APIKeyFactory(scopes=("read",), rate_limit_per_minute=1_000_000)
    subscription = Subscription.objects.filter(customer=customer).first()
    extra = customer_rows(customer)
    return {
        "customer": customer,
        "api_headers": {"Authorization": f"Bearer {key.secret}"},
        "portal_headers": {"Cookie": f"sessionid={portal_client.cookies['sessionid'].value}"},
        "admin_headers": {"Cookie": f"sessionid={admin_client.cookies['sessionid'].value}"},
        "values": {
            "external_id": customer.external_id,
            "currency": "USD",
            "invoice_id": Invoice.objects.filter(customer=customer)
            .values_list("pk", flat=True)
            .first(),
            "subscription_id": subscription.pk if subscription else None,
            "code": reads_seed.PLAN_CODE,
            "transaction_id": Transaction.objects.filter(
                reference__startswith=f"usage:{customer.pk}:"
            )
            .values_list("pk", flat=True)
            .last(),
            "event_id": Event.objects.filter(customer=customer).values_list("pk", flat=True).last(),
            "plan_id": Plan.objects.filter(code=reads_seed.PLAN_CODE)
            .values_list("pk", flat=True)
            .first(),
            **extra,
        },
    }


def customer_rows(customer: Any) -> dict[str, Any]:
    """One of each row the customer's other reads show, through the services (once: the
    next run finds them): a project, an alert, an auto top-up, a pending hold, and a
    webhook endpoint."""
    from decimal import Decimal

    from billing import alerts, projects
    from billing.models import Alert, AutoTopUp, Project, WebhookEndpoint
    from billing.services.auto_top_up import set_auto_top_up
    from billing.webhooks.endpoints import ALL_EVENTS, new_secret
    from ledger.models import Account, Hold
    from ledger.services import place_hold

    project = Project.objects.filter(customer=customer).first() or projects.create_project(
        customer=customer, key="bench-project"
    )
    alert = Alert.objects.filter(customer=customer).first() or alerts.create_alert(
        kind="balance_below", scope="customer", threshold=Decimal(5), customer=customer
    )
    wallet = customer.wallets.get(currency="USD")
    if not AutoTopUp.objects.filter(wallet=wallet).exists():
        set_auto_top_up(
            wallet=wallet,
            enabled=True,
            threshold=Decimal(5),
            target=Decimal(50),
            monthly_cap=Decimal(500),
        )
    hold = Hold.objects.filter(account=wallet.account).first() or place_hold(
        reference=f"bench-reads-hold:{customer.pk}",
        account=wallet.account,
        destination=Account.objects.get(code="@Revenue", currency="USD"),
        amount=Decimal(1),
    )
    # the row create_endpoint writes, without its DNS check (no network needed)
    endpoint = WebhookEndpoint.objects.first() or WebhookEndpoint.objects.create(
        url="https://example.com/bench-reads-hook",
        enabled_events=[ALL_EVENTS],
        secret=new_secret(),
    )
    return {
        "key": project.key,
        "alert_id": alert.pk,
        "hold_id": hold.pk,
        "endpoint_id": endpoint.pk,
        "grant_id": None,
        "delivery_id": None,
    }


def routes() -> list[tuple[str, Any]]:
    """Every URL pattern as (route text with <params>, its callback)."""
    from django.urls import URLPattern, URLResolver, get_resolver

    found: list[tuple[str, Any]] = []

    def walk(patterns: Sequence[Any], prefix: str) -> None:
        for p in patterns:
            text = prefix + str(p.pattern).lstrip("^").rstrip("$")
            if isinstance(p, URLResolver):
                walk(p.url_patterns, text)
            elif isinstance(p, URLPattern):
                found.append((text, p.callback))

    walk(get_resolver().url_patterns, "/")
    return found


def answers_get(callback: Any) -> bool:
    view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
    if view_class is not None:
        return hasattr(view_class, "get")
    methods = getattr(callback, "http_method_names", None)
    return methods is None or "get" in methods


def fill(route: str, values: dict[str, Any]) -> str | None:
    """The route with its parameters filled from ``values``; None if one has no value."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1).split(":")[-1]
        given = values.get(name)
        if given is None:
            raise KeyError(name)
        return str(given)

    try:
        return re.sub(r"<([^>]+)>", value, route)
    except KeyError:
        return None


def enumerate_reads(values: dict[str, Any]) -> tuple[list[Read], list[tuple[str, str]]]:
    from django.contrib import admin

    reads, skipped = [], []
    for route, callback in routes():
        if route.startswith("/api/v1/") or route.startswith("/portal/"):
            kind = "api" if route.startswith("/api/") else "portal"
            if route in SKIPPED:
                skipped.append((route, SKIPPED[route]))
                continue
            if "/login" in route or "logout" in route or not answers_get(callback):
                continue
            path = fill(route, values)
            if path is None:
                skipped.append((route, "no row of that kind in the seed"))
                continue
            if route in QUERIES:
                path += QUERIES[route].format(**values)
            reads.append(Read(kind, route, path))
        elif route.startswith("/admin/") and "(?P" not in route and "<" not in route:
            if not ADMIN_SKIP.search(route) and route != "/admin/login/":
                reads.append(Read("admin", route, route))
    # The admin's model pages: every changelist; the change page of the probe's rows and
    # of the newest row of every other model.
    model_rows = {
        "billing.customer": values["external_id"] and values.get("customer_pk"),
        "invoicing.invoice": values["invoice_id"],
        "ledger.transaction": values["transaction_id"],
        "metering.event": values["event_id"],
        "billing.subscription": values["subscription_id"],
        "billing.plan": values["plan_id"],
    }
    for model in sorted(admin.site._registry, key=lambda m: m._meta.label_lower):
        meta = model._meta
        base = f"/admin/{meta.app_label}/{meta.model_name}/"
        reads.append(Read("admin", f"{base} (changelist)", base))
        pk = model_rows.get(meta.label_lower)
        if pk is None:
            pk = model._default_manager.order_by("-pk").values_list("pk", flat=True).first()
        if pk is not None:
            reads.append(Read("admin", f"{base}<id>/change/", f"{base}{pk}/change/"))
    seen, unique_reads = set(), []
    for read in reads:
        if read.path not in seen:
            seen.add(read.path)
            unique_reads.append(read)
    return unique_reads, skipped


# --- timing --------------------------------------------------------------------------------


def time_read(read: Read, port: int, headers: dict[str, str], clients: int, requests: int) -> None:
    results: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client() -> None:
        http = HttpClient(port, headers)
        try:
            http.request("GET", read.path)  # warm-up: connection, caches
            barrier.wait()
            for _ in range(requests):
                started = time.perf_counter()
                status, _body = http.request("GET", read.path)
                took = time.perf_counter() - started
                with lock:
                    results.append(took)
                    read.statuses.add(status)
        finally:
            http.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    read.timings[clients] = results


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    base, name = bench_database(args)
    if seeded_scale(base, name) != args.scale:  # none, another, or a seed left unfinished
        if args.template_database:
            progress(f"(re)creating database {name} as a copy of {args.template_database}")
            clone_database(base, args.template_database, name, file_copy=False)
        else:
            progress(f"(re)creating database {name}")
            drop_database(base, name, recreate=True)
    url = with_database(base, name)
    os.environ.setdefault("EMAIL_BACKEND", "django.core.mail.backends.locmem.EmailBackend")
    setup_django(url)
    progress("migrating …")
    migrate()
    from django.conf import settings

    info, seeded = ensure_seed(url, args.scale)
    if args.seed_only:
        progress(f"seed {'made' if seeded else 'kept'}: {info.seconds:.0f} s")
        return 0
    with psycopg.connect(url) as conn:
        seed_checks = reads_seed.checks(conn, info)
    setup = probe(info)
    values = {**setup["values"], "customer_pk": setup["customer"].pk}
    reads, skipped = enumerate_reads(values)
    if args.only:
        reads = [r for r in reads if re.search(args.only, r.route)]
    headers = {
        "api": setup["api_headers"],
        "portal": setup["portal_headers"],
        "admin": setup["admin_headers"],
    }
    # as behind the TLS proxy production runs behind (no redirect to https)
    host = {"Host": "localhost", "X-Forwarded-Proto": "https"}
    from django.db import connections

    connections.close_all()
    workers = max(args.client_counts)
    with tempfile.TemporaryDirectory(prefix="bench-reads-") as log_dir:
        server = HttpServer(
            workers=workers,
            worker_class="sync",
            threads=1,
            database_url=url,
            log_dir=Path(log_dir),
        )
        server.start(probe="/api/v1/models", headers={**host, **headers["api"]})
        try:
            for i, read in enumerate(reads, 1):
                progress(f"[{i}/{len(reads)}] {read.path}")
                for clients in args.client_counts:
                    time_read(
                        read, server.port, {**host, **headers[read.kind]}, clients, args.requests
                    )
        finally:
            server.stop()
    return report(args, info, seeded, reads, skipped, seed_checks, settings)


def p50_p95(seconds: list[float]) -> dict[str, float | None]:
    ordered = sorted(seconds)
    return {"p50": percentile_ms(ordered, 0.50), "p95": percentile_ms(ordered, 0.95)}


def report(args, info, seeded, reads, skipped, seed_checks, settings) -> int:
    print()
    print(
        f"Reads at scale {args.scale}: {info.customers:,} customers, {info.events:,} events, "
        f"{info.transactions:,} ledger transactions (seed {'made' if seeded else 'kept'}, "
        f"{info.seconds:.0f} s to seed); {args.requests} requests per client"
    )
    counts = args.client_counts
    head = f"{'read':<62}" + "".join(f"{f'p50/p95 @{c}':>18}" for c in counts)
    print(head + f"{'target':>9}  result")
    rows, failures = [], []
    for read in reads:
        figures = {c: p50_p95(read.timings.get(c, [])) for c in counts}
        target = TARGET_MS[read.kind]
        p95 = figures[counts[0]]["p95"]
        bad_status = sorted(s for s in read.statuses if s != 200)
        ok = p95 is not None and p95 < target and not bad_status
        if not ok:
            failures.append(read.route)
        cells = "".join(
            f"{figures[c]['p50'] or 0:>8.1f}/{figures[c]['p95'] or 0:>8.1f}" + " " for c in counts
        )
        status = "OK" if ok else ("FAIL " + (f"HTTP {bad_status}" if bad_status else ""))
        print(f"{read.kind + ' ' + read.path:<62}{cells}{target:>8.0f}  {status}")
        rows.append(
            {
                "kind": read.kind,
                "route": read.route,
                "path": read.path,
                "target_ms": target,
                "ok": ok,
                "statuses": sorted(read.statuses),
                **{f"p50_ms_{c}": figures[c]["p50"] for c in counts},
                **{f"p95_ms_{c}": figures[c]["p95"] for c in counts},
            }
        )
    if skipped:
        print()
        print("Not timed")
        for route, why in skipped:
            print(f"  {route}: {why}")
    checks = [Check(name, ok, detail) for name, ok, detail in seed_checks]
    answered = [r for r in reads if r.statuses and r.statuses != {200}]
    checks.append(
        Check(
            "every read answered 200",
            not answered,
            ", ".join(f"{r.path} {sorted(r.statuses)}" for r in answered) or f"{len(reads)} reads",
        )
    )
    ok = print_checks(checks)
    met = len(reads) - len(failures)
    print(
        f"Targets met: {met} of {len(reads)}"
        + (f"; over: {', '.join(failures)}" if failures else "")
    )
    return finish(
        {
            "benchmark": "reads",
            "scale": args.scale,
            "customers": info.customers,
            "events": info.events,
            "transactions": info.transactions,
            "seed_seconds": info.seconds,
            "seeded_now": seeded,
            "clients": counts,
            "requests_per_client": args.requests,
            "targets_met": met,
            "reads_timed": len(reads),
            "reads": rows,
            "skipped": [{"route": r, "why": w} for r, w in skipped],
            "verification_ok": ok,
        }
    )


if __name__ == "__main__":
    run_command(main)

"""Projects, budgets inside a customer (``billing.projects``), in the admin: a list of every
customer's projects with their spend this period, and each customer's on its page
(``CustomerProjectsMixin``).

Creating and changing go through ``billing.projects`` (the limit is changed under the
customer's usage lock and re-arms ``budget.exceeded``); nothing is deleted (events point at
projects): a project is archived instead (the actions).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from billing import projects
from billing.admin.common import ExactDecimalField, money, timestamp
from billing.models import Customer, Project


def _spent(project: Project) -> str:
    [budget] = projects.project_budgets(customer=project.customer, projects=[project])
    return _spent_text(budget)


def _spent_text(budget: projects.ProjectBudget) -> str:
    text = money(budget.spent, budget.currency)
    if budget.project.spend_limit is not None:
        text += f" of {money(budget.project.spend_limit, budget.currency)}"
    return text


class ProjectForm(forms.ModelForm):
    spend_limit = ExactDecimalField(
        required=False,
        min_value=0,
        help_text="Per billing period, in the currency usage is charged in; empty: no limit.",
    )

    class Meta:
        model = Project
        fields = ("customer", "key", "name", "spend_limit")


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    form = ProjectForm
    list_display = ("key", "name", "customer", "limit", "spent_this_period", "status")
    list_filter = (("archived_at", admin.EmptyFieldListFilter),)
    search_fields = ("key", "name", "customer__external_id", "customer__name")
    list_select_related = ("customer",)
    autocomplete_fields = ("customer",)
    ordering = ("-id",)
    actions = ("archive", "reactivate")

    def get_readonly_fields(self, request, obj=None):
        return ("customer", "key", "spent_this_period", "created") if obj else ()

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("customer", "key", "name", "spend_limit")
        return ("customer", "key", "name", "spend_limit", "spent_this_period", "created")

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="limit per period")
    def limit(self, project: Project) -> str:
        return "—" if project.spend_limit is None else money(project.spend_limit)

    @admin.display(description="spent this period")
    def spent_this_period(self, project: Project) -> str:
        return _spent(project)

    @admin.display(description="status")
    def status(self, project: Project) -> str:
        return project.status

    @admin.display(description="created at")
    def created(self, project: Project) -> str:
        return timestamp(project.created_at)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        if change:
            projects.update_project(project=obj, name=data["name"], spend_limit=data["spend_limit"])
        else:
            created = projects.create_project(
                customer=data["customer"],
                key=data["key"],
                name=data["name"],
                spend_limit=data["spend_limit"],
            )
            obj.pk, obj.created_at = created.pk, created.created_at

    @admin.action(description="Archive the selected projects (their usage is refused)")
    def archive(self, request, queryset):
        for project in queryset:
            projects.update_project(project=project, archived=True)
        messages.success(request, f"{queryset.count()} archived.")

    @admin.action(description="Take the selected projects back (usage accepted again)")
    def reactivate(self, request, queryset):
        for project in queryset:
            projects.update_project(project=project, archived=False)
        messages.success(request, f"{queryset.count()} active again.")


class CustomerProjectsMixin:
    """The customer's page: its projects, each with its spend this period against its limit
    (a read-only list, not a formset: the customer's form stays what it was)."""

    @admin.display(description="projects")
    def customer_projects(self, customer: Customer) -> str:
        if customer.pk is None:
            return "—"
        found = list(projects.list_projects(customer=customer).order_by("key"))
        rows = format_html_join(
            "",
            '<li><a href="{}">{}</a> ({}) — {} this period{}</li>',
            (
                (
                    reverse("admin:billing_project_change", args=[b.project.pk]),
                    b.project.key,
                    b.project.name,
                    _spent_text(b),
                    " · archived" if b.project.archived_at else "",
                )
                for b in projects.project_budgets(customer=customer, projects=found)
            ),
        )
        return format_html(
            '<ul>{}</ul><p><a href="{}?customer={}">Add a project</a></p>',
            rows or format_html("<li>{}</li>", "none"),
            reverse("admin:billing_project_add"),
            customer.pk,
        )

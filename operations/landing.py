"""``GET /``: a small page that says what this server is and where to go (the admin's "View
site" link lands here)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET


@require_GET
def landing(request: HttpRequest) -> HttpResponse:
    return render(request, "landing.html", {"base": request.build_absolute_uri("/").rstrip("/")})

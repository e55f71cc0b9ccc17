"""The landing page (``/``): where each page is, for a newcomer and for the admin's "View site"."""
from django.urls import reverse


def test_the_landing_page_links_every_page_for_anyone(client, db):
    response = client.get("/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "<h1>Start here</h1>" in page and "Saga orchestrator" in page
    for url in ("/admin/", "/admin/sagas/live/", "/api/", "/api/docs/", "/api/auth/token/", "/metrics",
                "http://testserver:5555/"):
        assert f'href="{url}"' in page, url
    assert "README.md" in page  # no guide is served: the page says where the docs are


def test_flower_and_the_guide_are_linked_where_the_settings_say(client, db, settings):
    settings.SAGAS_FLOWER_URL = "https://flower.example.com/"
    settings.SAGAS_DOCS_URL = "https://docs.example.com/sagas/"

    page = client.get("/").content.decode()

    assert 'href="https://flower.example.com/"' in page and 'href="https://docs.example.com/sagas/"' in page
    assert "README.md" not in page


def test_the_admins_view_site_link_leads_to_the_landing_page(admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()

    assert '<a href="/">View site</a>' in page
    assert admin_client.get("/").status_code == 200

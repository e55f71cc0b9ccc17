from django.test import override_settings

from sagas.checks import visibility_timeout_covers_steps


def test_no_warning_when_visibility_timeout_covers_every_step():
    with override_settings(CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 3600}):
        assert visibility_timeout_covers_steps() == []


def test_warns_about_steps_that_outlast_the_visibility_timeout():
    with override_settings(CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 100}):
        warnings = visibility_timeout_covers_steps()

    assert warnings and all(w.id == "sagas.W001" for w in warnings)
    assert any("'tests.three_steps' step 'a'" in w.msg for w in warnings)


def test_no_warning_for_brokers_that_do_not_redeliver_on_a_timer():
    with override_settings(CELERY_BROKER_URL="amqp://guest@localhost//",
                           CELERY_BROKER_TRANSPORT_OPTIONS={"visibility_timeout": 1}):
        assert visibility_timeout_covers_steps() == []

"""Events read as sentences, not dictionaries."""
import pytest

from sagas.models import EventKind
from sagas.sentences import describe


def test_failed_attempt_names_attempt_step_error_and_retry():
    sentence = describe(EventKind.STEP_ATTEMPT_FAILED,
                        {"attempt": 2, "error": "TimeoutError: gateway", "retry_in": 0.4, "timeout": False},
                        "charge_payment")

    assert sentence == "Attempt 2 of charge_payment failed: TimeoutError: gateway; retry in 0.4 s."


def test_final_failure_says_permanent_and_attempts():
    sentence = describe(EventKind.STEP_FAILED, {"attempts": 1, "error": "PermanentError: card blocked",
                                                "permanent": True}, "charge_payment")

    assert sentence == "charge_payment failed for good after 1 attempt(s) (permanent error): PermanentError: card blocked."


def test_saga_failed_says_a_person_must_act():
    assert describe(EventKind.SAGA_FAILED, {"reason": "compensation of step a failed: x"}) == \
        "Saga failed and needs a person: compensation of step a failed: x."


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_kind_reads_as_a_sentence_even_with_an_empty_detail(kind):
    sentence = describe(kind, {}, "a")

    assert sentence.endswith(".") and "{" not in sentence


def test_an_unknown_kind_still_reads_as_words():
    sentence = describe("step_paused", {"by": "alice", "result": {"ok": True}}, "manager_approval")

    assert sentence == "Step paused (manager_approval): by alice, result {'ok': True}."


@pytest.mark.parametrize("detail, expected", [
    ({"signal": "complete", "result": {"ok": True}, "by": "alice", "by_user_id": 7},
     'User alice (id 7) completed manager_approval with {"ok": true}.'),
    ({"signal": "fail", "error": "over budget", "by": "token"},
     "The holder of the step's signal token failed manager_approval: over budget."),
])
def test_a_signal_says_who_sent_what(detail, expected):
    assert describe("step_signalled", detail, "manager_approval") == expected


def test_sentences_for_pausing_resuming_and_skipping():
    from sagas.models import EventKind
    from sagas.sentences import describe

    assert describe(EventKind.SAGA_PAUSED, {"cause": "person", "reason": "supplier down", "by": "ann",
                                            "by_user_id": 3}) == (
        "User ann (id 3) paused the saga: supplier down; nothing more starts until it is resumed.")
    assert describe(EventKind.SAGA_PAUSED, {"cause": "after_pivot", "failed_steps": ["notify"],
                                            "error": "step notify failed: boom"}) == (
        "Saga paused past its pivot: notify failed for good (step notify failed: boom); it is not undone, "
        "a person decides.")
    assert describe(EventKind.SAGA_RESUMED, {"phase": "person", "changed_input": ["email"], "by": "ann",
                                             "by_user_id": 3}) == (
        "User ann (id 3) resumed the saga with corrected input (email).")
    assert describe(EventKind.STEP_SKIPPED, {"reason": "sent by post", "result": {"sent": True}, "by": "bo",
                                             "by_user_id": 4}, "notify") == (
        'User bo (id 4) skipped notify: sent by post; its result: {"sent": true}.')
    assert describe(EventKind.STEP_SKIPPED, {"from": "pending", "to": "skipped"}, "ship") == (
        "ship skipped: the saga was undone before it ran.")
    assert describe(EventKind.STEP_RETRIED, {"attempts_before": 3}, "notify") == (
        "notify will run again with a fresh retry budget (3 attempt(s) before).")


def test_sentences_for_a_condition_and_a_child_saga():
    from sagas.models import EventKind
    from sagas.sentences import describe

    assert describe(EventKind.STEP_SKIPPED, {"reason": "condition false", "from": "pending", "to": "skipped"},
                    "executive_signoff") == "executive_signoff skipped: its condition (when) was false, so it never ran."
    assert describe(EventKind.STEP_WAITING, {"child_saga": "5b0e1234-aaaa", "child_type": "it.provisioning",
                                             "deadline": None}, "provision_it") == (
        "provision_it started its child saga 5b0e1234 and waits for it to end.")
    assert describe(EventKind.STEP_WAITING, {"child_saga": "5b0e1234-aaaa", "note": "its child saga failed"},
                    "provision_it") == "provision_it waits for its child saga 5b0e1234: its child saga failed."

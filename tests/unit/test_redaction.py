"""Signal tokens never reach an access log (``sagas.redaction``)."""
import logging

import pytest

from sagas.redaction import ACCESS_LOGGERS

TOKEN = "Zt9v2-b3Q8a_secret-token-xyz"


@pytest.mark.parametrize("logger", ACCESS_LOGGERS)
def test_a_token_in_a_logged_path_is_written_as_token(logger, caplog):
    with caplog.at_level(logging.INFO, logger=logger):
        # As uvicorn writes its access line: the path is one of the arguments.
        logging.getLogger(logger).info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5555", "POST",
                                       f"/api/signals/{TOKEN}/complete/", "1.1", 202)

    assert TOKEN not in caplog.text and "/api/signals/[token]/complete/" in caplog.text


def test_other_paths_are_left_as_they_are(caplog):
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        logging.getLogger("uvicorn.access").info("%s", "/api/sagas/123/steps/gate/complete/")

    assert "/api/sagas/123/steps/gate/complete/" in caplog.text

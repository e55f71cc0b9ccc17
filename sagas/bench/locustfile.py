"""The load ``saga_bench --api`` drives: users that start sagas through ``POST /api/sagas/``, back to back.

Run by locust in a process of its own (no Django here); the benchmark passes
the token, the saga type and its run id as options.
"""
from itertools import count

from locust import FastHttpUser, events, task

_numbers = count()


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--token", default="", help="API token of the benchmark's user")
    parser.add_argument("--saga-type", default="sagas.bench", help="saga type to start")
    parser.add_argument("--run-id", default="", help="marks the sagas this run starts (input['run'])")


class SagaStarter(FastHttpUser):
    """No wait between requests: each user starts its next saga as soon as the last one is accepted."""

    @task
    def start_saga(self) -> None:
        options = self.environment.parsed_options
        body = {"saga_type": options.saga_type, "input": {"run": options.run_id, "i": next(_numbers)}}
        with self.client.post("/api/sagas/", json=body, headers={"Authorization": f"Token {options.token}"},
                              name="POST /api/sagas/", catch_response=True) as response:
            if response.status_code != 202:
                response.failure(f"answered {response.status_code}: {(response.text or '')[:200]}")

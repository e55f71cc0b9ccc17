"""The REST API of the orchestrator: thin views over ``sagas.engine``.

``serializers`` shapes what goes in and out, ``filters`` the list's query
parameters, ``exceptions`` turns the engine's typed errors into responses (in
one place), ``views`` and ``urls`` expose it under ``/api/``.
"""

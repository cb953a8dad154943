"""The Oktopost social-authorization client: each call is built once and each answer read once, then
sent by `OktopostClient` (sync, for the Celery worker's threads) or `AsyncOktopostClient` (the shim).

    calls.verify_request(token) -> OktopostCall --client.send--> httpx.Response --call.parse--> result
                                                       |                            |
                                TransportError -> UpstreamTransportError    reading.read_answer(): status,
                                                                            Result, Errors -> error tree

    vocabulary.py  networks, entity types, paths       answers.py  the answers' shapes (pydantic)
    calls.py       OktopostCall and its builders       reading.py  an answer -> a result or an error
    client.py      the two clients, timeouts, limits

Every failure is one of `worker.oktopost.errors`; see the tree drawn there for what is retryable.

May import: worker.config, worker.observing (redaction).
"""

from worker.oktopost.answers import Credential, CredentialPage, Entity, EntityChoice, VerifiedProfile
from worker.oktopost.calls import (
    OktopostCall,
    complete_request,
    credential_request,
    delete_credential_request,
    list_credentials_request,
    start_authorization_request,
    verify_request,
)
from worker.oktopost.client import (
    DEFAULT_LIMITS,
    DEFAULT_TIMEOUT,
    USER_AGENT,
    AsyncOktopostClient,
    OktopostClient,
    timeout_from_settings,
)
from worker.oktopost.reading import (
    check_complete_fits,
    check_verify_fits,
    error_messages,
    parse_retry_after,
    read_answer,
)
from worker.oktopost.vocabulary import ENTITY_TYPES, NETWORKS, canonical_entity_type, canonical_network

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "ENTITY_TYPES",
    "NETWORKS",
    "USER_AGENT",
    "AsyncOktopostClient",
    "Credential",
    "CredentialPage",
    "Entity",
    "EntityChoice",
    "OktopostCall",
    "OktopostClient",
    "VerifiedProfile",
    "canonical_entity_type",
    "canonical_network",
    "check_complete_fits",
    "check_verify_fits",
    "complete_request",
    "credential_request",
    "delete_credential_request",
    "error_messages",
    "list_credentials_request",
    "parse_retry_after",
    "read_answer",
    "start_authorization_request",
    "timeout_from_settings",
    "verify_request",
]

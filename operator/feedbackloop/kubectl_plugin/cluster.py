"""FeedbackLoops through the user's kubeconfig; each API failure becomes a PluginError saying what to do."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError, MaxRetryError

from feedbackloop.api import CRD_NAME, GROUP, KIND, PLURAL, VERSION
from feedbackloop.kubectl_plugin.errors import PluginError

# Not "kubectl-…": Flux takes over and prunes fields of managers whose names start with "kubectl".
FIELD_MANAGER = "feedbackloop-cli"
RESOURCE = CRD_NAME
MERGE_PATCH = "application/merge-patch+json"
DEFAULT_NAMESPACE = "default"
_REQUEST_TIMEOUT = (5, 30)  # (connect, read) seconds
_CONNECTION_REPR = re.compile(r"^<[^>]*>:\s*")  # urllib3 prefixes its messages with the connection's repr


@dataclass(frozen=True)
class Connection:
    api_client: Any  # kubernetes.client.ApiClient
    default_namespace: str  # the context's namespace, else "default", as kubectl chooses


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())  # YAML errors span lines; an error is one line


def _kubeconfig_source(kubeconfig: str | None) -> str:
    return kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"


# The loader indexes the YAML directly, so a malformed file can surface as a lookup or type error.
_KUBECONFIG_ERRORS = (config.ConfigException, OSError, yaml.YAMLError, KeyError, TypeError, ValueError)


def connect(kubeconfig: str | None, context: str | None) -> Connection:
    source = _kubeconfig_source(kubeconfig)
    try:
        contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
    except _KUBECONFIG_ERRORS as err:
        raise PluginError(f"cannot load the kubeconfig {source}: {_one_line(err)}") from None
    chosen = current if context is None else next((c for c in contexts if c["name"] == context), None)
    if chosen is None:
        names = ", ".join(c["name"] for c in contexts) or "none"
        raise PluginError(f'context "{context}" is not in the kubeconfig {source} (contexts: {names})')
    try:
        # persist_config=False: the plugin never rewrites the user's kubeconfig (token refreshes included).
        api_client = config.new_client_from_config(
            config_file=kubeconfig, context=context, persist_config=False
        )
    except _KUBECONFIG_ERRORS as err:
        raise PluginError(f"cannot load the kubeconfig {source}: {_one_line(err)}") from None
    namespace = (chosen.get("context") or {}).get("namespace") or DEFAULT_NAMESPACE
    return Connection(api_client=api_client, default_namespace=str(namespace))


def _server_message(err: ApiException) -> str:
    try:
        body = json.loads(err.body or "")
    except (TypeError, ValueError):
        return str(err.reason or "").strip()
    return str(body.get("message") or err.reason or "") if isinstance(body, dict) else str(err.reason or "")


def _is_missing_object(err: ApiException, name: str) -> bool:
    """A 404 for the object itself (a Status naming it), not for a resource type the server lacks."""
    try:
        body = json.loads(err.body or "")
    except (TypeError, ValueError):
        return False
    return isinstance(body, dict) and (body.get("details") or {}).get("name") == name


def _unreachable_reason(err: HTTPError) -> str:
    cause = err.reason if isinstance(err, MaxRetryError) and err.reason is not None else err
    return _CONNECTION_REPR.sub("", str(cause))


class LoopApi:
    """get, list and merge-patch FeedbackLoops."""

    def __init__(self, api_client: Any) -> None:
        self.custom = client.CustomObjectsApi(api_client)
        self.host = str(api_client.configuration.host)

    def _failure(
        self, err: Exception, verb: str, namespace: str | None, name: str | None = None
    ) -> PluginError:
        if not isinstance(err, ApiException):
            reason = _unreachable_reason(err) if isinstance(err, HTTPError) else str(err)
            return PluginError(f"cannot reach the Kubernetes API server at {self.host}: {reason}")
        where = f'in namespace "{namespace}"' if namespace else "across all namespaces"
        what = f'{RESOURCE} "{name}"' if name else RESOURCE
        if err.status == 404 and name is not None and _is_missing_object(err, name):
            return PluginError(f'{KIND} "{name}" not found in namespace "{namespace}"')
        if err.status == 404:
            return PluginError(
                f"the API server at {self.host} does not serve {RESOURCE}: is the CRD installed?"
            )
        if err.status == 401:
            return PluginError(f"the API server at {self.host} rejected the kubeconfig's credentials (401)")
        if err.status == 403:
            return PluginError(f"forbidden: you may not {verb} {what} {where} ({_server_message(err)})")
        return PluginError(f"{verb} {what} {where} failed: HTTP {err.status}: {_server_message(err)}")

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            body: dict[str, Any] = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=_REQUEST_TIMEOUT
            )
        except (ApiException, HTTPError) as err:
            raise self._failure(err, "get", namespace, name) from None
        return body

    def list(self, namespace: str | None) -> list[dict[str, Any]]:
        """The loops of one namespace, or of every namespace for None."""
        try:
            if namespace is None:
                listed = self.custom.list_cluster_custom_object(
                    GROUP, VERSION, PLURAL, _request_timeout=_REQUEST_TIMEOUT
                )
            else:
                listed = self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, _request_timeout=_REQUEST_TIMEOUT
                )
        except (ApiException, HTTPError) as err:
            raise self._failure(err, "list", namespace) from None
        items: list[dict[str, Any]] = listed.get("items") or []
        return items

    def merge_patch(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        try:
            body: dict[str, Any] = self.custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                patch,
                field_manager=FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _request_timeout=_REQUEST_TIMEOUT,
            )
        except (ApiException, HTTPError) as err:
            raise self._failure(err, "patch", namespace, name) from None
        return body

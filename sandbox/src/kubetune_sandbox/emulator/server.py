"""A Kubernetes API server emulator faithful enough for Kopf, kubectl and the Python client.

`ApiEmulator` is a kmock `KubernetesEmulator` that serves every request itself: stock kmock keeps
no resourceVersions, merges every write blindly, cannot replay a watch from a revision and fails on
/api/v1/namespaces, so the object semantics live in `store.Store` and the HTTP semantics here.
From kmock it keeps the resource registry (`resources`), the request log (`requests`) and the
reactions tests may declare (`emulator["get /api/v1/pods"] << 500`), which win over the emulation.

`EmulatorServer` runs one on a real port in its own thread and event loop, for kubectl, Kopf
(via `kopf.testing.KopfRunner` in another thread) and tests that play the kubelet or the job
controller through its thread-safe helpers.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import aiohttp.web
import attrs
import kmock
import yaml

from kubetune_sandbox.emulator import discovery, patching, rbac, selectors, tables
from kubetune_sandbox.emulator.admission import AdmissionError, CRDAdmission
from kubetune_sandbox.emulator.resources import (
    ALL_VERBS,
    CRDS,
    NAMESPACES,
    SERVER_METADATA,
    Target,
    bad_request,
    builtin_resources,
    metadata_causes,
    method_not_allowed,
    not_found_path,
)
from kubetune_sandbox.emulator.store import ApiError, GroupResource, Obj, Store, WatchEvent, now

logger = logging.getLogger(__name__)
P = ParamSpec("P")
T = TypeVar("T")

_GENERATED_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the API's: no vowels, no look-alike digits
_REQUEST_LOG_LIMIT = 2000  # kmock logs every request; keep a long-running sandbox's memory bounded
_POD_LOG_PATH = re.compile(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log/?")
_LOG_FOLLOW_POLL_SECONDS = 0.2
PodLogSource = Callable[[Obj, str], Path | None]
"""(pod, container name) -> the file holding the container's output so far, or None while it has none: what
a kubelet registers so that the emulator serves `pods/log` (the emulator runs no containers itself)."""


def _generation_relevant(obj: Obj, status_is_subresource: bool) -> Obj:
    """What bumps metadata.generation: everything but metadata (and the status, if a subresource)."""
    exempt = {"metadata", "apiVersion", "kind"} | ({"status"} if status_is_subresource else set())
    return {key: value for key, value in obj.items() if key not in exempt}


def _json_response(payload: Any, status: int = 200) -> aiohttp.web.Response:
    body = json.dumps(payload, separators=(",", ":"))
    return aiohttp.web.Response(text=body, status=status, content_type="application/json")


def _client_gone(request: kmock.Request) -> bool:
    transport = request._raw_request.transport if request._raw_request is not None else None
    return transport is None or transport.is_closing()


async def _stream(
    request: kmock.Request,
    content_type: str,
    produce: Callable[[aiohttp.web.StreamResponse], Awaitable[None]],
) -> aiohttp.web.StreamResponse:
    """A streamed answer (a watch, a followed log) that ends quietly when the client disconnects."""
    assert request._raw_request is not None  # kmock keeps the aiohttp request; needed for streaming
    response = aiohttp.web.StreamResponse(headers={"Content-Type": content_type})
    try:
        await response.prepare(request._raw_request)
        await produce(response)
        await response.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionResetError):
        pass  # the client disconnected
    return response


@attrs.define(kw_only=True)
class ApiEmulator(kmock.KubernetesEmulator):
    """The fixed emulator. Run it with `EmulatorServer`, or serve it from any aiohttp server.

    Unknown fields of custom resources are always refused (fieldValidation=Strict), whatever the client
    asks: kubectl's `--validate=false` sends `fieldValidation=Ignore`, which would let typos through.

    With `authorization` set, every HTTP request is authenticated by its bearer token and authorized by the
    stored RBAC objects (rbac.py); the thread-safe helpers of `EmulatorServer` act as the administrator.
    """

    store: Store = attrs.field(factory=Store)
    _custom: dict[GroupResource, CRDAdmission] = attrs.field(factory=dict, init=False)
    _crd_versions: dict[tuple[str, str, str], Obj] = attrs.field(factory=dict, init=False)
    _watch_queues: set[asyncio.Queue[WatchEvent | None]] = attrs.field(factory=set, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    pod_log_source: PodLogSource | None = attrs.field(default=None, init=False)
    authorization: rbac.Authorization | None = None

    def __attrs_post_init__(self) -> None:
        # super() is skipped on purpose: kmock's fallbacks would answer discovery with the core group
        # as "/v1" and mutate objects before dispatch. This class serves everything in _serve().
        for resource, info in builtin_resources():
            self.resources[resource] = info

    @property
    def objects(self) -> kmock.ObjectsArray:
        raise AttributeError("ApiEmulator keeps objects in .store, not in kmock's .objects")

    # Resolving URLs.

    def _info(self, group: str, version: str, plural: str) -> kmock.ResourceInfo | None:
        key = kmock.resource(group, version, plural)
        # Not .get(): kmock's ResourcesArray creates missing entries on lookup.
        return self.resources[key] if key in self.resources else None  # noqa: SIM401

    def target(
        self,
        resource: str,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> Target:
        """Resolve "group/version/plural" (or "v1/plural" for the core group), for the helpers."""
        parts = resource.strip("/").split("/")
        if len(parts) == 2:
            parts.insert(0, "")
        info = self._info(*parts) if len(parts) == 3 else None
        if info is None:
            raise not_found_path()
        group, version, plural = parts
        return Target(group, version, plural, info, namespace if info.namespaced else None, name, subresource)

    def _resolve(self, path: str) -> Target:
        parts = [part for part in path.split("/") if part]
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise not_found_path()
        namespace = None
        # /namespaces/X/plural/... is a namespaced resource; /namespaces/X/status is the namespace's own.
        if rest[0] == "namespaces" and len(rest) >= 3:
            info = self._info(group, version, rest[2])
            if info is not None and info.namespaced:
                namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise not_found_path()
        info = self._info(group, version, rest[0])
        if info is None or (namespace is not None and not info.namespaced):
            raise not_found_path()
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if subresource is not None and subresource not in info.subresources:
            raise not_found_path()
        return Target(group, version, rest[0], info, namespace, name, subresource)

    # Reading.

    def _present(self, target: Target, obj: Obj) -> Obj:
        """Serve a stored object as the requested version (storage is shared across versions)."""
        if obj.get("apiVersion") != target.api_version:
            obj = obj | {"apiVersion": target.api_version}
        return obj

    def _existing(self, target: Target) -> Obj:
        obj = self.store.get(target.storage, target.namespace, target.name or "")
        if obj is None:
            raise target.not_found()
        return obj

    def get_object(self, target: Target) -> Obj:
        return self._present(target, self._existing(target))

    def _matcher(self, target: Target, params: Mapping[str, str]) -> Callable[[Obj], bool]:
        try:
            matches = selectors.make_matcher(params.get("labelSelector"), params.get("fieldSelector"))
        except selectors.SelectorError as error:
            raise bad_request(str(error)) from None

        def in_scope(obj: Obj) -> bool:
            meta = obj["metadata"]
            if target.namespace is not None and meta.get("namespace") != target.namespace:
                return False
            return (target.name is None or meta["name"] == target.name) and matches(obj)

        return in_scope

    def list_objects(self, target: Target, params: Mapping[str, str] | None = None) -> list[Obj]:
        matches = self._matcher(target, params or {})
        return [
            self._present(target, obj)
            for obj in self.store.objects(target.storage, target.namespace)
            if matches(obj)
        ]

    def _list_document(self, target: Target, items: list[Obj]) -> Obj:
        metadata = {"resourceVersion": str(self.store.revision)}
        return {
            "kind": f"{target.kind}List",
            "apiVersion": target.api_version,
            "metadata": metadata,
            "items": items,
        }

    # Writing.

    def _admit(self, target: Target, obj: Obj, old: Obj | None, is_patch: bool) -> Obj:
        """Prune, default and validate a custom resource with the CRD admission engine (admission.py)."""
        admission = self._custom.get(target.storage)
        if admission is None:
            causes = metadata_causes(target, obj["metadata"])  # the engine checks metadata itself
            if causes:
                raise target.invalid(obj["metadata"]["name"], causes)
            return obj
        try:
            subresource = "status" if target.subresource == "status" else None
            return admission.admit(obj, old, version=target.version, subresource=subresource)
        except AdmissionError as error:
            patched = obj if is_patch else None  # a patch's unknown fields are reported on "patch"
            name = obj["metadata"].get("name", "")
            raise error.to_error(kind=target.kind, group=target.group, name=name, patched=patched) from None

    def _check_body(self, target: Target, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        api_version, kind = body.get("apiVersion", target.api_version), body.get("kind", target.kind)
        if (api_version, kind) != (target.api_version, target.kind):
            message = f"the API version in the data ({api_version}) and kind ({kind}) do not match the URL's"
            raise bad_request(f"{message} ({target.api_version} {target.kind})")
        if not isinstance(body.get("metadata", {}), dict):
            raise bad_request("metadata must be an object")
        identity = {"apiVersion": target.api_version, "kind": target.kind}
        return copy.deepcopy(identity | body | identity | {"metadata": body.get("metadata") or {}})

    def create_object(self, target: Target, body: Any) -> Obj:
        if target.name is not None:
            raise method_not_allowed()
        obj = self._check_body(target, body)
        meta = obj["metadata"]
        if target.info.namespaced:
            if meta.get("namespace") not in (None, "", target.namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            if target.namespace is None:
                raise not_found_path()
            if self.store.get(NAMESPACES, None, target.namespace) is None:
                raise self.target("v1/namespaces", name=target.namespace).not_found()
            meta["namespace"] = target.namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):  # Kopf posts its Events with a generateName
            if not meta.get("generateName"):
                raise target.invalid(
                    "", [("metadata.name", "Required value: name or generateName is required")]
                )
            meta["name"] = meta["generateName"] + "".join(random.choices(_GENERATED_ALPHABET, k=5))
        for field in SERVER_METADATA:
            meta.pop(field, None)
        meta |= {"uid": str(uuid.uuid4()), "creationTimestamp": now(), "generation": 1}
        if "status" in target.info.subresources:
            obj.pop("status", None)  # the status is the controllers' to write, through /status
        if target.storage == NAMESPACES:
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            obj["status"] = {"phase": "Active"}
        elif target.storage == ("", "pods"):
            obj["status"] = {"phase": "Pending"}
        return self._commit(replace(target, name=meta["name"]), obj, None, is_patch=False)

    def _commit(self, target: Target, obj: Obj, old: Obj | None, *, is_patch: bool) -> Obj:
        """Admit and store a create or update, then collect the garbage."""
        obj = self._admit(target, obj, old, is_patch)
        name = obj["metadata"]["name"]
        admission = None
        if target.storage == CRDS:
            obj, admission = self._prepare_crd(target, obj, old)
        if old is None and self.store.get(target.storage, target.namespace, name) is not None:
            raise target.error(409, "AlreadyExists", f'{target.qualified} "{name}" already exists')
        if old is not None:
            with_status = "status" in target.info.subresources
            if _generation_relevant(obj, with_status) != _generation_relevant(old, with_status):
                obj["metadata"]["generation"] = old["metadata"].get("generation", 0) + 1
        stored = self.store.put(target.storage, obj)
        if admission is not None and self.store.get(CRDS, None, name) is not None:
            self._register_crd(stored, admission)
        self.store.collect_garbage()
        return self._present(target, stored)

    def patch_object(self, target: Target, content_type: str, patch: Any) -> Obj:
        """A JSON merge patch, a JSON patch or, for built-in kinds, a strategic merge patch without directives
        (what the operator, Kopf and kubectl send); no PUT, no server-side apply."""
        apply: Callable[[Any, Any], Any]
        match content_type:
            case "application/merge-patch+json" | "application/json" | "":
                apply = patching.merge_patch
            case "application/json-patch+json":
                apply = patching.json_patch
            case "application/strategic-merge-patch+json" if target.storage not in self._custom:
                apply = patching.strategic_merge_patch  # custom resources: 415, as kube-apiserver answers
            case _:
                message = f"{content_type} patches are not supported by the kubetune API emulator"
                raise ApiError(415, "UnsupportedMediaType", message)
        if not isinstance(patch, dict | list):
            raise bad_request("the patch must be a JSON object or a list")
        old = self._existing(target)
        try:
            patched = apply(self._present(target, old), patch)
        except patching.PatchError as error:
            reason = {400: "BadRequest", 415: "UnsupportedMediaType"}.get(error.code, "Invalid")
            raise ApiError(error.code, reason, str(error)) from None
        new = self._check_body(target, patched)
        if (name := new["metadata"].get("name", target.name)) != target.name:
            raise bad_request(
                f"the name of the object ({name}) does not match the name on the URL ({target.name})"
            )
        version = new["metadata"].get("resourceVersion")  # optimistic concurrency, when the patch sets one
        if version and version != old["metadata"]["resourceVersion"]:
            raise target.conflict()
        if target.subresource == "status":
            # The status subresource changes only the status; everything else stays as stored.
            status = new.get("status")
            new = {key: value for key, value in copy.deepcopy(old).items() if key != "status"}
            if status is not None:
                new["status"] = status
        elif "status" in target.info.subresources:
            new.pop("status", None)  # and writes to the main resource ignore the status
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        meta = new["metadata"]
        for field in (*SERVER_METADATA, "name", "namespace"):
            meta.pop(field, None)
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        added = set(meta.get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
        if old["metadata"].get("deletionTimestamp") and added:
            message = f"Forbidden: no new finalizers can be added if the object is being deleted, found {sorted(added)}"
            raise target.invalid(target.name or "", [("metadata.finalizers", message)])
        return self._commit(target, new, old, is_patch=True)

    def delete_object(self, target: Target, delete_options: Mapping[str, Any] | None = None) -> Obj:
        """Delete in the background (the only policy the operator and kubectl use); the answer is the object."""
        delete_options = delete_options or {}
        self._existing(target)  # 404 before 400
        policy = delete_options.get("propagationPolicy")
        if policy not in (None, "Background") or delete_options.get("orphanDependents"):
            raise bad_request(f"propagationPolicy {policy} is not supported by the kubetune API emulator")
        if delete_options.get("preconditions"):
            raise bad_request("delete preconditions are not supported by the kubetune API emulator")
        if target.storage in (NAMESPACES, CRDS):
            message = f"deleting {target.plural} is not supported by the kubetune API emulator"
            raise ApiError(405, "MethodNotAllowed", message)
        return self._present(target, self.store.delete(target.storage, target.namespace, target.name or ""))

    # CRDs.

    def _prepare_crd(self, target: Target, crd: Obj, old: Obj | None) -> tuple[Obj, CRDAdmission]:
        """Check a CRD the way the API does the essentials, build its admission, fill its status."""
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        versions = spec.get("versions") or []
        required = {"spec.group": spec.get("group"), "spec.names.plural": names.get("plural")}
        required["spec.names.kind"] = names.get("kind")
        causes = [(field, "Required value") for field, value in required.items() if not value]
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            causes.append(("spec.scope", 'Unsupported value: must be "Namespaced" or "Cluster"'))
        if sum(1 for v in versions if v.get("storage")) != 1:
            message = "Invalid value: must have exactly one version marked as storage version"
            causes.append(("spec.versions", message))
        name, expected = crd["metadata"]["name"], f"{names.get('plural')}.{spec.get('group')}"
        if name != expected:
            causes.append(("metadata.name", f'Invalid value: "{name}": must be {expected}'))
        for i, version in enumerate(versions):
            for j, column in enumerate(version.get("additionalPrinterColumns") or []):
                if not tables.plain_path(column.get("jsonPath")):
                    message = (
                        "Forbidden: the kubetune API emulator serves only .a.b paths (no indices or filters)"
                    )
                    causes.append((f"spec.versions[{i}].additionalPrinterColumns[{j}].jsonPath", message))
        if old is not None and old.get("spec", {}).get("scope") != spec.get("scope"):
            causes.append(("spec.scope", "Invalid value: field is immutable"))
        if causes:
            raise target.invalid(name, causes)
        try:
            admission = CRDAdmission(crd)
        except ValueError as error:  # schemas or CEL rules the API would refuse; the message says which
            raise target.error(422, "Invalid", str(error), name) from None
        kind = names["kind"]
        accepted = {"singular": kind.lower(), "listKind": f"{kind}List"} | names
        conditions = copy.deepcopy((old or {}).get("status", {}).get("conditions")) or [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted"},
        ]  # fmt: skip
        for condition in conditions:
            condition.setdefault("lastTransitionTime", now())
        storage = next(v["name"] for v in versions if v.get("storage"))
        stored_versions = sorted({*(old or {}).get("status", {}).get("storedVersions", []), storage})
        crd["status"] = {
            "conditions": conditions,
            "acceptedNames": accepted,
            "storedVersions": stored_versions,
        }
        return crd, admission

    def _register_crd(self, crd: Obj, admission: CRDAdmission) -> None:
        spec = crd["spec"]
        group, names = spec["group"], spec["names"]
        self._unregister_crd(group, names["plural"])
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            self.resources[kmock.resource(group, version["name"], names["plural"])] = kmock.ResourceInfo(
                namespaced=spec["scope"] == "Namespaced",
                kind=names["kind"],
                singular=names.get("singular") or names["kind"].lower(),
                verbs=set(ALL_VERBS),
                shortnames=set(names.get("shortNames") or []),
                categories=set(names.get("categories") or []),
                subresources=set((version.get("subresources") or {}).keys()) & {"status"},
            )
            self._crd_versions[(group, version["name"], names["plural"])] = version
        self._custom[(group, names["plural"])] = admission

    def _unregister_crd(self, group: str, plural: str) -> None:
        for resource in [
            r for r in discovery.served(self.resources) if r.group == group and r.plural == plural
        ]:
            del self.resources[resource]
            self._crd_versions.pop((group, resource.version or "", plural), None)
        self._custom.pop((group, plural), None)

    # HTTP.

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """The aiohttp entry point. Replaces kmock's: its request parser raises on /api/v1/namespaces
        and on bodies that are not UTF-8 (protobuf), before any handler could answer."""
        if "protobuf" in raw_request.content_type:
            message = "the body of the request was in an unknown format - accepted media types include: application/json"
            return _json_response(ApiError(415, "UnsupportedMediaType", message).status(), 415)
        request = await self._record(raw_request)
        if self.authorization is not None:
            try:
                self._authorize(self.authorization, request)
            except ApiError as error:
                return _json_response(error.status(), error.code)
        if self._payloads:  # reactions a test declared (fault injection) win over the emulation
            try:
                return await super(kmock.KubernetesEmulator, self)._handle(request)
            except NotImplementedError:
                pass  # no reaction matched
            except Exception as error:
                return await self._render_error(error)
        try:
            return await self._serve(request)
        except ApiError as error:
            return _json_response(error.status(), error.code)
        except Exception:
            logger.exception("The API emulator failed on %s %s", raw_request.method, raw_request.path_qs)
            message = "an internal error occurred in the API emulator; see its log"
            return _json_response(ApiError(500, "InternalError", message).status(), 500)

    def _authorize(self, authorization: rbac.Authorization, request: kmock.Request) -> None:
        """Authenticate and authorize before anything else is looked at, as kube-apiserver does: 401, 403."""

        def service_account_exists(namespace: str, name: str) -> bool:
            return self.store.get(rbac.SERVICE_ACCOUNTS, namespace, name) is not None

        header = next((v for k, v in request.headers.items() if k.lower() == "authorization"), None)
        user = authorization.authenticate(header, service_account_exists)
        attributes = rbac.request_attributes(
            user, request.method.value, request.url.path, dict(request.params)
        )
        authorization.authorize(attributes, lambda: rbac.Policy.of(self.store.objects))

    async def _record(self, raw_request: aiohttp.web.BaseRequest) -> kmock.Request:
        """Parse the request for reactions (matched by method and path) and log it, bounded."""
        body = await raw_request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        request = kmock.Request(
            id=len(self._requests),
            raw_request=raw_request,
            method=raw_request.method,
            url=raw_request.url,
            params=dict(raw_request.query),
            headers=dict(raw_request.headers),
            body=body,
            data=data,
        )
        if len(self._requests) >= 2 * _REQUEST_LOG_LIMIT:
            del self._requests[:-_REQUEST_LOG_LIMIT]
        self._requests.append(request)
        return request

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        # For failures in a test's reaction: a Status, but never a traceback.
        logger.error("A reaction in the API emulator failed: %r", exc)
        if not isinstance(exc, ApiError):
            exc = ApiError(500, "InternalError", f"internal error: {type(exc).__name__}")
        return _json_response(exc.status(), exc.code)

    async def _serve(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        path, method, params = request.url.path, request.method.value.upper(), dict(request.params)
        headers = {key.lower(): value for key, value in request.headers.items()}
        content_type = headers.get("content-type", "").split(";")[0].strip()
        accept = headers.get("accept", "")
        if method == "GET" and (document := discovery.document(self.resources, path)) is not None:
            return _json_response(document)
        if method == "GET" and (log_path := _POD_LOG_PATH.fullmatch(path)) is not None:
            return await self._pod_log(request, log_path.group(1), log_path.group(2), params)
        target = self._resolve(path)
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(request, target, params, accept)
        if "dryRun" in params:  # refused rather than done for real (kubectl diff would otherwise mutate)
            raise bad_request("dryRun is not supported by the kubetune API emulator")
        status = 200
        if method == "GET" and target.name is None:
            items = self.list_objects(target, params)
            table = tables.wants_table(accept)
            result = self._table(target, items, params) if table else self._list_document(target, items)
        elif method == "GET":
            result = self.get_object(target)
            if tables.wants_table(accept) and target.subresource is None:
                result = self._table(target, [result], params)
        elif method == "POST":
            result, status = self.create_object(target, self._body(request)), 201
        elif method == "PATCH" and target.name is not None:
            # Server-side apply is refused by patch_object() before its YAML body matters.
            apply = content_type == "application/apply-patch+yaml"
            result = self.patch_object(target, content_type, None if apply else self._body(request))
        elif method == "DELETE" and target.name is not None and target.subresource is None:
            delete_options = self._body(request) if request.body.strip() else {}
            if not isinstance(delete_options, dict):
                raise bad_request("DeleteOptions must be an object")
            delete_options = {"propagationPolicy": params.get("propagationPolicy")} | delete_options
            result = self.delete_object(target, delete_options)
        else:
            raise method_not_allowed()
        return _json_response(result, status)

    @staticmethod
    def _body(request: kmock.Request) -> Any:
        if request.data is not None:
            return request.data  # JSON, already parsed by _record()
        try:
            return json.loads(request.body or b"null")
        except ValueError as error:
            raise bad_request(f"the request body is not valid JSON: {error}") from None

    def _table(
        self, target: Target, objects: list[Obj], params: Mapping[str, str], first: bool = True
    ) -> Obj:
        version = self._crd_versions.get((target.group, target.version, target.plural), {})
        return tables.to_table(
            objects,
            tables.columns_for(version.get("additionalPrinterColumns")),
            resource_version=str(self.store.revision),
            include_object=params.get("includeObject", "Metadata"),
            with_definitions=first,
        )

    # Pod logs: GET .../pods/NAME/log (container, tailLines, follow), text/plain, from the kubelet's files.

    @staticmethod
    def _log_container(pod: Obj, name: str, requested: str | None) -> tuple[str, Obj]:
        """The container whose log is asked for, and its status; refused as kube-apiserver refuses."""
        spec = pod.get("spec") or {}
        containers = [str(c.get("name")) for c in spec.get("containers") or []]
        init = [str(c.get("name")) for c in spec.get("initContainers") or []]
        if requested is None:
            if len(containers) != 1:
                choices = f"choose one of: [{' '.join(containers)}]"
                if init:
                    choices += f" or one of the init containers: [{' '.join(init)}]"
                raise bad_request(f"a container name must be specified for pod {name}, {choices}")
            requested = containers[0]
        elif requested not in containers + init:
            raise bad_request(f"container {requested} is not valid for pod {name}")
        status = pod.get("status") or {}
        statuses = (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or [])
        return requested, next((s for s in statuses if s.get("name") == requested), {})

    async def _pod_log(
        self, request: kmock.Request, namespace: str, name: str, params: Mapping[str, str]
    ) -> aiohttp.web.StreamResponse:
        target = self.target("v1/pods", namespace, name)
        pod = self._existing(target)
        container, status = self._log_container(pod, name, params.get("container"))
        try:
            tail = int(params["tailLines"]) if "tailLines" in params else None
        except ValueError:
            raise bad_request("tailLines must be an integer") from None
        if tail is not None and tail < 0:
            raise bad_request("tailLines must be greater than or equal to 0")
        path = self.pod_log_source(pod, container) if self.pod_log_source is not None else None
        if path is None or not path.exists():
            waiting = ((status.get("state") or {}).get("waiting") or {}).get("reason") or "ContainerCreating"
            raise bad_request(f'container "{container}" in pod "{name}" is waiting to start: {waiting}')
        with path.open("rb") as handle:
            text = handle.read()
            offset = handle.tell()
        if tail is not None:
            lines = text.splitlines(keepends=True)
            text = b"".join(lines[len(lines) - tail :]) if tail else b""
        if params.get("follow") not in ("true", "1"):
            return aiohttp.web.Response(body=text, content_type="text/plain", charset="utf-8")

        def finished() -> bool:
            pod = self.store.get(target.storage, target.namespace, name)
            return pod is None or "terminated" in (
                self._log_container(pod, name, container)[1].get("state") or {}
            )

        async def follow(response: aiohttp.web.StreamResponse) -> None:
            """Stream the log as it grows, until the container terminates, the pod goes or the client leaves."""
            nonlocal offset
            if text:
                await response.write(text)
            while not self._closing:
                done = finished()  # read before the last chunk: nothing written before the end is lost
                with path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                    offset = handle.tell()
                if chunk:
                    await response.write(chunk)
                elif done or _client_gone(request):
                    break
                else:
                    await asyncio.sleep(_LOG_FOLLOW_POLL_SECONDS)

        return await _stream(request, "text/plain; charset=utf-8", follow)

    # Watching.

    async def _watch(
        self, request: kmock.Request, target: Target, params: Mapping[str, str], accept: str
    ) -> aiohttp.web.StreamResponse:
        matches = self._matcher(target, params)
        since = params.get("resourceVersion") or "0"
        # kubectl (get -w, wait) streams its initial list: the current objects, then a bookmark ending them.
        initial_events = params.get("sendInitialEvents") == "true"
        as_table = tables.wants_table(accept)
        try:
            timeout = float(params["timeoutSeconds"]) if "timeoutSeconds" in params else None
            since_revision = int(since)
        except ValueError:
            raise bad_request("timeoutSeconds and resourceVersion must be integers") from None
        queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        # Subscribing and reading the current state or history happen in one synchronous step, so
        # no write can fall between them: nothing is lost and nothing is sent twice.
        unsubscribe = self.store.subscribe(queue.put_nowait)
        self._watch_queues.add(queue)
        backlog: list[tuple[str, Obj]] = []
        expired: ApiError | None = None
        last = self.store.revision
        if since_revision == 0 or initial_events:
            backlog = [
                ("ADDED", obj) for obj in self.store.objects(target.storage, target.namespace) if matches(obj)
            ]
        else:
            last = since_revision
            try:
                for missed in self.store.events_since(since_revision):
                    backlog += self._translate(missed, target, matches)
                    last = missed.revision
            except ApiError as error:
                expired = error

        loop = asyncio.get_running_loop()
        ends_at = None if timeout is None else loop.time() + timeout
        first = True

        async def watch(response: aiohttp.web.StreamResponse) -> None:
            nonlocal first, last

            async def send(type_: str, obj: Obj) -> None:
                nonlocal first
                if as_table and type_ in ("ADDED", "MODIFIED", "DELETED"):
                    obj = self._table(target, [self._present(target, obj)], params, first)
                    first = False
                elif type_ != "ERROR":
                    obj = self._present(target, obj)
                await response.write(
                    json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"
                )

            if expired is not None:
                return await send("ERROR", expired.status())
            for type_, obj in backlog:
                await send(type_, obj)
            if initial_events:
                metadata = {
                    "resourceVersion": str(last),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                }
                await send(
                    "BOOKMARK", {"kind": target.kind, "apiVersion": target.api_version, "metadata": metadata}
                )
            # No other bookmarks: Kopf asks for them and ignores them, and the API may send none.
            while not self._closing:
                wait = 1.0 if ends_at is None else min(1.0, ends_at - loop.time())
                if wait <= 0:
                    break
                try:
                    event = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if _client_gone(request):
                        break
                    continue
                if event is None:
                    break
                if event.revision > last:
                    last = event.revision
                    for type_, obj in self._translate(event, target, matches):
                        await send(type_, obj)

        try:
            return await _stream(request, "application/json", watch)
        finally:
            unsubscribe()
            self._watch_queues.discard(queue)

    @staticmethod
    def _translate(
        event: WatchEvent, target: Target, matches: Callable[[Obj], bool]
    ) -> list[tuple[str, Obj]]:
        """The event as this watch sees it: objects entering or leaving its selectors are ADDED/DELETED."""
        if event.resource != target.storage:
            return []
        now_matches = matches(event.object)
        if event.type == "ADDED":
            return [("ADDED", event.object)] if now_matches else []
        if event.type == "DELETED":
            return [("DELETED", event.object)] if now_matches else []
        matched_before = event.old is not None and matches(event.old)
        if matched_before and now_matches:
            return [("MODIFIED", event.object)]
        if now_matches:
            return [("ADDED", event.object)]
        return [("DELETED", event.object)] if matched_before else []

    def close_watches(self) -> None:
        """End every open watch stream (on shutdown), so that clients reconnect or stop."""
        self._closing = True
        for queue in list(self._watch_queues):
            queue.put_nowait(None)


class EmulatorServer:
    """An `ApiEmulator` on a real TCP port, served from its own thread and event loop.

    Usable as a context manager (or start()/stop()). The helpers (get, list, create, patch, delete)
    are thread-safe: they run on the emulator's loop and raise `ApiError`.
    """

    def __init__(
        self,
        *,
        crds: Iterable[Mapping[str, Any]] = (),
        host: str = "127.0.0.1",
        port: int = 0,
        namespaces: Iterable[str] = ("default",),
        history_limit: int = 10_000,
        authorization: bool = False,
    ) -> None:
        """`authorization`: authenticate HTTP requests by token and authorize them by the RBAC objects stored
        (applied like any manifest); kube-apiserver's discovery ClusterRole is stored for them at start."""
        self.authorization = rbac.Authorization() if authorization else None
        self.emulator = ApiEmulator(store=Store(history_limit), authorization=self.authorization)
        self._crds = [copy.deepcopy(dict(crd)) for crd in crds]
        self._namespaces = list(namespaces)
        self._host, self._port = host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self.url = ""

    def __enter__(self) -> EmulatorServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kubetune-api-emulator", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=30)
        if self._failure is not None:
            raise RuntimeError("the API emulator failed to start") from self._failure
        if not self._ready.is_set():
            raise RuntimeError("the API emulator did not start within 30 seconds")

    def stop(self) -> None:
        if self._loop is None or self._thread is None or self._stopped is None:
            return
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout=30)
        self._loop = self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            self._failure = error  # start() raises it, if still waiting
            logger.exception("The API emulator stopped")
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        # kmock.Server would also install a DNS interceptor and a client session; a plain aiohttp
        # low-level server is all that is needed to put the handler on a port.
        async with self.emulator:
            runner = aiohttp.web.ServerRunner(aiohttp.web.Server(self.emulator), shutdown_timeout=1.0)
            await runner.setup()
            site = aiohttp.web.TCPSite(runner, self._host, self._port)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://{self._host}:{port}"
            for namespace in self._namespaces:
                self.emulator.create_object(
                    self.emulator.target("v1/namespaces"), {"metadata": {"name": namespace}}
                )
            if self.authorization is not None:
                for (group, plural), policy in rbac.BOOTSTRAP:
                    self.emulator.create_object(self.emulator.target(f"{group}/v1/{plural}"), policy)
            crd_target = self.emulator.target("apiextensions.k8s.io/v1/customresourcedefinitions")
            for crd in self._crds:
                self.emulator.create_object(crd_target, crd)
            self._ready.set()
            try:
                await self._stopped.wait()
            finally:
                self.emulator.close_watches()
                await runner.cleanup()

    def set_pod_log_source(self, source: PodLogSource | None) -> None:
        """Serve `pods/log` from the files a kubelet writes (None: every container is waiting to start)."""
        self.emulator.pod_log_source = source

    def service_account_token(self, namespace: str, name: str) -> str:
        """A bearer token for a ServiceAccount (authenticating while the ServiceAccount exists)."""
        if self.authorization is None:
            raise RuntimeError("the API emulator was started without authorization: tokens mean nothing")
        return self.authorization.service_account_token(namespace, name)

    def kubeconfig(self, path: str | Path, *, token: str | None = None) -> Path:
        """Write a kubeconfig (no TLS; the administrator, or the bearer token's user) for kubectl and the
        Python client; returns its path."""
        path = Path(path)
        context = {"cluster": "emulator", "user": "emulator", "namespace": "default"}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": token} if token else {}}],
            "contexts": [{"name": "emulator", "context": context}],
            "current-context": "emulator",
            "preferences": {},
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # Thread-safe helpers. `resource` is "group/version/plural", or "v1/plural" for the core group.
    # They raise ApiError as the API would answer (get and delete answer None for 404 instead).

    def _on_loop(self, operation: Callable[[], T]) -> T:
        """Run an operation on the emulator's loop thread, which alone touches the store."""
        if self._loop is None:
            raise RuntimeError("the API emulator is not running")

        async def call() -> T:
            return operation()

        # A copy: the results are the store's own dicts.
        return copy.deepcopy(asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=30))

    def _unless_missing(self, operation: Callable[[], Obj]) -> Obj | None:
        try:
            return self._on_loop(operation)
        except ApiError as error:
            if error.code == 404:
                return None
            raise

    def get(
        self, resource: str, namespace: str | None, name: str, *, subresource: str | None = None
    ) -> Obj | None:
        em = self.emulator  # the target is resolved on the loop too: CRDs change what is served
        return self._unless_missing(lambda: em.get_object(em.target(resource, namespace, name, subresource)))

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Obj]:
        params = {"labelSelector": label_selector or "", "fieldSelector": field_selector or ""}
        em = self.emulator
        return self._on_loop(lambda: em.list_objects(em.target(resource, namespace), params))

    def create(self, resource: str, body: Mapping[str, Any], namespace: str | None = None) -> Obj:
        """Create in `namespace`, or else the body's; returns the stored object."""
        body = copy.deepcopy(dict(body))
        em, namespace = self.emulator, namespace or body.get("metadata", {}).get("namespace")
        return self._on_loop(lambda: em.create_object(em.target(resource, namespace), body))

    def patch(
        self,
        resource: str,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None = None,
        patch_type: str = "application/merge-patch+json",
    ) -> Obj:
        patch = copy.deepcopy(patch)
        em = self.emulator
        return self._on_loop(
            lambda: em.patch_object(em.target(resource, namespace, name, subresource), patch_type, patch)
        )

    def delete(
        self, resource: str, namespace: str | None, name: str, *, propagation_policy: str | None = None
    ) -> Obj | None:
        """Delete (in the background: the only policy served); returns the object as of the deletion, or
        None if there was none."""
        options = {"propagationPolicy": propagation_policy} if propagation_policy else {}
        em = self.emulator
        return self._unless_missing(lambda: em.delete_object(em.target(resource, namespace, name), options))

"""Discovery documents: /api, /apis, /version, and just enough /openapi/v3 for kubectl."""

from __future__ import annotations

import hashlib
import json

import kmock

from kubetune_sandbox.emulator.store import Obj

SUBRESOURCE_VERBS = ("get", "patch")

VERSION_INFO = {
    "major": "1", "minor": "32", "gitVersion": "v1.32.0-kubetune-emulator", "gitTreeState": "clean",
    "goVersion": "go1.23.0", "compiler": "gc", "platform": "linux/amd64",
}  # fmt: skip


def served(resources: kmock.ResourcesArray) -> list[kmock.resource]:
    return list(iter(resources))  # kmock yields parsed keys (its Mapping type says otherwise)


def _groups(resources: kmock.ResourcesArray) -> dict[str, list[str]]:
    versions: dict[str, set[str]] = {}
    for resource in served(resources):
        versions.setdefault(resource.group or "", set()).add(resource.version or "")
    return {group: sorted(vs) for group, vs in versions.items()}  # one version each: built-ins and our CRDs


def _group_document(group: str, versions: list[str]) -> Obj:
    entries = [{"groupVersion": f"{group}/{version}", "version": version} for version in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def _resource_list(registry: kmock.ResourcesArray, group: str, version: str) -> Obj | None:
    resources = []
    for resource in sorted(served(registry), key=lambda r: r.plural or ""):
        if resource.group != group or resource.version != version:
            continue
        info = registry[resource]
        kind = info.kind or str(resource.plural).capitalize()
        common = {"namespaced": bool(info.namespaced), "kind": kind}
        names = {"name": resource.plural, "singularName": info.singular or kind.lower()}
        lists = {"verbs": info.verbs, "shortNames": info.shortnames, "categories": info.categories}
        resources.append(common | names | {key: sorted(values) for key, values in lists.items()})
        for subresource in sorted(info.subresources):
            entry = common | {"name": f"{resource.plural}/{subresource}", "singularName": ""}
            resources.append(entry | {"verbs": list(SUBRESOURCE_VERBS)})
    if not resources:
        return None
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def document(resources: kmock.ResourcesArray, path: str) -> Obj | None:
    """Discovery documents; legacy (not aggregated) ones, which kubectl falls back to."""
    parts = [part for part in path.split("/") if part]
    groups = _groups(resources)
    if parts == ["version"]:
        return VERSION_INFO
    if parts == ["api"]:
        return {"kind": "APIVersions", "versions": groups.get("", [])}
    if parts == ["apis"]:
        documents = [_group_document(g, vs) for g, vs in sorted(groups.items()) if g]
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": documents}
    if len(parts) == 2 and parts[0] == "api":
        return _resource_list(resources, "", parts[1])
    if len(parts) == 2 and parts[0] == "apis" and parts[1] in groups:
        return {"kind": "APIGroup", "apiVersion": "v1"} | _group_document(parts[1], groups[parts[1]])
    if len(parts) == 3 and parts[0] == "apis":
        return _resource_list(resources, parts[1], parts[2])
    if parts[:2] == ["openapi", "v3"]:
        return _openapi_v3(resources, "/".join(parts[2:]))
    if not parts:
        paths = ["/api", "/apis", "/version", "/openapi/v3"] + [f"/apis/{g}" for g in groups if g]
        return {"paths": sorted(paths)}
    return None


def _openapi_v3(resources: kmock.ResourcesArray, group_version: str) -> Obj | None:
    """Just enough OpenAPI v3 for kubectl's default --validate=true: the PATCH operations, marked as
    taking `fieldValidation`, so that kubectl validates on the server (sending Strict) instead of
    downloading schemas. There are no schemas: `kubectl explain` finds nothing here."""
    documents: dict[str, Obj] = {}
    for resource in served(resources):
        info = resources[resource]
        prefix = f"apis/{resource.group}/{resource.version}" if resource.group else f"api/{resource.version}"
        scope = "namespaces/{namespace}/" if info.namespaced else ""
        gvk = {"group": resource.group, "version": resource.version, "kind": info.kind}
        patch = {
            "x-kubernetes-group-version-kind": gvk,
            "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
            "requestBody": {
                "content": {"application/merge-patch+json": {}, "application/json-patch+json": {}}
            },
            "responses": {"200": {"description": "OK"}},
        }
        info_ = {"title": "Kubernetes", "version": VERSION_INFO["gitVersion"]}
        empty = {"openapi": "3.0.0", "info": info_, "paths": {}, "components": {"schemas": {}}}
        document = documents.setdefault(prefix, empty)
        document["paths"][f"/{prefix}/{scope}{resource.plural}/{{name}}"] = {"patch": patch}
    if group_version:
        return documents.get(group_version)
    index = {}
    for prefix, document in documents.items():
        digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16].upper()
        index[prefix] = {"serverRelativeURL": f"/openapi/v3/{prefix}?hash={digest}"}
    return {"paths": index}

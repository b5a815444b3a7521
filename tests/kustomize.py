"""The part of kustomize that deploy/k8s uses, to render its overlays in tests where the
kustomize binary is not available: resources (files and directories), namespace (also
renaming Namespace objects), labels (metadata only), images and replicas. A field of
a kustomization that is not understood here fails the render instead of being ignored."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN = {"apiVersion", "kind", "namespace", "labels", "resources", "images", "replicas"}
CLUSTER_SCOPED = {"Namespace"}


def render(folder: Path) -> list[dict[str, Any]]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - KNOWN
    if unknown:
        raise ValueError(f"{folder}: kustomization fields not supported here: {unknown}")
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (folder / entry).resolve()
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    docs = copy.deepcopy(docs)
    for doc in docs:
        meta = doc.setdefault("metadata", {})
        if "namespace" in spec:
            if doc["kind"] == "Namespace":
                meta["name"] = spec["namespace"]
            elif doc["kind"] not in CLUSTER_SCOPED:
                meta["namespace"] = spec["namespace"]
        for group in spec.get("labels", []):
            meta.setdefault("labels", {}).update(group["pairs"])
        for image in spec.get("images", []):
            for container in _containers(doc):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    new = image.get("newName", name)
                    container["image"] = f"{new}:{image.get('newTag', tag)}".rstrip(":")
        for replicas in spec.get("replicas", []):
            if doc["kind"] == "Deployment" and meta["name"] == replicas["name"]:
                doc["spec"]["replicas"] = replicas["count"]
    for replicas in spec.get("replicas", []):
        if not any(d["metadata"]["name"] == replicas["name"] for d in docs):
            raise ValueError(f"replicas for unknown resource {replicas['name']}")
    return docs


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    pod = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))
